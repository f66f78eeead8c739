"""Levels calibrated to quality targets.

A fixed split (level m restores the top x% of each layer's encrypted kernels)
often collapses: every level is broken, or every level is nearly whole. Here the
encrypted kernels are put in one global restoration order and each level's cut is
searched (bisection, forward passes only) so the model restored to level m reaches
the asked quality, measured against the plain model itself: top-1 agreement for
classifiers, and otherwise the share of the level-0 output error that the level
removes. Two orders are tried and the one that fits the targets better is
kept: least-sensitive layers first (the most damaging kernels stay encrypted
longest), and all layers in step, least important kernels first.

Quality is a step function of the cut: restoring one critical kernel can flip a
fifth of the predictions. Where the kernel that crosses a target jumps far past it,
that kernel is deferred to a later level and the search goes on without it, and the
cut finally taken is the one closest to the target on either side of it.

Stated tolerance (:data:`TOLERANCE`): every level within 0.10 of its target on
held-out inputs, given a few hundred calibration samples (measured on the real
rotation classifier in ``tests/integration/test_real_models.py``; with fewer samples the
sampling error of the search alone is about ``0.5 / sqrt(n)``). ``encrypt`` reports
the held-out figures and warns (:meth:`LevelReport.problems`) about any level outside
the tolerance by more than the held-out sample's own sampling error, and about levels
that are not strictly above the level below them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_selenc._onnx.graph import ConvWeight
from onnx_selenc._onnx.tensors import weight_tensor, write_array
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.masking import MaskedLayer, kernel_matrix, mask_layer
from onnx_selenc._select.objective import choose_objective, distance, quality
from onnx_selenc._select.probe import Probe
from onnx_selenc._select.selection import LayerSelection, Selection, distinct_cuts

ORDERS = ("sensitivity", "interleaved")
TOLERANCE = 0.10
Order = tuple[np.ndarray, np.ndarray]  # (layer index, kernel position) per restore step
# A user's quality of a level: (plain model's outputs, level's outputs) -> 1.0 when equal.
LevelMetric = Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], float]
# At most this many kernels are deferred per level (each costs one more bisection).
MAX_DEFERRED = 8
# Masking draws tried for a public file (level 0) below the first level's target.
LEVEL_ZERO_DRAWS = 4


@dataclass(frozen=True)
class LevelReport:
    """Targets and what was reached, per level 0..M, on calibration and held-out data."""

    targets: tuple[float, ...]
    calibration: tuple[float, ...]
    held_out: tuple[float, ...] | None
    restored_kernels: tuple[int, ...]
    order: str
    objective: str
    held_out_samples: int = 0

    def misses(self) -> tuple[float, ...] | None:
        """Held-out quality minus target, per level 1..M (``None`` without held-out data)."""
        if self.held_out is None:
            return None
        return tuple(h - t for h, t in zip(self.held_out[1:], self.targets, strict=True))

    def within(self, tolerance: float = TOLERANCE) -> bool:
        """Every level within ``tolerance`` of its target on the held-out inputs."""
        misses = self.misses()
        return misses is not None and all(abs(m) <= tolerance for m in misses)

    def sampling_error(self) -> float:
        """How far the held-out figures may stray by chance: ``1 / sqrt(n)``, twice the
        standard error of a share measured on ``n`` held-out samples, at worst."""
        return 1.0 / np.sqrt(self.held_out_samples) if self.held_out_samples else 1.0

    def clearly_missed(self, tolerance: float = TOLERANCE) -> bool:
        """Some level misses by more than the tolerance plus the sampling error."""
        return not self.within(tolerance + self.sampling_error())

    def not_increasing(self) -> tuple[int, ...]:
        """Levels m (1..M) whose quality is not above level m-1's: on the held-out inputs
        where there are some, else on the calibration inputs. A level that gives no more
        than the one below it (level 1 below the public file, level 4 already whole)
        sells nothing, whatever its target said."""
        q = self.held_out if self.held_out is not None else self.calibration
        return tuple(m for m in range(1, len(q)) if q[m] <= q[m - 1])

    def problems(self, tolerance: float = TOLERANCE) -> list[str]:
        """What ``encrypt`` warns about (``LevelTargetWarning``), one message each: the
        level furthest from its target when some level misses by more than ``tolerance``
        plus the held-out sampling error, and levels not above the level below them."""
        out = []
        misses, held = self.misses(), self.held_out
        if misses is not None and held is not None and self.clearly_missed(tolerance):
            worst = max(range(len(misses)), key=lambda m: abs(misses[m]))
            out.append(
                f"level {worst + 1} reached {held[worst + 1]:.2f} on "
                f"{self.held_out_samples} held-out calibration inputs for a "
                f"target of {self.targets[worst]:.2f} (tolerance {tolerance:.2f}, "
                f"sampling error {self.sampling_error():.2f}); more calibration "
                "samples (a few hundred) make the levels more reliable"
            )
        flat = self.not_increasing()
        if flat:
            q = held if held is not None else self.calibration
            where = f"{self.held_out_samples} held-out" if held is not None else "the calibration"
            pairs = ", ".join(f"level {m} {q[m]:.2f} vs level {m - 1} {q[m - 1]:.2f}" for m in flat)
            out.append(
                f"levels not strictly increasing on {where} inputs ({pairs}): such a level "
                "gives no more than the one below it; a larger budget (level 0 further "
                "from the plain model) or more calibration inputs separate the levels"
            )
        return out


def check_targets(levels: int, targets: Sequence[float]) -> tuple[float, ...]:
    t = tuple(float(x) for x in targets)
    if len(t) != levels:
        raise ValueError(f"{len(t)} level targets given for {levels} levels")
    if any(b < a for a, b in itertools.pairwise(t)) or not t[0] >= 0 or t[-1] != 1.0:
        raise ValueError("level targets must be non-decreasing in [0, 1] and end at 1.0")
    return t


def calibrate_levels(
    model: onnx.ModelProto,
    weights: Mapping[str, ConvWeight],
    selection: Selection,
    masked: Sequence[MaskedLayer],
    calibration: Calibration,
    targets: Sequence[float],
    *,
    held_out: Calibration | None = None,
    objective: str = "auto",
    layer_sensitivity: Mapping[str, float] | None = None,
    tolerance: float = TOLERANCE / 2,
    max_samples: int = 256,
    metric: LevelMetric | None = None,
) -> tuple[Selection, LevelReport]:
    """Re-split the selection's kernels into levels that meet ``targets``.

    Args:
        model: the masked model (selected kernels hold their random values).
        weights: conv weights by address.
        selection: the chosen kernels (most important first per layer).
        masked: originals and replacements, aligned with ``selection.layers``.
        calibration: inputs the cuts are searched on.
        targets: quality per level 1..M as a fraction of the plain model's (last 1.0).
        held_out: inputs the result is reported on, not searched on.
        objective: ``auto``, ``kl`` or ``mse`` (see ``_objective``).
        layer_sensitivity: damage per weight of each layer, if measured.
        tolerance: an order whose every level is this close to its target (on the
            calibration inputs) is kept without trying the other; a kernel that
            carries a level this far past its target is deferred.
        max_samples: at most this many calibration samples are used for the search.
        metric: the quality targets are stated in, instead of the built-in one:
            called with the plain model's outputs and a level's outputs (lists of
            arrays, one per model output, all calibration samples), returns 1.0 when
            they agree fully (for example detection F1 against the plain boxes).
            The output-error share does not track such task metrics on detectors.

    Returns:
        The selection with new restore levels, and the report.
    """
    t = check_targets(selection.levels, targets)
    if calibration.n > max_samples:
        calibration = calibration.take(np.linspace(0, calibration.n - 1, max_samples).astype(int))
    layers = selection.layers
    probe = Probe(model, [weights[layer.address] for layer in layers])

    def weights_at(order: tuple[np.ndarray, np.ndarray], k: int) -> dict[str, np.ndarray]:
        return prefix_restored(probe.base, layers, masked, order, k)

    total = sum(len(layer.kernels) for layer in layers)
    full = _interleaved(layers)
    plain = probe.run_all(calibration, weights_at(full, total))
    obj = "custom" if metric is not None else choose_objective(plain, objective)
    plain_held = probe.run_all(held_out, weights_at(full, total)) if held_out else None

    # Classifiers: top-1 agreement with the plain model. Other models: the share of the
    # level-0 output error (vs the plain outputs) that a level removes: 0 at level 0,
    # 1 at the top. (R^2 would not do: a denoiser that returns its noisy input already
    # has a high R^2 against the clean output.)
    def score(reference: list[np.ndarray], test: list[np.ndarray], base: float | None) -> float:
        if metric is not None:
            return float(metric(reference, test))
        if obj == "kl" or not base:
            return quality(reference, test, obj)
        return max(0.0, 1.0 - distance(reference, test, "mse") / base)

    # The level-0 error is only needed by the error-share quality: spare its forward passes.
    base_calibration = base_held = None
    if metric is None and obj != "kl":
        base_calibration = distance(plain, probe.run_all(calibration, weights_at(full, 0)), "mse")
        if held_out is not None and plain_held is not None:
            base_held = distance(plain_held, probe.run_all(held_out, weights_at(full, 0)), "mse")

    best = None
    for name in ORDERS:
        if name == "sensitivity" and not layer_sensitivity:
            continue
        order = _sensitivity_order(layers, layer_sensitivity) if name == "sensitivity" else full
        cuts, order, reached = _search(
            order,
            t,
            lambda o, k: score(
                plain, probe.run_all(calibration, weights_at(o, k)), base_calibration
            ),
            tolerance,
        )
        error = sum(abs(r - x) for r, x in zip(reached[1:], t, strict=True))
        if best is None or error < best[0]:
            best = (error, name, order, cuts, reached)
        if max(abs(r - x) for r, x in zip(reached[1:], t, strict=True)) <= tolerance:
            break  # good enough: skip the other order
    assert best is not None
    _, name, order, cuts, reached = best

    held = None
    if held_out is not None and plain_held is not None:
        held = tuple(
            score(plain_held, probe.run_all(held_out, weights_at(order, k)), base_held)
            for k in [0, *cuts]
        )
    levels_of = np.searchsorted(np.asarray(cuts), np.arange(total), side="right") + 1
    new_layers = []
    for li, layer in enumerate(layers):
        restore = np.empty(len(layer.kernels), dtype=np.int16)
        mine = order[0] == li
        restore[order[1][mine]] = levels_of[mine]
        new_layers.append(LayerSelection(layer.address, layer.kernels, restore))
    report = LevelReport(
        t, tuple(reached), held, tuple(cuts), name, obj, held_out.n if held_out is not None else 0
    )
    return Selection(
        tuple(new_layers), selection.levels, selection.selected_weights, selection.total_weights
    ), report


def break_level_zero(
    model: onnx.ModelProto,
    weights: Mapping[str, ConvWeight],
    arrays: Mapping[str, np.ndarray],
    selection: Selection,
    masked: Sequence[MaskedLayer],
    calibration: Calibration,
    first_target: float,
    rng: np.random.Generator,
    *,
    masking: str = "empirical",
    objective: str = "auto",
    metric: LevelMetric | None = None,
) -> list[MaskedLayer]:
    """The masking draw (same kernels) that leaves level 0 below ``first_target``.

    A draw can leave the public file half working (the demo's once agreed 0.51 with the
    plain model on its search inputs, for a level-1 target of 0.4): no level then fits
    between it and the target, and the search, which assumes quality rises with the
    kernels restored, cut level 1 below level 0. Up to :data:`LEVEL_ZERO_DRAWS` draws
    are tried and the most damaging is kept, written into ``model``; a level 0 still
    above the target shows as levels not strictly increasing (:meth:`LevelReport.problems`).

    Args:
        model: the masked model (the kept draw is written into it).
        weights: conv weights by address.
        arrays: each selected weight's original values, by address.
        selection: the chosen kernels.
        masked: the current draw, aligned with ``selection.layers``.
        calibration: the inputs level 0 is measured on (the level search's).
        first_target: level 1's target.
        rng: draws the replacement values.
        masking: the DPRM method.
        objective: as in :func:`calibrate_levels`.
        metric: as in :func:`calibrate_levels`.
    """
    score = level_zero_scorer(
        model, weights, selection, masked, calibration, objective=objective, metric=metric
    )
    if score is None:  # the output-error share is 0 at level 0 whatever the draw
        return list(masked)
    best, best_q, chosen = list(masked), score(masked), None
    for _ in range(LEVEL_ZERO_DRAWS - 1):
        if best_q < first_target:
            break
        drawn = [mask_layer(r.address, arrays[r.address], r.kernels, rng, masking) for r in masked]
        q = score([rec for _, rec in drawn])
        if q < best_q:
            best, best_q, chosen = [rec for _, rec in drawn], q, drawn
    for values, rec in chosen or ():
        write_array(weight_tensor(model, weights[rec.address]), values)
    return best


def level_zero_scorer(
    model: onnx.ModelProto,
    weights: Mapping[str, ConvWeight],
    selection: Selection,
    masked: Sequence[MaskedLayer],
    calibration: Calibration,
    *,
    objective: str = "auto",
    metric: LevelMetric | None = None,
    max_samples: int = 256,
) -> Callable[[Sequence[MaskedLayer]], float] | None:
    """How close a masking draw leaves level 0 to the plain model, in the quality the
    targets are stated in: a function of the draw's records (same kernels as
    ``masked``), or None for the output-error share, which is 0 at level 0 whatever
    the draw."""
    if calibration.n > max_samples:
        calibration = calibration.take(np.linspace(0, calibration.n - 1, max_samples).astype(int))
    layers = selection.layers
    probe = Probe(model, [weights[layer.address] for layer in layers])
    full = _interleaved(layers)
    total = sum(len(layer.kernels) for layer in layers)
    plain = probe.run_all(calibration, prefix_restored(probe.base, layers, masked, full, total))
    obj = "custom" if metric is not None else choose_objective(plain, objective)
    if obj not in ("kl", "custom"):
        return None

    def score(draw: Sequence[MaskedLayer]) -> float:
        feeds = {}
        for layer, rec in zip(layers, draw, strict=True):
            mat = kernel_matrix(probe.base[layer.address]).copy()
            mat[rec.kernels] = rec.replacements
            feeds[layer.address] = mat.reshape(probe.base[layer.address].shape)
        level0 = probe.run_all(calibration, feeds)
        return float(metric(plain, level0)) if metric is not None else quality(plain, level0, obj)

    return score


def prefix_restored(
    base: Mapping[str, np.ndarray],
    layers: Sequence[LayerSelection],
    masked: Sequence[MaskedLayer],
    order: tuple[np.ndarray, np.ndarray],
    k: int,
) -> dict[str, np.ndarray]:
    """Each layer's weight with the first ``k`` kernels of ``order`` (layer index,
    position) restored over its masked values ``base``."""
    layer_ids, positions = order[0][:k], order[1][:k]
    out = {}
    for li, (layer, rec) in enumerate(zip(layers, masked, strict=True)):
        mat = kernel_matrix(base[layer.address]).copy()
        pos = positions[layer_ids == li]
        mat[layer.kernels[pos]] = rec.originals[pos]
        out[layer.address] = mat.reshape(base[layer.address].shape)
    return out


def _search(
    order: Order,
    targets: Sequence[float],
    quality_at: Callable[[Order, int], float],
    tolerance: float,
) -> tuple[list[int], Order, list[float]]:
    """Cuts of ``order`` meeting ``targets`` (last 1.0), the order as finally used
    (with deferred kernels moved to the end), and the quality at 0 and at each cut."""
    total = len(order[0])
    cache: dict[int, float] = {}  # quality of a prefix; valid for the current order

    def q(k: int) -> float:
        if k not in cache:
            cache[k] = quality_at(order, k)
        return cache[k]

    cuts, lo = [], 0
    for target in targets[:-1]:
        deferred = 0
        while True:
            start, hi = lo, total
            k = start
            while k < hi:  # smallest k with q(k) >= target (bisection)
                mid = (k + hi) // 2
                if q(mid) >= target:
                    hi = mid
                else:
                    k = mid + 1
            jumps_past = k > start and min(q(k) - target, target - q(k - 1)) > tolerance
            if not jumps_past or k == total or deferred == MAX_DEFERRED:
                break
            # The kernel restored at step k-1 carries the level far past its target:
            # leave it for a later level and search again from there.
            j = k - 1
            ids, pos = (np.concatenate([a[:j], a[j + 1 :], a[j : j + 1]]) for a in order)
            order = (ids, pos)
            cache = {i: v for i, v in cache.items() if i <= j}
            lo, deferred = j, deferred + 1
        if k > lo and abs(q(k - 1) - target) < abs(q(k) - target):
            k -= 1  # just below the target is closer than the step above it
        cuts.append(k)
        lo = k
    cuts.append(total)
    # Adjacent levels must differ: two cuts at one kernel would give equal keys.
    cuts = distinct_cuts(cuts, total)
    return cuts, order, [q(0), *(q(k) for k in cuts)]


def _interleaved(layers: Sequence[LayerSelection]) -> tuple[np.ndarray, np.ndarray]:
    """All layers in step (same share restored in each), least important first."""
    ids, pos, keys = [], [], []
    for li, layer in enumerate(layers):
        n = len(layer.kernels)
        p = np.arange(n)[::-1]  # least important first
        ids.append(np.full(n, li))
        pos.append(p)
        keys.append((np.arange(n) + 1) / n)
    order = np.argsort(np.concatenate(keys), kind="stable")
    return np.concatenate(ids)[order], np.concatenate(pos)[order]


def _sensitivity_order(
    layers: Sequence[LayerSelection], sensitivity: Mapping[str, float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Least sensitive layer first, least important kernels first within a layer."""
    sens = sensitivity or {}
    ranked = sorted(range(len(layers)), key=lambda i: sens.get(layers[i].address, 0.0))
    ids = [np.full(len(layers[i].kernels), i) for i in ranked]
    pos = [np.arange(len(layers[i].kernels))[::-1] for i in ranked]
    return np.concatenate(ids), np.concatenate(pos)
