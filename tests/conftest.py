from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_selenc._crypto.keys import write_key_file
from onnx_selenc._encrypt.files import encrypt_model


def ort_run(model: onnx.ModelProto | str | Path | bytes, feeds: dict[str, np.ndarray]) -> list:
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), so, providers=["CPUExecutionProvider"]
    )
    return sess.run(None, feeds)


def session_run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list:
    return sess.run(None, feeds)


@pytest.fixture
def make_encrypted(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """Save a model and its encrypted twin in tmp_path; return (encrypted path, key path)."""
    counter = iter(range(1000))

    def _make(model: onnx.ModelProto, **kwargs) -> tuple[Path, Path]:
        i = next(counter)
        plain = tmp_path / f"plain{i}.onnx"
        onnx.save(model, plain)
        enc = onnx.load(plain)
        kwargs.setdefault("seed", 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = encrypt_model(enc, **kwargs)
        out = tmp_path / f"enc{i}.onnx"
        out.write_bytes(result.model.SerializeToString())
        key = write_key_file(tmp_path / f"owner{i}.key", result.owner_key)
        return out, key

    return _make
