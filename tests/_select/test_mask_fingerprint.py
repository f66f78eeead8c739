"""Masked kernels carry no numeric fingerprint (issue 13, section 3).

A reviewer found DPRM's masked kernels from the public file alone: fresh float64
draws are never bf16- or fp16-representable and never exactly zero, so in a
bf16-valued or pruned model the kernels that break the layer's value grid are the
masked ones. Here the same attack (:func:`samples.paper.attack_fingerprints.fingerprint_detection`:
exact zeros, bf16 / fp16 representability, mantissa bits used, exact copies at the same
position, values in a pruned layer's gap) must be at chance on bf16-rounded, fp16-valued
and 50%-pruned copies of a real model, and the unit tests below pin the grid and the
zero rate on tiny synthetic layers.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from onnx_selenc._select.masking import dprm_values, mask_layer

# Chance level plus this many binomial standard errors (one-sided): with 7 detectors on
# 3 variants, a detector that is truly at chance fails about once in 10,000 runs.
Z_MARGIN = 4.0
BUDGET = 0.02  # YOLOv8n: about 2.7% of its conv kernels masked


def _bf16(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def _is_bf16(x: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) & 0xFFFF) == 0


def _is_fp16(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32) == x


def _heavy(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Heavy-tailed float32 weights with a per-position scale, like real kernels."""
    rng = np.random.default_rng(seed)
    return (0.05 * rng.standard_t(4, size=shape)).astype(np.float32)


