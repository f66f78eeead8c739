"""The budget grows past what was asked only with the user's consent (issue 24.3):
where the fixed levels change the outputs only with more kernels (kernels that feed
unused channels), encrypt refuses and says how many, unless allowed."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnx_selenc
from onnx_selenc._cli.commands import main
from onnx_selenc._encrypt.pipeline import encrypt_model
from onnx_selenc.exceptions import BudgetTooSmall, LevelCountWarning
from tests import tiny_models as tm

LEVELS, BUDGET = 3, 0.02


def dead_channels(live: float = 1.0) -> onnx.ModelProto:
    """Conv w1 whose largest kernels feed channels a mask zeroes (``live`` scales the
    channels it keeps: 0 makes every kernel of w1 dead), then a 1x1 conv."""
    w1, w2 = tm._weights(19, (16, 3, 3, 3), (4, 16, 1, 1))
    w1[8:] *= 10.0  # the data-free scores pick the dead ones first
    w1[:8] *= np.linspace(1.0, 2.0, 8, dtype=np.float32)[:, None, None, None]
    mask = np.zeros((1, 16, 1, 1), np.float32)
    mask[0, :8] = live
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["a", "mask"], ["kept"]),
        helper.make_node("Conv", ["kept", "w2"], ["y"]),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (mask, "mask"), (w2, "w2")]]
    return tm._model(nodes, [tm.x_info()], [tm.y_info()], inits)


def _options(allow: bool) -> onnx_selenc.EncryptOptions:
    return onnx_selenc.EncryptOptions(
        levels=LEVELS, budget=BUDGET, seed=0, layers=("w1",), allow_budget_growth=allow
    )


def _encrypt(tmp_path: Path, allow: bool) -> onnx_selenc.EncryptResult:
    plain = tmp_path / "plain.onnx"
    onnx.save(dead_channels(), plain)
    return onnx_selenc.encrypt(
        plain, tmp_path / "enc.onnx", key_file=tmp_path / "o.key", options=_options(allow)
    )


def _needed(tmp_path: Path) -> BudgetTooSmall:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LevelCountWarning)  # at least one kernel a level
        with pytest.raises(BudgetTooSmall) as caught:
            _encrypt(tmp_path, allow=False)
    return caught.value


def test_budget_growth_is_refused_without_consent_with_the_count(tmp_path: Path) -> None:
    exc = _needed(tmp_path)
    message = str(exc)
    assert f"with {exc.kernels} kernels ({100 * exc.share:.3g}%)" in message
    assert f"the {LEVELS} kernels the budget chose" in message
    assert exc.kernels > LEVELS and "allow_budget_growth=True" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.onnx"]  # nothing written
    # In memory: the refused model is left with its own weights.
    model = dead_channels()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LevelCountWarning)
        with pytest.raises(BudgetTooSmall):
            encrypt_model(model, options=_options(False))
    want = {t.name: t.SerializeToString() for t in dead_channels().graph.initializer}
    assert {t.name: t.SerializeToString() for t in model.graph.initializer} == want


def test_budget_growth_with_consent_encrypts_the_count_and_levels_differ(
    tmp_path: Path,
) -> None:
    (tmp_path / "refused").mkdir()
    needed = _needed(tmp_path / "refused")
    with pytest.warns(LevelCountWarning, match=f"encrypting {needed.kernels} kernels"):
        result = _encrypt(tmp_path, allow=True)
    assert sum(layer.encrypted_kernels for layer in result.layers) == needed.kernels
    feeds = tm.feeds(dead_channels(), n=2)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    outputs = [ort.InferenceSession(str(tmp_path / "enc.onnx"), so).run(None, feeds)[0]]
    for level in range(1, LEVELS + 1):
        session = onnx_selenc.load_session(
            tmp_path / "enc.onnx", key=tmp_path / "o.key", level=level
        )
        outputs.append(session.run(None, feeds)[0])
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(outputs))


def test_growth_that_changes_nothing_keeps_the_budget_asked(tmp_path: Path) -> None:
    """Every kernel of w1 is dead: more kernels cannot help, so the budget's kernels
    are encrypted as asked (with a warning), consent or not."""
    plain = tmp_path / "plain.onnx"
    onnx.save(dead_channels(live=0.0), plain)
    for allow in (False, True):
        with pytest.warns(UserWarning, match="change nothing on the probe inputs"):
            result = onnx_selenc.encrypt(
                plain,
                tmp_path / f"enc{allow}.onnx",
                key_file=tmp_path / f"o{allow}.key",
                options=_options(allow),
            )
        assert sum(layer.encrypted_kernels for layer in result.layers) == LEVELS


def test_cli_names_its_flag_and_allows_growth_with_it(tmp_path: Path, capsys) -> None:
    plain = tmp_path / "plain.onnx"
    onnx.save(dead_channels(), plain)

    def encrypt(*extra: str) -> int:
        out, key = tmp_path / f"enc{len(extra)}.onnx", tmp_path / f"o{len(extra)}.key"
        argv = ["encrypt", str(plain), "-o", str(out), "--keys", str(key), "--layers", "w1"]
        return main([*argv, "--levels", str(LEVELS), "--budget", str(BUDGET), "-q", *extra])

    assert encrypt() == 1
    err = capsys.readouterr().err
    assert "--allow-budget-growth" in err and "allow_budget_growth=" not in err
    assert encrypt("--allow-budget-growth") == 0
    assert "kernels" in capsys.readouterr().err  # the growth is said
