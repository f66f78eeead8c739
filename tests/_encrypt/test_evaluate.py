"""The evaluation harness: sweep, table, CSV/JSON/PNG outputs, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_selenc._cli.commands import main
from onnx_selenc._encrypt.evaluate import builtin_metric, format_table, sweep, write_outputs
from onnx_selenc._encrypt.options import CalibratedLevels, EncryptOptions
from onnx_selenc._select.calibration import Calibration
from tests import tiny_models as tm

TWO_LEVELS = EncryptOptions(levels=2, split=CalibratedLevels((0.5, 1.0)), seed=0)


def _cal(n: int, seed: int) -> Calibration:
    # Per-sample channel offsets make the tiny classifier's predictions vary.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 8, 8)) + 2 * rng.standard_normal((n, 3, 1, 1))
    return Calibration({"x": x.astype(np.float32)})


def test_sweep_quality_falls_with_budget(tmp_path: Path) -> None:
    result = sweep(
        tm.classifier(),
        _cal(48, 0),
        _cal(48, 1),
        budgets=[0.01, 0.3, 1.0],
        strategies=["magnitude:balanced", "activation:sensitivity"],
        options=TWO_LEVELS,
    )
    assert result.metric == "agreement" and result.plain_quality == 1.0
    for strategy in ("magnitude:balanced", "activation:sensitivity"):
        q = {p.budget: p.quality for p in result.points if p.strategy == strategy}
        assert q[1.0] <= q[0.01] and q[1.0] < 0.5
    (curve,) = [c for c in result.levels if c.strategy == "activation:sensitivity"]
    assert curve.quality[-1] == 1.0 and curve.quality[0] < curve.quality[-1]
    table = format_table(result, chance=0.2)
    assert "activation:sensitivity" in table and "smallest fraction" in table
    files = write_outputs(result, tmp_path, chance=0.2)
    assert {p.name for p in files} >= {"sweep.csv", "sweep.json"}
    assert json.loads((tmp_path / "sweep.json").read_text())["metric"] == "agreement"


def test_metrics() -> None:
    plain = [np.array([[0.0, 1.0], [1.0, 0.0]])]
    assert builtin_metric("accuracy")(plain, plain, np.array([1, 1])) == 0.5
    assert abs(builtin_metric("psnr")(plain, [plain[0] + 0.1], None) - 20.0) < 1e-6


def test_evaluate_cli(tmp_path: Path, capsys) -> None:
    onnx.save(tm.classifier(), tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", x=_cal(32, 0).feeds["x"])
    np.savez(tmp_path / "eval.npz", x=_cal(16, 1).feeds["x"])
    np.save(tmp_path / "labels.npy", np.zeros(16, dtype=np.int64))
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "m.onnx"),
                "--calib",
                str(tmp_path / "cal.npz"),
                "--data",
                str(tmp_path / "eval.npz"),
                "--labels",
                str(tmp_path / "labels.npy"),
                "--budgets",
                "0.05,0.5",
                "--strategies",
                "random:uniform,magnitude:balanced",
                "--out",
                str(tmp_path / "out"),
                "-q",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "accuracy of the plain model" in out and (tmp_path / "out" / "sweep.csv").exists()


def test_a_label_free_metric_also_states_the_level_targets() -> None:
    """The level search runs on calibration inputs in the user's metric."""
    sizes: list[int] = []

    def top1(plain, test, labels) -> float:
        sizes.append(len(plain[0]))
        return float(np.mean(plain[0].argmax(1) == test[0].argmax(1)))

    result = sweep(
        tm.classifier(),
        _cal(48, 0),
        _cal(40, 1),
        budgets=[0.3],
        strategies=["activation:sensitivity"],
        metric=top1,
        options=TWO_LEVELS,
    )
    assert 40 in sizes  # the sweep points and the levels, on the evaluation inputs
    assert 48 in sizes  # the level cuts, searched on the calibration inputs
    (curve,) = result.levels
    assert curve.quality[-1] == 1.0


def test_the_sweep_takes_0_1_keywords_with_a_warning() -> None:
    args = (tm.classifier(), _cal(48, 0), _cal(48, 1))
    kw = {"budgets": [0.3], "strategies": ["magnitude:balanced"]}
    with pytest.warns(DeprecationWarning, match="options=EncryptOptions"):
        old = sweep(*args, **kw, level_targets=[0.5, 1.0], seed=0)
    assert old == sweep(*args, **kw, options=TWO_LEVELS)
    with pytest.raises(TypeError, match="not both"):
        sweep(*args, **kw, options=TWO_LEVELS, seed=0)
    with pytest.raises(TypeError, match="unknown"):
        sweep(*args, **kw, budget=0.1)


def test_the_sweep_masks_as_the_options_say() -> None:
    args = (tm.classifier(), _cal(48, 0), _cal(48, 1))
    kw = {"budgets": [0.3], "strategies": ["magnitude:uniform"]}  # 30% of each layer
    every = sweep(*args, **kw, options=EncryptOptions(seed=0))
    only_w2 = sweep(*args, **kw, options=EncryptOptions(seed=0, layers=("w2",)))
    assert only_w2.points[0].fraction < every.points[0].fraction