def _pruned(w: np.ndarray) -> np.ndarray:
    flat = w.ravel().copy()
    flat[np.argsort(np.abs(flat), kind="stable")[: flat.size // 2]] = 0.0
    return flat.reshape(w.shape)


def _per_channel_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 fake quantisation with one scale per output channel."""
    scale = (np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127).astype(np.float32)
    s = scale.reshape(-1, *([1] * (w.ndim - 1)))
    return (np.rint(w / s).astype(np.float32) * s).astype(np.float32), scale


SELECTED = np.random.default_rng(5).choice(64 * 16, 60, replace=False)


@pytest.mark.parametrize("fully", [False, True], ids=["partly", "fully-masked"])
@pytest.mark.parametrize("grid", ["bf16", "fp16"])
def test_replacements_stay_on_a_float_grid(grid: str, fully: bool) -> None:
    w = _heavy((64, 16, 3, 3))
    w = _bf16(w) if grid == "bf16" else w.astype(np.float16).astype(np.float32)
    on_grid = _is_bf16 if grid == "bf16" else _is_fp16
    selected = np.arange(64 * 16) if fully else SELECTED
    masked, record = mask_layer("w", w, selected, np.random.default_rng(0))
    assert masked.dtype == np.float32
    assert on_grid(record.replacements).all()
    assert on_grid(masked).all()
    assert np.all(np.any(record.replacements != record.originals, axis=1))


@pytest.mark.parametrize("fully", [False, True], ids=["partly", "fully-masked"])
def test_replacements_stay_on_a_per_channel_int8_grid(fully: bool) -> None:
    w, scale = _per_channel_int8(_heavy((64, 16, 3, 3), seed=1))
    selected = np.arange(64 * 16) if fully else SELECTED
    masked, record = mask_layer("w", w, selected, np.random.default_rng(0))
    channel = selected // 16
    steps = record.replacements / scale[channel, None]
    levels = np.rint(steps)
    np.testing.assert_allclose(steps, levels, atol=1e-3)
    assert np.abs(levels).max() <= 127
    # Bit for bit the value the layer stores for that step, where the channel has one.
    exact = (levels * scale[channel, None]).astype(np.float32)
    assert np.array_equal(record.replacements, exact)
    rows = masked.reshape(64 * 16, 9)
    assert np.all(np.any(rows[selected] != record.originals, axis=1))
    zero_rate = float(np.mean(w == 0))
    assert abs(float(np.mean(record.replacements == 0)) - zero_rate) < 0.04


def test_pruned_layer_keeps_its_zero_rate_per_position_and_its_gap() -> None:
    # Position 4 (the centre) is pruned much less than the corners.
    spread = np.array([0.5, 1, 0.5, 1, 3, 1, 0.5, 1, 0.5], dtype=np.float32).reshape(3, 3)
    w = _pruned(_heavy((64, 16, 3, 3), seed=2) * spread)
    kernels = w.reshape(-1, 9)
    selected = np.random.default_rng(7).choice(len(kernels), 300, replace=False)
    values = dprm_values(kernels, selected, np.random.default_rng(0))
    public = np.delete(kernels, selected, axis=0)
    np.testing.assert_allclose((values == 0).mean(0), (public == 0).mean(0), atol=0.1)
    assert abs(float((values == 0).mean()) - float((public == 0).mean())) < 0.04
    # Nothing lands in the gap that pruning left around zero.
    threshold = np.abs(kernels[kernels != 0]).min()
    assert np.all((values == 0) | (np.abs(values) >= threshold))
    # Full-precision nonzeros: fresh values, never copies of a stored weight.
    assert not np.isin(values[values != 0], kernels).any()


def test_pruned_zero_patterns_keep_their_spread() -> None:
    """Per-kernel zero counts keep the layer's spread (all-zero and dense kernels), not a
    binomial around the mean that a zero-count detector would pick out."""
    w = _heavy((64, 32, 3, 3), seed=3)
    w *= np.random.default_rng(4).lognormal(0, 1, size=(64, 32, 1, 1)).astype(np.float32)
    kernels = _pruned(w).reshape(-1, 9)
    selected = np.random.default_rng(8).choice(len(kernels), 400, replace=False)
    values = dprm_values(kernels, selected, np.random.default_rng(0))
    public = np.delete(kernels, selected, axis=0)
    counts = np.bincount((values == 0).sum(1), minlength=10) / len(values)
    expected = np.bincount((public == 0).sum(1), minlength=10) / len(public)
    assert np.abs(counts - expected).sum() < 0.2  # total variation x2


def test_grid_masking_is_deterministic_for_a_given_rng() -> None:
    w, _ = _per_channel_int8(_heavy((32, 8, 3, 3)))
    w = _pruned(w)
    first = mask_layer("w", w, np.arange(20), np.random.default_rng(11))[0]
    again = mask_layer("w", w, np.arange(20), np.random.default_rng(11))[0]
    assert np.array_equal(first, again)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["bf16", "fp16", "pruned"])
def test_real_model_masks_are_invisible_to_a_bit_level_detector(
    variant: str, tmp_path: Path
) -> None:
    """YOLOv8n (nudenet_320n) with bf16-rounded, fp16-valued or 50%-pruned conv weights,
    encrypted with the default options: every detector's precision is within
    ``Z_MARGIN`` standard errors of the masked share of the layers it flags from."""
    attacks = pytest.importorskip("samples.paper.attack_fingerprints")
    real_models = pytest.importorskip("samples.real_models")
    import onnx_selenc as se

    try:
        path = real_models.fetch("nudenet_320n")
    except RuntimeError as exc:  # no PyPI and no cached copy
        pytest.skip(f"nudenet_320n unavailable: {exc}")
    plain = attacks.value_variant(path, variant, tmp_path / f"{variant}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        se.encrypt(
            plain,
            tmp_path / "enc.onnx",
            key_file=tmp_path / "owner.key",
            options=se.EncryptOptions(budget=BUDGET, seed=0),
        )
    found = attacks.fingerprint_detection(plain, tmp_path / "enc.onnx")
    assert 0.01 < found["base_rate"] < 0.06  # a few percent of the kernels are masked
    loud = {
        name: row
        for name, row in found["detectors"].items()
        if row["flagged"] and row["z"] > Z_MARGIN
    }
    assert not loud, loud
    enc = attacks.conv_weights(tmp_path / "enc.onnx")
    if variant in ("bf16", "fp16"):
        on_grid = _is_bf16 if variant == "bf16" else _is_fp16
        assert all(on_grid(w).all() for w in enc.values())
    else:
        # Replaced kernels hold zeros at the layer's own rate (half, as pruned), not at
        # the rate of the important kernels they replace (which kept more weights).
        original = attacks.conv_weights(plain)
        masked_zeros = masked_values = 0
        for name, w in enc.items():
            rows = (
                w.reshape(-1, int(np.prod(w.shape[2:]))),
                original[name].reshape(-1, int(np.prod(w.shape[2:]))),
            )
            changed = np.any(rows[0] != rows[1], axis=1)
            masked_zeros += int((rows[0][changed] == 0).sum())
            masked_values += int(rows[0][changed].size)
        # (drawn per kernel position from the public kernels, whose rates vary by position)
        assert masked_values and abs(masked_zeros / masked_values - 0.5) < 0.1


def _recurs(column: np.ndarray) -> np.ndarray:
    """Which nonzero values of a column another value of the column equals."""
    _, inverse, counts = np.unique(column, return_inverse=True, return_counts=True)
    return (counts[inverse.ravel()] > 1) & (column != 0)


@pytest.mark.parametrize("grid", ["float32", "bf16", "fp16"])
def test_exact_copies_recur_at_the_layers_own_rate(grid: str) -> None:
    """A detector of exact copies: in the masked layer, replacement values equal another
    weight at the same position as often as public values do (float32: rarely, hundreds
    of thousands of weights on 2**23 values a binade; bf16: nearly always)."""
    w = _heavy((200_000, 1, 1, 1), seed=6)
    w = {"float32": w, "bf16": _bf16(w), "fp16": w.astype(np.float16).astype(np.float32)}[grid]
    selected = np.random.default_rng(9).choice(len(w), 5000, replace=False)
    masked, _ = mask_layer("w", w, selected, np.random.default_rng(0))
    recurs = _recurs(masked.ravel())
    public = np.ones(len(w), dtype=bool)
    public[selected] = False
    rate = float(recurs[public].mean())
    se = np.sqrt(rate * (1 - rate) / len(selected)) + 1e-4
    assert abs(float(recurs[selected].mean()) - rate) < Z_MARGIN * se, (grid, rate)


def test_full_precision_kernels_are_not_made_of_copies() -> None:
    """The fingerprint the smoothing exists for: a float32 kernel whose every value is an
    exact copy of another weight at its position would stand out."""
    w = _heavy((64, 256, 3, 3), seed=7)
    selected = np.random.default_rng(10).choice(64 * 256, 800, replace=False)
    masked, _ = mask_layer("w", w, selected, np.random.default_rng(0))
    kernels = masked.reshape(-1, 9)
    copies = np.stack([_recurs(kernels[:, j]) for j in range(9)], axis=1)
    assert copies[selected].sum(axis=1).max() <= 1
    assert copies[selected].mean() <= copies.mean() + 0.01


def test_per_tensor_int8_grid_and_no_grid_where_there_is_none() -> None:
    from onnx_selenc._select.value_grid import find_grid

    w = _heavy((64, 16, 3, 3), seed=12)
    scale = np.float32(np.abs(w).max() / 127)
    q = (np.rint(w / scale).astype(np.float32) * scale).astype(np.float32)
    grid = find_grid(q.reshape(-1, 9), (64, 16))
    assert grid.steps is not None and len(grid.steps.step) == 1
    _, record = mask_layer("w", q, SELECTED, np.random.default_rng(0))
    levels = np.rint(record.replacements / scale)
    assert np.array_equal(record.replacements, (levels * scale).astype(np.float32))
    assert np.abs(levels).max() <= 127
    # Full-precision weights, a depthwise layer (9 weights a channel) included.
    for shape in ((64, 16, 3, 3), (32, 1, 3, 3), (8, 4, 1, 1)):
        plain = _heavy(shape, seed=13)
        assert not find_grid(plain.reshape(shape[0] * shape[1], -1), shape[:2]).coarse
