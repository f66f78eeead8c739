"""Reading and writing image arrays: ``.npy`` files and image files (Pillow, optional)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from types import ModuleType

import numpy as np

from onnx_selenc._onnx.files import atomic_write
from onnx_selenc.exceptions import SelencError

IMAGE_SUFFIXES = frozenset((".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"))
LOSSLESS_SUFFIXES = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def _pillow() -> ModuleType:
    try:
        from PIL import Image
    except ImportError as exc:
        raise SelencError("image files need Pillow: pip install pillow (or use .npy)") from exc
    return Image


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` has an image-file suffix (PNG, JPEG, ...)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_array(path: str | os.PathLike[str], channels: int) -> np.ndarray:
    """Read a ``.npy`` array, or an image file as an ``H x W x C`` uint8 array.

    Args:
        path: Input file.
        channels: Channels the key expects (image files are converted to L/RGB/RGBA).

    Raises:
        ValueError: If the suffix is unknown or the channel count has no image mode.
        OSError: If the file cannot be read or decoded.
        SelencError: If an image file is given and Pillow is not installed.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"{p}: unknown input type (expected .npy or an image file)")
    if channels not in _MODES:
        raise ValueError(f"cannot read {channels}-channel images from image files (use .npy)")
    image_mod = _pillow()
    with image_mod.open(p) as img:
        arr = np.asarray(img.convert(_MODES[channels]))
    return arr[:, :, np.newaxis] if arr.ndim == 2 else arr


def write_array(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` atomically as ``.npy``, or as a lossless image file.

    Image files take one uint8 ``H x W x C`` image (C = 1, 3 or 4).

    Raises:
        ValueError: If the suffix is lossy (JPEG would destroy the block structure), the
            array is not a single uint8 image, or the suffix is unknown.
        OSError: If the file cannot be written.
        SelencError: If an image file is asked for and Pillow is not installed.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    buf = io.BytesIO()
    if suffix == ".npy":
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    elif suffix in LOSSLESS_SUFFIXES:
        if array.dtype != np.uint8:
            raise ValueError(
                f"{p}: {array.dtype} pixels cannot be stored in an image file (orthogonal keys"
                " give real values): write .npy instead"
            )
        if array.ndim != 3 or array.shape[2] not in _MODES:
            raise ValueError(f"{p}: image files hold one H x W x C image, got {list(array.shape)}")
        img = array[:, :, 0] if array.shape[2] == 1 else array
        _pillow().fromarray(np.ascontiguousarray(img)).save(buf, format=LOSSLESS_SUFFIXES[suffix])
    elif suffix in IMAGE_SUFFIXES:
        raise ValueError(
            f"{p}: {suffix} is lossy and would destroy the block structure; write .png or .npy"
        )
    else:
        raise ValueError(f"{p}: unknown output type (expected .npy, .png, .bmp or .tif)")
    atomic_write(p, buf.getvalue())
