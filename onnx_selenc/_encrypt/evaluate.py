"""Evaluation harness: what encrypting with given options would do, over budgets x strategies.

For each strategy (a scorer with an allocation) the scores and, for sensitivity
allocation, the layer curves are computed once; then for each budget the kernels
are chosen and masked exactly as ``encrypt`` does with the same :class:`EncryptOptions`,
and the masked model (level 0) is measured on evaluation inputs. With a
:class:`CalibratedLevels` split, also the per-level quality with levels calibrated to
its targets. Results as a table, CSV, JSON and PNG plots.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_selenc._encrypt.options import CalibratedLevels, EncryptOptions
from onnx_selenc._onnx.files import atomic_write
from onnx_selenc._onnx.graph import walk_conv_weights
from onnx_selenc._onnx.progress import progress
from onnx_selenc._onnx.tensors import read_array, weight_tensor
from onnx_selenc._select.activation import activation_scorer
from onnx_selenc._select.allocation import cap_layer_shares
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.importance import DATA_FREE_SCORERS, score_kernels
from onnx_selenc._select.levels import calibrate_levels
from onnx_selenc._select.masking import kernel_matrix, mask_layer
from onnx_selenc._select.objective import choose_objective, quality
from onnx_selenc._select.probe import Probe
from onnx_selenc._select.selection import (
    allocate_balanced,
    allocate_uniform,
    check_fractions,
    filter_layers,
    select,
)
from onnx_selenc._select.sensitivity import allocate_by_sensitivity, measure_curves

# (plain outputs, test outputs, labels or None) -> quality (higher is better)
Metric = Callable[[Sequence[np.ndarray], Sequence[np.ndarray], np.ndarray | None], float]
DEFAULT_STRATEGIES = (
    "random:uniform",
    "abs-mean:uniform",
    "magnitude:uniform",
    "magnitude:balanced",
    "activation:sensitivity",
)


@dataclass(frozen=True)
class SweepPoint:
    """Quality of the level-0 model for one strategy at one budget."""

    strategy: str
    budget: float
    fraction: float
    quality: float


@dataclass(frozen=True)
class LevelCurve:
    """Quality per level 0..M for one strategy, levels calibrated to targets."""

    strategy: str
    budget: float
    targets: tuple[float, ...]
    quality: tuple[float, ...]


@dataclass(frozen=True)
class SweepResult:
    """Everything one evaluation measured."""

    metric: str
    plain_quality: float
    points: tuple[SweepPoint, ...]
    levels: tuple[LevelCurve, ...]

    def smallest_fraction_reaching(self, threshold: float) -> dict[str, float | None]:
        """Per strategy, the smallest encrypted fraction with quality <= threshold."""
        out: dict[str, float | None] = {}
        for s in dict.fromkeys(p.strategy for p in self.points):
            hits = [p.fraction for p in self.points if p.strategy == s and p.quality <= threshold]
            out[s] = min(hits) if hits else None
        return out


def builtin_metric(name: str, data_range: float = 1.0) -> Metric:
    """``agreement`` (top-1 with the plain model), ``accuracy`` (labels), ``psnr``
    (against labels if given, else the plain output) or ``r2`` (outputs vs plain)."""
    if name == "agreement":
        return lambda plain, test, labels: quality(plain, test, "kl")
    if name == "accuracy":

        def accuracy(
            plain: Sequence[np.ndarray], test: Sequence[np.ndarray], labels: np.ndarray | None
        ) -> float:
            if labels is None:
                raise ValueError("metric 'accuracy' needs labels")
            return float(np.mean(test[0].argmax(axis=1) == labels))

        return accuracy
    if name == "psnr":

        def psnr(
            plain: Sequence[np.ndarray], test: Sequence[np.ndarray], labels: np.ndarray | None
        ) -> float:
            ref = labels if labels is not None else plain[0]
            mse = float(np.mean((test[0].astype(np.float64) - ref) ** 2))
            return float(10 * np.log10(data_range**2 / max(mse, 1e-20)))

        return psnr
    if name == "r2":
        return lambda plain, test, labels: quality(plain, test, "mse")
    raise ValueError(f"unknown metric {name!r} (agreement, accuracy, psnr, r2)")


def sweep(  # noqa: C901
    model: onnx.ModelProto,
    calibration: Calibration,
    evaluation: Calibration,
    *,
    budgets: Sequence[float],
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    options: EncryptOptions | None = None,
    metric: str | Metric = "auto",
    labels: np.ndarray | None = None,
    level_budget: float | None = None,
    layers: Mapping[str, Sequence[str]] | None = None,
    **deprecated: Any,
) -> SweepResult:
    """Measure level-0 quality for every strategy x budget (and levels, if asked).

    Args:
        model: the plain model (data loaded); not modified.
        calibration: unlabelled inputs the data-driven scorers and allocation use.
        evaluation: inputs the quality is measured on.
        budgets: fractions of all conv weights (for ``uniform``: per-layer ratios).
        strategies: ``"<importance>:<allocation>"`` pairs, e.g. ``activation:sensitivity``.
        options: what ``encrypt`` would be given; its ``masking``, ``seed`` (None: 0),
            ``layers``, ``objective`` and ``show_progress`` apply to every point, and a
            :class:`CalibratedLevels` split also calibrates its levels at
            ``level_budget``. Its ``budget``, ``importance`` and ``allocation`` are
            what ``budgets`` and ``strategies`` sweep, so they are not used.
        metric: a name for :func:`builtin_metric`, ``auto``, or a callable; a callable
            used without labels also states the level targets (unless the split
            names its own metric).
        labels: for ``accuracy`` or ``psnr`` against ground truth.
        level_budget: budget for the level curves (default: the largest budget).
        layers: per strategy, glob patterns restricting which conv weights it may
            encrypt (the paper's chosen layers); default ``options.layers``.
        **deprecated: 0.1's ``level_targets``, ``masking``, ``seed`` and
            ``show_progress`` (DeprecationWarning: they go in ``options``).

    Raises:
        TypeError: an unknown keyword, or ``options`` together with 0.1's keywords.
        ValueError: ``options.base`` is set (a base encrypts every kernel unlike its own:
            there is no budget to sweep).
    """
    options = _sweep_options(options, deprecated)
    if options.base is not None:
        raise ValueError(
            "the sweep compares budgets and strategies; a base encrypts every kernel that "
            "differs from it, whatever the budget: encrypt with the base instead"
        )
    masking, show_progress = options.masking, options.show_progress
    seed = 0 if options.seed is None else options.seed
    split = options.split
    level_targets = split.targets if isinstance(split, CalibratedLevels) else None
    inventory = walk_conv_weights(model)
    weights = list(inventory.weights)
    arrays = {w.address: read_array(weight_tensor(model, w), None) for w in weights}
    probe = Probe(model, weights)
    plain = probe.run_all(evaluation)
    if metric == "auto":
        metric = (
            "accuracy"
            if labels is not None
            else ("agreement" if choose_objective(plain) == "kl" else "r2")
        )
    name = metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")
    measure = builtin_metric(metric) if isinstance(metric, str) else metric
    # A label-free metric of the user's is also the quality the level targets are in.
    level_metric = split.metric if isinstance(split, CalibratedLevels) else None
    if level_metric is None and not isinstance(metric, str) and labels is None:
        user_metric = metric

        def level_metric(plain_out: Sequence[np.ndarray], test: Sequence[np.ndarray]) -> float:
            return float(user_metric(plain_out, test, None))

    plain_quality = measure(plain, plain, labels)
    by_address = inventory.by_address()
    ksize = {w.address: w.kernel_size for w in weights}
    points, curves_out = [], []
    all_weights, all_arrays = weights, arrays
    for strategy in strategies:
        importance, _, allocation = strategy.partition(":")
        rng = np.random.default_rng(seed)
        weights = filter_layers(all_weights, (layers or {}).get(strategy) or options.layers)
        arrays = {w.address: all_arrays[w.address] for w in weights}
        if importance in DATA_FREE_SCORERS:
            scores = {
                k: score_kernels(kernel_matrix(a), importance, rng) for k, a in arrays.items()
            }
        elif importance == "activation":
            scores = activation_scorer(calibration)(model, weights, arrays)
        elif importance == "pss":
            from onnx_selenc._select.pss import pss_scorer

            scores = pss_scorer(
                calibration, objective=options.objective, seed=seed, show_progress=show_progress
            )(model, weights, arrays)
        else:
            raise ValueError(f"unknown importance {importance!r} in strategy {strategy!r}")
        curves = None
        if allocation == "sensitivity":
            curves, _ = measure_curves(
                model,
                weights,
                arrays,
                scores,
                calibration,
                masking=masking,
                seed=seed,
                show_progress=show_progress,
            )

        def counts_for(
            budget: float,
            allocation: str = allocation,
            curves: Mapping | None = curves,
            strategy: str = strategy,
            weights: list = weights,
        ) -> dict[str, int]:
            if allocation == "uniform":
                return allocate_uniform(weights, budget)
            target = max(1, round(budget * inventory.total_weights))
            if allocation == "sensitivity":
                assert curves is not None
                return cap_layer_shares(allocate_by_sensitivity(curves, ksize, target), weights)
            if allocation == "balanced":  # as encrypt allocates (its secret jitter too)
                return allocate_balanced(weights, target, np.random.default_rng([seed, 1]))
            raise ValueError(f"unknown allocation {allocation!r} in strategy {strategy!r}")

        def masked_at(
            budget: float,
            levels: int = 1,
            counts_for: Callable = counts_for,
            scores: Mapping = scores,
            arrays: Mapping = arrays,
        ) -> tuple:
            selection = select(
                scores,
                counts_for(budget),
                levels=levels,
                fractions=check_fractions(levels, None),
                order="most-important-first",
                total_weights=inventory.total_weights,
                kernel_sizes=ksize,
            )
            mrng = np.random.default_rng(seed + 1)
            masked, values = [], {}
            for layer in selection.layers:
                new, record = mask_layer(
                    layer.address, arrays[layer.address], layer.kernels, mrng, masking
                )
                masked.append(record)
                values[layer.address] = new
            return selection, masked, values

        for budget in progress(budgets, desc=strategy, enabled=show_progress):
            selection, _, values = masked_at(budget)
            q = measure(plain, probe.run_all(evaluation, values), labels)
            points.append(SweepPoint(strategy, float(budget), selection.fraction, q))
        if level_targets is not None:
            budget = level_budget if level_budget is not None else max(budgets)
            levels = len(level_targets)
            selection, masked, values = masked_at(budget, levels)
            masked_model = _with_values(model, by_address, values)
            selection, _ = calibrate_levels(
                masked_model,
                by_address,
                selection,
                masked,
                calibration,
                level_targets,
                layer_sensitivity={k: c.per_weight for k, c in curves.items()} if curves else None,
                metric=level_metric,
            )
            per_level = []
            for m in range(levels + 1):
                restored = {}
                for layer, record in zip(selection.layers, masked, strict=True):
                    mat = kernel_matrix(values[layer.address]).copy()
                    back = layer.restore_level <= m
                    mat[layer.kernels[back]] = record.originals[back]
                    restored[layer.address] = mat.reshape(values[layer.address].shape)
                per_level.append(measure(plain, probe.run_all(evaluation, restored), labels))
            curves_out.append(
                LevelCurve(strategy, float(budget), tuple(level_targets), tuple(per_level))
            )
    return SweepResult(name, plain_quality, tuple(points), tuple(curves_out))


def _sweep_options(options: EncryptOptions | None, deprecated: dict[str, Any]) -> EncryptOptions:
    """The sweep's options, or those 0.1's keywords describe (with a DeprecationWarning)."""
    if not deprecated:
        return options if options is not None else EncryptOptions()
    unknown = sorted(set(deprecated) - {"level_targets", "masking", "seed", "show_progress"})
    if unknown:
        raise TypeError(f"sweep() got unknown keyword(s): {', '.join(unknown)}")
    if options is not None:
        raise TypeError(f"give options= or {', '.join(sorted(deprecated))}, not both")
    warnings.warn(
        "sweep(level_targets=..., masking=..., seed=..., show_progress=...) is deprecated: "
        "pass options=EncryptOptions(...)",
        DeprecationWarning,
        stacklevel=3,
    )
    targets = deprecated.pop("level_targets", None)
    if targets is not None:
        return EncryptOptions(
            levels=len(targets), split=CalibratedLevels(tuple(targets)), **deprecated
        )
    return EncryptOptions(**{"seed": 0, **deprecated})


def _with_values(
    model: onnx.ModelProto, by_address: Mapping, values: Mapping[str, np.ndarray]
) -> onnx.ModelProto:
    from onnx_selenc._onnx.tensors import write_array

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for address, v in values.items():
        write_array(weight_tensor(copy, by_address[address]), v)
    return copy


def format_table(result: SweepResult, chance: float | None = None) -> str:
    """Markdown table: one row per budget, one column per strategy."""
    strategies = list(dict.fromkeys(p.strategy for p in result.points))
    budgets = sorted({p.budget for p in result.points})
    lines = [
        f"| budget | {' | '.join(strategies)} |",
        "| ---: | " + " | ".join("---:" for _ in strategies) + " |",
    ]
    at = {(p.strategy, p.budget): p for p in result.points}
    for b in budgets:
        cells = []
        for s in strategies:
            p = at.get((s, b))
            cells.append("" if p is None else f"{p.quality:.3f} ({100 * p.fraction:.3g}%)")
        lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
    lines.append(
        f"\n{result.metric} of the plain model: {result.plain_quality:.3f}; cells: "
        f"{result.metric} of the encrypted model (level 0) and the fraction of all "
        "conv weights actually encrypted."
    )
    if chance is not None:
        smallest = result.smallest_fraction_reaching(chance)
        lines += [
            "",
            f"| strategy | smallest fraction with {result.metric} <= {chance:g} |",
            "| --- | ---: |",
        ]
        for s, f in smallest.items():
            lines.append(f"| {s} | {'not reached' if f is None else f'{100 * f:.3g}%'} |")
    for c in result.levels:
        lines += [
            "",
            f"{c.strategy} at budget {c.budget:g}, levels calibrated to targets "
            f"{list(c.targets)}: " + ", ".join(f"L{m} {q:.3f}" for m, q in enumerate(c.quality)),
        ]
    return "\n".join(lines)


def write_outputs(
    result: SweepResult,
    out_dir: str | os.PathLike[str],
    *,
    title: str = "",
    chance: float | None = None,
) -> list[Path]:
    """Write ``sweep.csv``, ``sweep.json`` and PNG plots into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["strategy", "budget", "fraction", result.metric])
    for p in result.points:
        writer.writerow([p.strategy, p.budget, f"{p.fraction:.8f}", f"{p.quality:.6f}"])
    atomic_write(out / "sweep.csv", buf.getvalue().encode())
    atomic_write(
        out / "sweep.json",
        json.dumps(
            {
                "metric": result.metric,
                "plain_quality": result.plain_quality,
                "points": [asdict(p) for p in result.points],
                "levels": [asdict(c) for c in result.levels],
            },
            indent=2,
        ).encode(),
    )
    written = [out / "sweep.csv", out / "sweep.json"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in dict.fromkeys(p.strategy for p in result.points):
        pts = sorted((p.fraction, p.quality) for p in result.points if p.strategy == s)
        ax.plot([100 * f for f, _ in pts], [q for _, q in pts], "o-", label=s)
    ax.axhline(result.plain_quality, color="g", ls="--", lw=1, label="plain model")
    if chance is not None:
        ax.axhline(chance, color="r", ls=":", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("% of conv weights encrypted")
    ax.set_ylabel(result.metric)
    ax.set_title(title or "quality vs encrypted fraction")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=120)
    plt.close(fig)
    written.append(out / "sweep.png")
    if result.levels:
        fig, ax = plt.subplots(figsize=(6, 4))
        for c in result.levels:
            ax.plot(range(len(c.quality)), c.quality, "o-", label=c.strategy)
        ax.axhline(result.plain_quality, color="g", ls="--", lw=1, label="plain model")
        ax.set_xlabel("level")
        ax.set_ylabel(result.metric)
        ax.set_title((title + ": " if title else "") + "quality per level")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "levels.png", dpi=120)
        plt.close(fig)
        written.append(out / "levels.png")
    return written
