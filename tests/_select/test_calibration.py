"""Data-driven steps: calibration input, activation scores, sensitivity allocation, levels."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_selenc as se
from onnx_selenc._encrypt.files import encrypt_model
from onnx_selenc._onnx.graph import walk_conv_weights
from onnx_selenc._select.activation import activation_scores, channel_rms
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.objective import choose_objective, damage, quality
from onnx_selenc._select.sensitivity import LayerCurve, allocate_by_sensitivity
from onnx_selenc.exceptions import FormatError
from tests import tiny_models as tm
from tests.conftest import ort_run


def _calib(n: int = 64, seed: int = 0) -> Calibration:
    # Per-sample channel offsets make the tiny classifier's predictions vary.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 8, 8)) + 2 * rng.standard_normal((n, 3, 1, 1))
    return Calibration({"x": x.astype(np.float32)})


def test_npz_and_split(tmp_path: Path) -> None:
    x = np.zeros((10, 3, 8, 8), np.float32)
    np.savez(tmp_path / "c.npz", x)
    cal = Calibration.from_npz(tmp_path / "c.npz", input_names=["x"])
    assert cal.n == 10 and set(cal.feeds) == {"x"}
    a, b = cal.split(0.3)
    assert (a.n, b.n) == (7, 3)
    np.savez(tmp_path / "bad.npz", other=x)
    with pytest.raises(FormatError, match="match no model input"):
        Calibration.from_npz(tmp_path / "bad.npz", input_names=["x", "y"])
    (tmp_path / "junk.npz").write_bytes(b"nope")
    with pytest.raises(FormatError):
        Calibration.from_npz(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="disagree"):
        Calibration({"a": x, "b": x[:3]})


def test_images_folder(tmp_path: Path) -> None:
    from PIL import Image

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "red.png")
    cal = Calibration.from_images(
        tmp_path,
        input_name="img",
        size=(8, 12),
        channels="BGR",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    x = cal.feeds["img"]
    assert x.shape == (1, 3, 8, 12)
    assert np.allclose(x[0, 2], 1.0) and np.allclose(x[0, 0], -1.0)  # red last in BGR
    nhwc = Calibration.from_images(tmp_path, input_name="img", size=(8, 12), layout="NHWC")
    assert nhwc.feeds["img"].shape == (1, 8, 12, 3)
    with pytest.raises(FormatError, match="no image files"):
        Calibration.from_images(tmp_path / "..", input_name="i", size=(2, 2), limit=0)


def test_activation_scores_follow_input_energy() -> None:
    model = tm.cnn()
    weights = walk_conv_weights(model).by_address()
    cal = _calib()
    cal.feeds["x"][:, 0] = 0.0  # channel 0 of the input is dead
    rms = channel_rms(model, list(weights.values()), cal)
    w1 = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1"))
    scores = activation_scores(weights["w1"], w1, rms).reshape(8, 3)
    assert np.all(scores[:, 0] == 0) and np.all(scores[:, 1:] > 0)
    # depthwise weight: 16 kernels, each reading its own channel
    w3 = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w3"))
    assert activation_scores(weights["w3"], w3, rms).shape == (16,)


def test_objectives() -> None:
    logits = [np.array([[2.0, 0.0], [0.0, 3.0]])]
    assert choose_objective(logits) == "kl" and choose_objective([np.zeros((2, 3, 4))]) == "mse"
    assert quality(logits, logits, "kl") == 1.0 and damage(logits, logits, "kl") == 0.0
    flipped = [logits[0][:, ::-1]]
    assert quality(logits, flipped, "kl") == 0.0 and 0 < damage(logits, flipped, "kl") < 1


def test_sensitivity_allocation_prefers_steep_layers() -> None:
    curves = {
        "early": LayerCurve("early", (1, 4), (9, 36), (0.5, 0.9)),
        "late": LayerCurve("late", (10, 100), (90, 900), (0.01, 0.2)),
    }
    counts = allocate_by_sensitivity(curves, {"early": 9, "late": 9}, 40)
    assert counts["early"] == 4 and counts["late"] == 0
    counts = allocate_by_sensitivity(curves, {"early": 9, "late": 9}, 500)
    assert counts["early"] == 4 and counts["late"] > 0


def test_calibrated_encryption_end_to_end(tmp_path: Path) -> None:
    model = tm.classifier()
    cal = _calib(96)
    plain_pred = ort_run(model, cal.feeds)[0].argmax(1)
    assert len(set(plain_pred)) >= 3  # the tiny classifier is not constant
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = se.encrypt(
            path,
            tmp_path / "e.onnx",
            key_file=tmp_path / "k.key",
            levels=3,
            budget=0.3,
            calibration=cal,
            level_targets=[0.5, 0.8, 1.0],
            seed=0,
        )
    report = result.level_report
    assert report is not None and report.held_out is not None
    assert report.calibration[-1] == 1.0 and report.held_out[-1] == 1.0
    assert report.calibration[0] < 0.5
    for reached, target in zip(report.calibration[1:], report.targets, strict=True):
        assert reached >= target - 0.05
    assert result.allocation == "sensitivity" and result.importance == "activation"
    manifest = se.inspect_model(result.model_files[0]).manifest
    assert "allocation" not in manifest["selection"]  # public: no replayable allocation
    assert manifest["selection"]["importance"] == "activation"
    test = _calib(64, seed=1).feeds
    ref = ort_run(model, test)[0]
    top = se.load_session(result.model_files[0], key=result.key_file).run(None, test)[0]
    assert np.array_equal(top, ref)


def test_data_driven_options_need_calibration() -> None:
    with pytest.raises(ValueError, match="need calibration"):
        encrypt_model(tm.cnn(), importance="activation")
    with pytest.raises(ValueError, match="need calibration"):
        encrypt_model(tm.cnn(), level_targets=[0.5, 1.0], levels=2)
    with pytest.raises(ValueError, match="non-decreasing"):
        encrypt_model(tm.cnn(), level_targets=[0.9, 0.5, 1.0], levels=3, calibration=_calib())


# --- level search: steps in quality, deferral, tolerance ------------------------------
def _step_quality(jumps: dict[int, float], smooth: float):
    """Quality of restoring a prefix: a smooth ramp plus big jumps for some kernels."""

    def quality_at(order, k: int) -> float:
        restored = order[1][:k]
        return min(1.0, smooth * k + sum(jumps.get(int(p), 0.0) for p in restored))

    return quality_at


def test_level_search_defers_a_kernel_that_jumps_past_the_target() -> None:
    from onnx_selenc._select.levels import _search

    n = 100
    order = (np.zeros(n, dtype=np.int64), np.arange(n))
    # Restoring kernel 20 alone adds 0.5: a plain bisection would put level 1 at 0.7.
    quality_at = _step_quality({20: 0.5}, smooth=0.01)
    cuts, final, reached = _search(order, (0.4, 1.0), quality_at, tolerance=0.05)
    assert abs(reached[1] - 0.4) <= 0.05, reached
    assert 20 not in final[1][: cuts[0]]  # the jumping kernel waits for a later level
    assert sorted(final[1].tolist()) == list(range(n))  # still every kernel, once
    assert cuts[-1] == n and reached[-1] == 1.0


def test_level_search_takes_the_closer_side_of_a_step() -> None:
    from onnx_selenc._select.levels import _search

    order = (np.zeros(10, dtype=np.int64), np.arange(10))
    quality_at = _step_quality({}, smooth=0.1)  # 0, 0.1, ..., 1.0
    cuts, _, reached = _search(order, (0.33, 0.58, 1.0), quality_at, tolerance=0.05)
    assert cuts == [3, 6, 10]  # 0.3 is closer to 0.33 than 0.4; 0.6 closer to 0.58 than 0.5
    assert reached == pytest.approx([0.0, 0.3, 0.6, 1.0])


def test_levels_outside_the_tolerance_on_held_out_inputs_warn(tmp_path: Path, monkeypatch) -> None:
    from onnx_selenc._encrypt import pipeline as _pipeline
    from onnx_selenc.exceptions import LevelTargetWarning

    # Any miss at all is outside a tolerance of minus the sampling error.
    monkeypatch.setattr(_pipeline, "TOLERANCE", -1 / np.sqrt(24))
    with pytest.warns(LevelTargetWarning, match="24 held-out calibration inputs"):
        enc = encrypt_model(
            tm.classifier(),
            levels=3,
            budget=0.3,
            calibration=_calib(96),
            level_targets=[0.5, 0.8, 1.0],
            seed=0,
        )
    report = enc.level_report
    assert report is not None and not report.within(0.0)
    misses = report.misses()
    assert misses is not None and len(misses) == 3 and misses[-1] == 0.0


def test_level_metric_replaces_the_built_in_quality() -> None:
    """Targets can be stated in the user's own metric (e.g. a detector's F1)."""
    cal = _calib(96)

    def top1(plain, test) -> float:
        return float(np.mean(plain[0].argmax(1) == test[0].argmax(1)))

    kwargs = dict(levels=3, budget=0.3, calibration=cal, level_targets=[0.5, 0.8, 1.0], seed=0)
    built_in = encrypt_model(tm.classifier(), **kwargs).level_report
    custom = encrypt_model(tm.classifier(), level_metric=top1, **kwargs).level_report
    assert built_in is not None and custom is not None
    assert custom.objective == "custom"
    # The built-in quality of a classifier is top-1 agreement: the same cuts.
    assert custom.restored_kernels == built_in.restored_kernels
    # A metric that calls every level perfect puts every cut as early as it can go while
    # each level still restores a kernel more than the one below (no two equal keys).
    always = encrypt_model(tm.classifier(), level_metric=lambda p, t: 1.0, **kwargs)
    assert always.level_report is not None
    assert always.level_report.restored_kernels[:-1] == (1, 2)
    with pytest.raises(ValueError, match="level_targets"):
        encrypt_model(tm.classifier(), calibration=cal, level_metric=top1)
