"""PSS: gated loss graph, onnx-ad gradients checked against finite differences, learned scores."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

from onnx_selenc._encrypt.files import encrypt_model
from onnx_selenc._onnx.graph import walk_conv_weights
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.pss import (
    GateTrainer,
    build_program,
    check_gradients,
    kernel_scores,
    train_gates,
)
from tests import tiny_models as tm

pytest.importorskip("onnx_ad")


def _calib(n: int = 32) -> Calibration:
    return Calibration(
        {"x": np.random.default_rng(0).standard_normal((n, 3, 8, 8)).astype(np.float32)}
    )


@pytest.mark.parametrize("build", [tm.classifier, tm.cnn])
def test_gradients_match_finite_differences(build) -> None:
    model = build()
    program = build_program(model, walk_conv_weights(model).weights, _calib(), batch=8)
    trainer = GateTrainer(program, _calib())
    assert check_gradients(trainer) < 0.05


def test_grouped_and_transpose_convs_gated_on_outputs() -> None:
    model = tm.cnn()  # has a depthwise conv and a ConvTranspose
    program = build_program(model, walk_conv_weights(model).weights, _calib(), batch=8)
    by_address = {g.address: g for g in program.gates}
    assert by_address["w1"].per_kernel and by_address["w2"].per_kernel
    assert not by_address["w3"].per_kernel and by_address["w3"].shape == (16,)
    assert not by_address["w4"].per_kernel and by_address["w4"].shape == (4,)  # ConvTranspose C_out
    scores = kernel_scores(
        program, {g.address: np.arange(int(np.prod(g.shape)), dtype=float) for g in program.gates}
    )
    assert scores["w4"].shape == (64,)  # 16 x 4 kernels of the ConvTranspose
    assert np.array_equal(scores["w4"][:4], [0, 1, 2, 3])  # kernel (i, o) -> output o


def test_training_separates_a_dead_kernel() -> None:
    model = tm.classifier()
    cal = _calib(64)
    cal.feeds["x"][:, 2] = 0.0  # the kernels reading input channel 2 see nothing
    program = build_program(model, walk_conv_weights(model).weights, cal, batch=16)
    trainer = GateTrainer(program, cal)
    scores = kernel_scores(program, train_gates(trainer, steps=30, seed=0))
    w1 = scores["w1"].reshape(16, 3)
    # Dead kernels get only the L0 pressure: they close more than the median live one.
    assert np.median(w1[:, 2]) < np.median(w1[:, :2])


def test_pss_through_encrypt_model() -> None:
    model = tm.classifier()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = encrypt_model(
            onnx.load_from_string(model.SerializeToString()),
            importance="pss",
            allocation="balanced",
            budget=0.2,
            calibration=_calib(),
            seed=0,
        )
    assert enc.selection.selected_weights > 0
