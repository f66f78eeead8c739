"""Where fetched models, data sets and trained sample models are cached."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) a cache folder: ``$ONNX_SELENC_CACHE`` or ``~/.cache/onnx-selenc``."""
    root = Path(os.environ.get("ONNX_SELENC_CACHE") or Path.home() / ".cache" / "onnx-selenc")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
