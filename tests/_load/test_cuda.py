"""The CUDA path: a restored session really runs on ``CUDAExecutionProvider``.

Marked ``gpu``; skipped, with the reason, where ONNX Runtime has no working CUDA
provider (CI and the development machines have none). Run it on a CUDA host with
``onnxruntime-gpu`` installed: ``python -m pytest -m gpu tests/_load/test_cuda.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_selenc as se
from tests import tiny_models as tm

CUDA = "CUDAExecutionProvider"
# The default cuDNN algorithm, not a benchmark search, so two sessions of one graph pick
# the same kernels and their outputs can be compared bit for bit.
PROVIDERS: list[str | tuple[str, dict[str, str]]] = [
    (CUDA, {"cudnn_conv_algo_search": "DEFAULT"}),
    "CPUExecutionProvider",
]

pytestmark = pytest.mark.gpu


def _cuda_or_skip() -> None:
    if CUDA not in ort.get_available_providers():
        pytest.skip(
            f"no CUDA: onnxruntime {ort.__version__} offers {ort.get_available_providers()} "
            "(install onnxruntime-gpu on a host with an NVIDIA GPU)"
        )
    probe = ort.InferenceSession(tm.cnn().SerializeToString(), providers=PROVIDERS)
    if CUDA not in probe.get_providers():
        pytest.skip("CUDAExecutionProvider is installed but did not start (no device or driver)")


def _files(*roots: Path) -> set[Path]:
    return {p for root in roots for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", ["wide_cnn", "cnn"])
def test_top_level_on_cuda_equals_the_plain_model(
    name: str, make_encrypted, tmp_path: Path, monkeypatch
) -> None:
    _cuda_or_skip()
    model: onnx.ModelProto = getattr(tm, name)()
    enc, key = make_encrypted(model, levels=3, budget=0.2)
    feeds = tm.feeds(model)
    plain = ort.InferenceSession(model.SerializeToString(), providers=PROVIDERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    before = _files(tmp_path)

    session = se.load_session(enc, key=key, providers=PROVIDERS)

    assert session.get_providers()[0] == CUDA  # really on the GPU, not a CPU fallback
    out, ref = session.run(None, feeds), plain.run(None, feeds)
    assert all(np.array_equal(a, b) for a, b in zip(out, ref, strict=True))
    level0 = se.load_session(enc, key=key, level=0, providers=PROVIDERS).run(None, feeds)
    assert not all(np.array_equal(a, b) for a, b in zip(level0, ref, strict=True))
    assert _files(tmp_path) == before  # nothing written: no cache, no optimised model
