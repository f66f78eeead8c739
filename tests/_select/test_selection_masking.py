"""Allocation, level split and DPRM statistics."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_selenc._onnx.graph import ConvWeight
from onnx_selenc._select.importance import score_kernels
from onnx_selenc._select.masking import dprm_values, mask_layer
from onnx_selenc._select.selection import (
    allocate_balanced,
    allocate_uniform,
    check_fractions,
    filter_layers,
    level_split,
    top_kernels,
)


def _w(key: str, shape: tuple[int, ...]) -> ConvWeight:
    return ConvWeight(key, key, (), "initializer", shape, "float32", (f"Conv '{key}'",), (), False)


LAYERS = [_w("a", (64, 3, 3, 3)), _w("b", (128, 64, 3, 3)), _w("c", (256, 128, 3, 3))]


def test_balanced_allocation_spends_the_budget_evenly() -> None:
    total = sum(w.n_weights for w in LAYERS)
    counts = allocate_balanced(LAYERS, int(0.02 * total))
    spent = {w.address: counts[w.address] * w.kernel_size for w in LAYERS}
    assert abs(sum(spent.values()) - 0.02 * total) < 3 * 9 * len(LAYERS)
    # The small first layer gives up the most, but never all (issue 13.4): at most half.
    assert spent["a"] == LAYERS[0].n_weights // 2
    assert abs(spent["b"] - spent["c"]) <= 9
    assert counts["a"] / LAYERS[0].n_kernels > counts["c"] / LAYERS[2].n_kernels


def test_balanced_allocation_small_budget() -> None:
    counts = allocate_balanced(LAYERS, 30)
    assert all(1 <= c <= 2 for c in counts.values())


def test_uniform_allocation() -> None:
    counts = allocate_uniform(LAYERS, 0.08)
    assert counts == {w.address: int(w.n_kernels * 0.08) + 1 for w in LAYERS}
    with pytest.raises(ValueError):
        allocate_uniform(LAYERS, 0.0)


def test_level_split_nested_and_ordered() -> None:
    levels = level_split(100, [0.68, 0.76, 0.84, 0.92, 1.0])
    assert np.all(np.diff(levels) >= 0)
    assert [int(np.sum(levels <= m)) for m in range(1, 6)] == [68, 76, 84, 92, 100]
    rev = level_split(100, [0.5, 1.0], "least-important-first")
    assert rev[0] == 2 and rev[-1] == 1


def test_fraction_validation() -> None:
    assert check_fractions(4, None) == (0.25, 0.5, 0.75, 1.0)
    for bad in ([0.5, 0.4, 1.0], [0.2, 0.5], [0.2, 0.4, 0.9]):
        with pytest.raises(ValueError):
            check_fractions(3, bad)


def test_layer_filter() -> None:
    assert [w.address for w in filter_layers(LAYERS, ["b", "c*"])] == ["b", "c"]
    with pytest.raises(ValueError, match="matches no conv weight"):
        filter_layers(LAYERS, ["conv9"])


def test_scorers() -> None:
    rng = np.random.default_rng(0)
    k = np.array([[1.0, -1.0], [3.0, 3.0], [0.1, 0.1]])
    assert np.argmax(score_kernels(k, "magnitude", rng)) == 1
    assert np.argmin(score_kernels(k, "abs-mean", rng)) == 0  # mean of [1, -1] is 0
    with pytest.raises(ValueError, match="unknown"):
        score_kernels(k, "oracle", rng)


def test_int8_magnitude_does_not_overflow() -> None:
    k = np.array([[-128, -128], [100, 100]], dtype=np.int8)
    assert np.argmax(score_kernels(k, "magnitude", np.random.default_rng(0))) == 0


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_top_kernels_equals_a_stable_descending_sort(n: int) -> None:
    rng = np.random.default_rng(n)
    for scores in (rng.random(n), rng.integers(0, 3, n).astype(float)):  # ties too
        for k in sorted({1, max(1, n // 3), n}):
            expected = np.argsort(-scores, kind="stable")[:k]
            assert np.array_equal(top_kernels(scores, k), expected)


def test_dprm_is_unchanged_by_chunking(monkeypatch) -> None:
    """The layer moments are accumulated in chunks of rows: same draw as in one go."""
    from onnx_selenc._select import masking as _masking

    rng = np.random.default_rng(3)
    k = (0.3 + 0.05 * rng.standard_normal((1000, 9))).astype(np.float32)
    sel = rng.choice(1000, 40, replace=False)
    whole = dprm_values(k, sel, np.random.default_rng(1))
    monkeypatch.setattr(_masking, "_MOMENT_ROWS", 64)
    chunked = dprm_values(k, sel, np.random.default_rng(1))
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["empirical", "gaussian"])
def test_dprm_matches_layer_statistics(method: str) -> None:
    rng = np.random.default_rng(0)
    # Heavy-tailed weights, like real ones.
    kernels = rng.standard_t(3, size=(4000, 9)) * np.linspace(0.5, 2, 9)
    selected = rng.choice(4000, 800, replace=False)
    values = dprm_values(kernels, selected, rng, method)
    assert values.shape == (800, 9)
    np.testing.assert_allclose(values.mean(0), kernels.mean(0), atol=0.25)
    np.testing.assert_allclose(values.std(0), kernels.std(0), rtol=0.2)
    # Independent of the originals they replace.
    corr = np.corrcoef(values.ravel(), kernels[selected].ravel())[0, 1]
    assert abs(corr) < 0.05
    # No replacement value is an exact copy of an existing weight.
    assert not np.isin(values, kernels).any()


def test_empirical_keeps_heavy_tails_better_than_gaussian() -> None:
    rng = np.random.default_rng(1)
    kernels = rng.standard_t(3, size=(20000, 1))
    selected = np.arange(5000)

    def kurt(x: np.ndarray) -> float:
        x = x.ravel() - x.mean()
        return float((x**4).mean() / (x**2).mean() ** 2)

    target = kurt(kernels[5000:])
    emp = kurt(dprm_values(kernels, selected, rng, "empirical"))
    gauss = kurt(dprm_values(kernels, selected, rng, "gaussian"))
    assert abs(emp - target) < abs(gauss - target)


def test_fully_selected_layer_falls_back_to_gaussian() -> None:
    rng = np.random.default_rng(0)
    kernels = rng.standard_normal((4, 9))
    values = dprm_values(kernels, np.arange(4), rng, "empirical")
    assert values.shape == (4, 9) and np.isfinite(values).all()


def test_integer_masking_stays_in_range() -> None:
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, size=(32, 3, 3, 3)).astype(np.int8)
    masked, record = mask_layer("w", w, np.arange(8), rng)
    assert masked.dtype == np.int8 and record.originals.dtype == np.int8
    assert np.array_equal(masked.reshape(96, 9)[24:], w.reshape(96, 9)[24:])


def test_balanced_counts_cannot_be_replayed_from_the_public_shapes() -> None:
    """Issue 13.4: with the secret jitter, the public total no longer gives each layer's
    count (without it, the water-filling replays all of them exactly)."""
    layers = [_w(f"l{i}", (16 * (i + 1), 8 * (i + 1), 3, 3)) for i in range(12)]
    target = int(0.01 * sum(w.n_weights for w in layers))
    public = allocate_balanced(layers, target)  # what anyone can compute
    exact = []
    for seed in range(5):
        secret = allocate_balanced(layers, target, np.random.default_rng(seed))
        spent = sum(secret[w.address] * w.kernel_size for w in layers)
        assert abs(spent - target) <= 9 * len(layers)  # the budget is still spent
        replayed = allocate_balanced(layers, spent)  # the attacker's best guess
        exact.append(sum(secret[a] == replayed[a] for a in secret) / len(layers))
        assert secret != public
    assert float(np.mean(exact)) < 0.35


def test_no_layer_is_fully_masked_unless_asked() -> None:
    from onnx_selenc._select.allocation import MAX_LAYER_SHARE, cap_layer_shares

    counts = allocate_balanced(LAYERS, int(0.3 * sum(w.n_weights for w in LAYERS)))
    assert all(counts[w.address] <= w.n_kernels * MAX_LAYER_SHARE for w in LAYERS)
    greedy = {"a": 192, "b": 10, "c": 10}  # e.g. sensitivity taking all of "a" first
    capped = cap_layer_shares(greedy, LAYERS)
    assert capped["a"] == 96 and capped["b"] > 10 and capped["c"] > 10
    spent = lambda c: sum(c[w.address] * w.kernel_size for w in LAYERS)  # noqa: E731
    assert abs(spent(capped) - spent(greedy)) <= 9 * 3
    assert allocate_uniform(LAYERS, 1.0)["a"] == 192  # asked for: the whole layer
    everything = sum(w.n_weights for w in LAYERS)
    assert allocate_balanced(LAYERS, everything)["a"] == 192  # the budget wins over the cap
