"""Budget allocation by measured layer sensitivity (forward passes, no labels).

For each layer, mask its most important kernels at a few sizes and measure how far
the outputs move from the plain model's (a bounded damage in [0, 1)). That gives
each layer a damage-versus-weights curve. A global budget then goes, greedily, to
the steepest pieces of those curves (their upper concave hulls): the weights that
hurt the model most per weight encrypted, wherever they are. Early layers are often
orders of magnitude more sensitive per weight than late ones; a uniform per-layer
ratio wastes most of its budget.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_selenc._onnx.graph import ConvWeight
from onnx_selenc._onnx.progress import progress
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.masking import dprm_values, kernel_matrix
from onnx_selenc._select.objective import choose_objective, damage
from onnx_selenc._select.probe import Probe

PROBE_FRACTIONS = (1 / 128, 1 / 16, 1 / 4, 1.0)


@dataclass(frozen=True)
class LayerCurve:
    """Measured damage of masking the top-k kernels of one layer, for a few k."""

    address: str
    kernels: tuple[int, ...]
    weights: tuple[int, ...]
    damage: tuple[float, ...]

    @property
    def per_weight(self) -> float:
        """Damage per encrypted weight at the smallest probe (the layer's sensitivity)."""
        return self.damage[0] / self.weights[0]


def measure_curves(
    model: onnx.ModelProto,
    chosen: Sequence[ConvWeight],
    arrays: Mapping[str, np.ndarray],
    scores: Mapping[str, np.ndarray],
    calibration: Calibration,
    *,
    objective: str = "auto",
    masking: str = "empirical",
    fractions: Sequence[float] = PROBE_FRACTIONS,
    seed: int = 0,
    max_samples: int = 32,
    show_progress: bool = False,
) -> tuple[dict[str, LayerCurve], str]:
    """Probe every chosen layer; returns the curves and the objective used."""
    # Damage is an average over samples; a few dozen estimate it well and keep this fast.
    if calibration.n > max_samples:
        calibration = calibration.take(np.linspace(0, calibration.n - 1, max_samples).astype(int))
    plain = Probe(model, []).run_all(calibration)
    obj = choose_objective(plain, objective)
    rng = np.random.default_rng(seed)
    curves = {}
    for w in progress(chosen, desc="sensitivity", enabled=show_progress):
        # One weight as an input at a time: the others stay constant, so ONNX Runtime
        # keeps its pre-packed weights and fusions (several times faster than all at once).
        probe = Probe(model, [w])
        n = w.n_kernels
        ks = sorted({int(min(n, max(1, np.ceil(f * n)))) for f in fractions})
        order = np.argsort(-scores[w.address], kind="stable")
        base = kernel_matrix(arrays[w.address])
        replacement = dprm_values(base, order[: ks[-1]], rng, masking)
        measured = []
        for k in ks:
            masked = base.copy()
            masked[order[:k]] = replacement[:k]
            out = probe.run_all(calibration, {w.address: masked.reshape(arrays[w.address].shape)})
            measured.append(damage(plain, out, obj))
        curves[w.address] = LayerCurve(
            w.address, tuple(ks), tuple(k * w.kernel_size for k in ks), tuple(measured)
        )
    return curves, obj


def allocate_by_sensitivity(
    curves: Mapping[str, LayerCurve], kernel_sizes: Mapping[str, int], budget_weights: int
) -> dict[str, int]:
    """Spend ``budget_weights`` on the steepest hull pieces of the layers' curves."""
    pieces = []  # (slope, address, from_weights, to_weights)
    for address, c in curves.items():
        for (w0, d0), (w1, d1) in _hull([(0, 0.0), *zip(c.weights, c.damage, strict=True)]):
            pieces.append(((d1 - d0) / (w1 - w0), address, w0, w1))
    # Steepest first; ties (e.g. saturated, flat pieces) go to the cheaper piece first.
    pieces.sort(key=lambda p: (-p[0], p[3] - p[2]))
    spent = dict.fromkeys(curves, 0)
    left = int(budget_weights)
    for _, address, w0, w1 in pieces:
        if left <= 0:
            break
        if spent[address] != w0:
            continue  # pieces of one layer are taken in order (the hull is concave)
        take = min(w1 - w0, left)
        spent[address] += take
        left -= take
    counts = {address: round(w / kernel_sizes[address]) for address, w in spent.items()}
    if not any(counts.values()):
        best = max(curves, key=lambda k: curves[k].per_weight)
        counts[best] = 1
    return counts


def _hull(points: Sequence[tuple[int, float]]) -> list[tuple[tuple[int, float], tuple[int, float]]]:
    """Segments of the upper concave hull of a curve through (0, 0)."""
    hull: list[tuple[int, float]] = []
    for p in sorted(points):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # Drop the middle point if it lies on or below the chord.
            if (y2 - y1) * (p[0] - x1) <= (p[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(p)
    return list(itertools.pairwise(hull))


class SensitivityAllocator:
    """A CountProvider for ``encrypt_model`` that keeps the measured curves."""

    def __init__(
        self,
        calibration: Calibration,
        *,
        objective: str = "auto",
        masking: str = "empirical",
        seed: int = 0,
        show_progress: bool = False,
    ) -> None:
        self.calibration, self.objective = calibration, objective
        self.masking, self.seed, self.show_progress = masking, seed, show_progress
        self.curves: dict[str, LayerCurve] = {}

    def __call__(
        self,
        model: onnx.ModelProto,
        chosen: Sequence[ConvWeight],
        arrays: Mapping[str, np.ndarray],
        scores: Mapping[str, np.ndarray],
        budget_weights: int,
    ) -> dict[str, int]:
        self.curves, self.objective = measure_curves(
            model,
            chosen,
            arrays,
            scores,
            self.calibration,
            objective=self.objective,
            masking=self.masking,
            seed=self.seed,
            show_progress=self.show_progress,
        )
        return allocate_by_sensitivity(
            self.curves, {w.address: w.kernel_size for w in chosen}, budget_weights
        )
