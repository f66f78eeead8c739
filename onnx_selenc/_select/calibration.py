"""Calibration inputs: unlabelled samples the data-driven steps run the model on.

From an ``.npz`` (input name -> array, samples along axis 0) or, for image models,
from a folder of image files with explicit resize / scale / mean / std / channel
order / layout. No labels anywhere: every data-driven step compares the model
with itself.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx_selenc.exceptions import FormatError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Calibration:
    """Unlabelled model inputs: input name -> array with samples along axis 0."""

    feeds: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        if not self.feeds:
            raise ValueError("calibration data holds no input")
        sizes = {len(a) for a in self.feeds.values()}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(f"calibration inputs disagree on the sample count: {sorted(sizes)}")

    @property
    def n(self) -> int:
        return len(next(iter(self.feeds.values())))

    def take(self, index: np.ndarray | slice) -> Calibration:
        return Calibration({k: v[index] for k, v in self.feeds.items()})

    def split(self, held_out: float = 0.25, seed: int = 0) -> tuple[Calibration, Calibration]:
        """Split into (calibration, held-out) parts, shuffled with a fixed seed."""
        order = np.random.default_rng(seed).permutation(self.n)
        k = max(1, round(self.n * held_out))
        if k >= self.n:
            raise ValueError("too few calibration samples to hold some out")
        return self.take(np.sort(order[k:])), self.take(np.sort(order[:k]))

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.n, size):
            yield {k: v[start : start + size] for k, v in self.feeds.items()}

    @staticmethod
    def from_npz(
        path: str | os.PathLike[str], input_names: Sequence[str] | None = None
    ) -> Calibration:
        """Read an ``.npz`` of input name -> array (a lone array may be unnamed, or a
        ``.npy`` file for a model with one input).

        Raises:
            FormatError: not a readable npz, or names that match no model input.
        """
        try:
            loaded = np.load(path, allow_pickle=False)
            if isinstance(loaded, np.ndarray):  # a .npy file: one unnamed array
                arrays = {"arr_0": loaded}
            else:
                with loaded as data:
                    arrays = {k: np.asarray(data[k]) for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            # numpy's advice to unpickle an unknown file is nobody's to follow here.
            why = "not a .npz or .npy file of arrays" if "pickle" in str(exc) else exc
            raise FormatError(f"cannot read calibration file {path}: {why}") from None
        if input_names is not None:
            names = list(input_names)
            # np.savez(path, array) names a lone array arr_0: it is the one input's.
            if list(arrays) == ["arr_0"] and len(names) == 1:
                arrays = {names[0]: arrays["arr_0"]}
            unknown = set(arrays) - set(names)
            if unknown:
                raise FormatError(
                    f"calibration arrays {sorted(unknown)} of {path} match no model input "
                    f"(inputs: {names}): name each array after the input it feeds"
                )
            missing = [n for n in names if n not in arrays]
            if missing:
                raise FormatError(
                    f"calibration file {path} has no array for the model's input(s) {missing}"
                )
        return Calibration(arrays)

    @staticmethod
    def from_images(
        folder: str | os.PathLike[str],
        *,
        input_name: str,
        size: tuple[int, int],
        scale: float = 1.0 / 255.0,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        layout: str = "NCHW",
        channels: str = "RGB",
        limit: int | None = None,
    ) -> Calibration:
        """Read every image of a folder, resized to ``size`` = (height, width).

        Each pixel becomes ``(value * scale - mean) / std`` per channel, in ``channels``
        order (``RGB``, ``BGR`` or ``L``), laid out ``NCHW`` or ``NHWC``.

        Raises:
            FormatError: no images, or an unreadable one.
            ImportError: Pillow is not installed.
        """
        from PIL import Image

        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if limit is not None:
            files = files[:limit]
        if not files:
            raise FormatError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
        if layout not in ("NCHW", "NHWC") or channels not in ("RGB", "BGR", "L"):
            raise ValueError("layout must be NCHW or NHWC, channels RGB, BGR or L")
        mode = "L" if channels == "L" else "RGB"
        images = []
        for f in files:
            try:
                with Image.open(f) as opened:
                    im = opened.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR)
                    images.append(np.asarray(im, dtype=np.float32))
            except OSError as exc:
                raise FormatError(f"cannot read image {f}: {exc}") from None
        x = np.stack(images)
        if x.ndim == 3:
            x = x[..., None]
        if channels == "BGR":
            x = x[..., ::-1]
        c = x.shape[-1]
        m = np.asarray(mean, np.float32)[:c]
        s = np.asarray(std, np.float32)[:c]
        x = (x * np.float32(scale) - m) / s
        if layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return Calibration({input_name: np.ascontiguousarray(x, dtype=np.float32)})
