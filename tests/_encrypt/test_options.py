"""EncryptOptions: one validated value; 0.1's keyword arguments still work, deprecated."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import pytest

import onnx_selenc as se
from onnx_selenc._encrypt.files import encrypt_model
from tests import tiny_models as tm


def test_defaults_and_fixed_fractions() -> None:
    options = se.EncryptOptions()
    assert (options.levels, options.budget, options.fractions) == (
        5,
        0.01,
        (0.2, 0.4, 0.6, 0.8, 1.0),
    )
    three = se.EncryptOptions(levels=3, split=se.FixedLevels((0.5, 0.8, 1.0)))
    assert three.fractions == (0.5, 0.8, 1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"levels": 0},
        {"budget": 0.0},
        {"budget": 1.5},
        {"masking": "uniform"},
        {"objective": "l1"},
        {"levels": 3, "split": se.FixedLevels((0.5, 1.0))},
        {"levels": 2, "split": se.FixedLevels((0.5, 0.5))},
        {"levels": 2, "split": se.CalibratedLevels((0.5, 0.9))},
        {"split": "fixed"},
    ],
)
def test_invalid_options_are_refused_when_made(kwargs: dict) -> None:
    with pytest.raises((ValueError, TypeError)):
        se.EncryptOptions(**kwargs)


def test_an_invalid_level_order_is_refused() -> None:
    with pytest.raises(ValueError, match="level order"):
        se.FixedLevels(order="random-first")


def test_keywords_map_to_options_and_targets_exclude_fractions() -> None:
    options = se.EncryptOptions.from_keywords(levels=2, level_targets=[0.5, 1.0], seed=3)
    assert options.split == se.CalibratedLevels((0.5, 1.0)) and options.seed == 3
    with pytest.raises(ValueError, match="replace level_fractions"):
        se.EncryptOptions.from_keywords(levels=2, level_targets=[0.5, 1.0],
                                        level_fractions=[0.5, 1.0])  # fmt: skip
    with pytest.raises(ValueError, match="level_metric"):
        se.EncryptOptions.from_keywords(level_metric=lambda p, t: 1.0)
    with pytest.raises(TypeError, match="unknown encrypt option"):
        se.EncryptOptions.from_keywords(budgets=0.1)


def test_encrypt_takes_options_and_deprecates_keywords(tmp_path: Path) -> None:
    onnx.save(tm.cnn(), tmp_path / "p.onnx")
    options = se.EncryptOptions(levels=3, budget=0.2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = se.encrypt(tmp_path / "p.onnx", tmp_path / "a.onnx", key_file=tmp_path / "a",
                         options=options)  # fmt: skip
    with pytest.warns(DeprecationWarning, match="options=EncryptOptions"):
        old = se.encrypt(tmp_path / "p.onnx", tmp_path / "b.onnx", key_file=tmp_path / "b",
                         levels=3, budget=0.2, seed=0)  # fmt: skip
    assert [layer.kernels_per_level for layer in new.layers] == [
        layer.kernels_per_level for layer in old.layers
    ]
    with pytest.raises(TypeError, match="not both"):
        se.encrypt(tmp_path / "p.onnx", tmp_path / "c.onnx", key_file=tmp_path / "c",
                   options=options, levels=3)  # fmt: skip


def test_encrypt_has_at_most_eight_parameters() -> None:
    import inspect

    assert len(inspect.signature(se.encrypt).parameters) <= 8


def test_encrypt_model_takes_the_same_options() -> None:
    options = se.EncryptOptions(levels=2, budget=0.2, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = encrypt_model(tm.cnn(), options=options)
        b = encrypt_model(tm.cnn(), levels=2, budget=0.2, seed=1)
    assert a.selection.selected_weights == b.selection.selected_weights
