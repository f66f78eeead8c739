"""Levels that change the outputs: every level must do more than the level below it.

Distinct kernel sets are not distinct models: a kernel can feed a channel nothing
downstream uses (an STFT bin that a mel filterbank weights with zeros, a channel a
ReLU always zeroes), and a level made only of such kernels gives its customer exactly
the level below, or the owner's model. Data-free scores cannot see that, so the fixed
split is checked with forward passes on probe inputs (the calibration inputs, or
random ones of the model's declared shapes) and a level cut that changes nothing moves
to the next kernel that does. The cuts stay in the same global order (``_selection``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx

from onnx_selenc._onnx.graph import ConvWeight
from onnx_selenc._onnx.ort_types import FLOAT_TYPES, ort_dtype
from onnx_selenc._select.levels import prefix_restored
from onnx_selenc._select.masking import MaskedLayer
from onnx_selenc._select.probe import Probe
from onnx_selenc._select.selection import LayerSelection, Selection

# Unknown dimensions of a probe input are tried at these sizes, smallest that runs.
_DYNAMIC_SIZES = (1, 64, 256, 1024, 16000)
_ELEMENTS_CAP = 1 << 22  # per input: keep each forward pass cheap


def global_order(layers: Sequence[LayerSelection]) -> tuple[np.ndarray, np.ndarray]:
    """``(layer index, position)`` of every chosen kernel in restore order: by level,
    then by relative rank within its layer (the order the fixed split cut)."""
    ids = np.concatenate([np.full(len(layer.kernels), i) for i, layer in enumerate(layers)])
    pos = np.concatenate([np.arange(len(layer.kernels)) for layer in layers])
    size = np.concatenate([np.full(len(layer.kernels), len(layer.kernels)) for layer in layers])
    level = np.concatenate([layer.restore_level for layer in layers])
    order = np.lexsort(((pos + 0.5) / size, level))
    return ids[order], pos[order]


def live_levels(
    model: onnx.ModelProto,
    weights: Mapping[str, ConvWeight],
    selection: Selection,
    masked: Sequence[MaskedLayer],
    feeds: Mapping[str, np.ndarray] | None,
) -> tuple[Selection, list[int]]:
    """The selection with its level cuts moved where a level would change nothing.

    Args:
        model: the masked model (selected kernels hold their random values).
        weights: conv weights by address.
        selection: the fixed split.
        masked: originals and replacements, aligned with ``selection.layers``.
        feeds: one batch of probe inputs; None: random inputs of the declared shapes.

    Returns:
        The selection (unchanged when every level already changes the outputs, or when
        the model cannot be probed: then nothing is known and nothing is moved), and the
        levels that still change nothing (more kernels are needed).
    """
    layers = selection.layers
    try:
        probe = Probe(model, [weights[layer.address] for layer in layers])
        batch = dict(feeds) if feeds is not None else _random_feeds(probe)
        if batch is None:
            return selection, []
        order = global_order(layers)
        cache: dict[int, list[np.ndarray]] = {}

        def outputs(k: int) -> list[np.ndarray]:
            if k not in cache:
                cache[k] = probe.run(batch, prefix_restored(probe.base, layers, masked, order, k))
            return cache[k]

        total = len(order[0])
        cuts = [int(np.count_nonzero(_levels(layers) <= m)) for m in range(1, selection.levels)]
        new_cuts, stuck = _live_cuts(cuts, total, lambda a, b: _differ(outputs(a), outputs(b)))
    except Exception:  # a model the probe cannot run (inputs it cannot guess): no claim
        return selection, []
    if new_cuts == cuts:
        return selection, stuck
    level_of = np.searchsorted(np.asarray([*new_cuts, total]), np.arange(total), "right") + 1
    ids, pos = order
    restore = [np.empty(len(layer.kernels), dtype=np.int16) for layer in layers]
    for li, levels in enumerate(restore):
        mine = ids == li
        levels[pos[mine]] = level_of[mine]
    new_layers = tuple(
        LayerSelection(layer.address, layer.kernels, r)
        for layer, r in zip(layers, restore, strict=True)
    )
    return (
        Selection(
            new_layers, selection.levels, selection.selected_weights, selection.total_weights
        ),
        stuck,
    )


def _live_cuts(
    cuts: list[int], total: int, differ: Callable[[int, int], bool]
) -> tuple[list[int], list[int]]:
    """Cuts 1..M-1 (kernels restored at each level below the top) moved so that each
    level's outputs differ from the level below; returns them and the levels that could
    not be separated. ``differ(a, b)``: outputs with ``a`` and ``b`` kernels differ.

    Forward, a cut moves to the first kernel that changes the outputs from the level
    below (past it they stay changed: bisection). Backward, from the top, a cut whose
    level above changes nothing moves back to the last kernel after which the outputs
    still differ from that level's. Either pass only moves a cut that needs it.
    """
    out: list[int] = []
    prev = 0
    for m, want in enumerate(cuts, start=1):
        room = total - (len(cuts) - m)  # later levels need a kernel each
        k = min(max(want, prev + 1), room)
        if not differ(prev, k) and differ(prev, room):
            k = _first(functools.partial(differ, prev), k, room)
        out.append(k)
        prev = k
    # Backward: a level whose kernels change nothing takes kernels from the one below.
    bounds = [0, *out, total]
    for m in range(len(out), 0, -1):
        above = bounds[m + 1]
        hi = min(bounds[m], above - 1)
        # m: the lowest cut that still leaves a kernel to each level below.
        if not differ(hi, above) and differ(m, above):
            hi = _last(_differs_from(differ, above), m, hi)
        bounds[m] = hi
    stuck = [m for m in range(1, len(bounds)) if not differ(bounds[m - 1], bounds[m])]
    return bounds[1:-1], stuck


def _differs_from(differ: Callable[[int, int], bool], top: int) -> Callable[[int], bool]:
    return lambda j: differ(j, top)


def _first(holds: Callable[[int], bool], lo: int, hi: int) -> int:
    """Smallest j in (lo, hi] with ``holds(j)``, given not holds(lo), holds(hi), monotone."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if holds(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _last(holds: Callable[[int], bool], lo: int, hi: int) -> int:
    """Largest j in [lo, hi) with ``holds(j)``, given holds(lo), not holds(hi), monotone."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if holds(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _levels(layers: Sequence[LayerSelection]) -> np.ndarray:
    return np.concatenate([layer.restore_level for layer in layers])


def _differ(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return any(
        x.shape != y.shape or not np.array_equal(x, y, equal_nan=True)
        for x, y in zip(a, b, strict=True)
    )


def _random_feeds(probe: Probe) -> dict[str, np.ndarray] | None:
    """Seeded random inputs of the declared shapes: unknown dimensions at the smallest
    size in ``_DYNAMIC_SIZES`` that the model runs with, or None if none does."""
    inputs = [i for i in probe.session.get_inputs() if i.name in probe.data_inputs]
    rng = np.random.default_rng(0)
    for size in _DYNAMIC_SIZES:
        feeds = {}
        for meta in inputs:
            shape = [d if isinstance(d, int) and d > 0 else size for d in meta.shape]
            if meta.shape and not (isinstance(meta.shape[0], int) and meta.shape[0] > 0):
                shape[0] = 1  # a batch dimension
            if int(np.prod(shape)) > _ELEMENTS_CAP:
                return None
            feeds[meta.name] = _random(meta.type, shape, rng)
            if feeds[meta.name] is None:
                return None
        try:
            probe.run(feeds, quiet=True)  # type: ignore[arg-type]
        except Exception:  # too small for its kernels, or an input it needs otherwise
            continue
        return feeds  # type: ignore[return-value]
    return None


def _random(kind: str, shape: list[int], rng: np.random.Generator) -> np.ndarray | None:
    dtype = ort_dtype(kind)
    if kind in FLOAT_TYPES:
        return rng.standard_normal(shape).astype(dtype)
    if kind in ("tensor(int64)", "tensor(int32)", "tensor(bool)"):
        return np.zeros(shape, dtype=dtype)
    if kind == "tensor(uint8)":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return None
