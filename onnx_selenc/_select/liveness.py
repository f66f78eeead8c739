"""Levels that change the outputs: every level must do more than the level below it.

Distinct kernel sets are not distinct models: a kernel can feed a channel nothing
downstream uses (an STFT bin that a mel filterbank weights with zeros, a channel a
ReLU always zeroes), and a level made only of such kernels gives its customer exactly
the level below, or the owner's model. Data-free scores cannot see that, so the fixed
split is checked with forward passes on probe inputs (the calibration inputs, or
random ones of the model's declared shapes, integer inputs valued as the graph reads
them: ``_probe_inputs``) and a level cut that changes nothing moves to the next kernel
that does. The cuts stay in the same global order (``_selection``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx

from onnx_selenc._onnx.graph import ConvWeight
from onnx_selenc._onnx.tensors import kernel_matrix, weight_tensor, write_array
from onnx_selenc._select.masking import MaskedLayer
from onnx_selenc._select.prefix_feeds import PrefixFeeds
from onnx_selenc._select.probe import Probe
from onnx_selenc._select.probe_inputs import IntegerRange, integer_ranges, probe_feeds
from onnx_selenc._select.selection import LayerSelection, Selection, grow_counts
from onnx_selenc.exceptions import BudgetTooSmall, LevelCountWarning

# Unknown dimensions of a probe input are tried at these sizes, smallest that runs.
_DYNAMIC_SIZES = (1, 64, 256, 1024, 16000)
_ELEMENTS_CAP = 1 << 22  # per input: keep each forward pass cheap
GROW_ATTEMPTS = 6  # at most 32x the budget's kernels before giving up with a warning
GROW_LIMIT = 32  # ... and only while the levels hold fewer kernels than this each
# An attempt: the selection of these kernel counts per weight, masked into the model.
Attempt = Callable[[Mapping[str, int]], tuple[Selection, list[MaskedLayer]]]


def select_live(
    model: onnx.ModelProto,
    weights: Mapping[str, ConvWeight],
    arrays: Mapping[str, np.ndarray],
    counts: dict[str, int],
    attempt: Attempt,
    feeds: Mapping[str, np.ndarray] | None,
    *,
    levels: int,
    allow_growth: bool,
) -> tuple[Selection, list[MaskedLayer]]:
    """The selection of ``counts`` kernels, its level cuts where they change the outputs
    (:func:`live_levels`); where no cut can, twice the kernels, and again, until every
    level changes them (a dead-channel model): taken only with ``allow_growth``.

    Args:
        model: the model, masked in place by ``attempt``.
        weights: conv weights by address.
        arrays: the original values of the chosen weights (to undo a masking).
        counts: kernels per weight, as the budget allocated them.
        attempt: selects and masks the given counts.
        feeds: one batch of probe inputs; None: made up (``_probe_inputs``).
        levels: the number of levels.
        allow_growth: encrypt more kernels than the budget chose where the levels need it.

    Raises:
        BudgetTooSmall: the levels change the outputs only with more kernels, and
            ``allow_growth`` is False (the message says how many).
    """
    chosen = [weights[a] for a in arrays]
    first = last = None
    grown = dict(counts)
    for n in range(GROW_ATTEMPTS):
        if last is not None:  # undo the masking, then try with more kernels
            _write(model, weights, last[0], arrays)
        selection, masked = attempt(grown)
        selection, stuck = live_levels(model, weights, selection, masked, feeds)
        last = (selection, masked)
        first = first or (selection, masked, stuck)
        if not stuck:
            break
        # Past GROW_LIMIT kernels a level, a level whose kernels all change nothing is
        # the probe's limit (saturated outputs on random inputs), not dead channels.
        if n == GROW_ATTEMPTS - 1 or _kernels(selection) >= GROW_LIMIT * levels:
            break
        if not grow_counts(grown, chosen):
            break
    assert first is not None and last is not None
    if stuck or last[0] is first[0]:
        if last[0] is not first[0]:  # more kernels did not help: the budget's, as asked
            _write(model, weights, last[0], arrays, first[1])
        if first[2]:
            warnings.warn(
                f"{_names(first[2])} nothing on the probe inputs (the same outputs as "
                "the level below): their kernels feed channels nothing downstream uses; "
                "calibrated levels (CalibratedLevels with calibration inputs) measure "
                "each level",
                UserWarning,
                stacklevel=5,
            )
        return first[0], first[1]
    asked, needed = first[0], last[0]
    share = needed.selected_weights / needed.total_weights
    detail = (
        f"{_names(first[2])} nothing on the probe inputs with the "
        f"{_kernels(asked)} kernels the budget chose ({_percent(asked)} of the conv "
        "weights): their kernels feed channels nothing downstream uses; every level "
        f"changes the outputs with {_kernels(needed)} kernels ({_percent(needed)})"
    )
    if not allow_growth:
        _write(model, weights, needed, arrays)
        raise BudgetTooSmall(detail, _kernels(needed), share)
    warnings.warn(
        f"{detail}: encrypting {_kernels(needed)} kernels", LevelCountWarning, stacklevel=5
    )
    return last


def _write(
    model: onnx.ModelProto,
    weights: Mapping[str, ConvWeight],
    selection: Selection,
    arrays: Mapping[str, np.ndarray],
    masked: Sequence[MaskedLayer] = (),
) -> None:
    """Put the originals back into the selection's weights, then apply ``masked``."""
    for layer in selection.layers:
        write_array(weight_tensor(model, weights[layer.address]), arrays[layer.address])
    for rec in masked:
        values = arrays[rec.address].copy()
        kernel_matrix(values)[rec.kernels] = rec.replacements
        write_array(weight_tensor(model, weights[rec.address]), values)


def _kernels(selection: Selection) -> int:
    return sum(len(layer.kernels) for layer in selection.layers)


def _percent(selection: Selection) -> str:
    return f"{100 * selection.selected_weights / selection.total_weights:.3g}%"


def _names(levels: Sequence[int]) -> str:
    """``level 2 changes`` or ``levels 1, 2 change``: the subject and verb of a message."""
    if len(levels) == 1:
        return f"level {levels[0]} changes"
    return f"levels {', '.join(map(str, levels))} change"


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
        ranges = integer_ranges(model) if feeds is None else {}
        batch = dict(feeds) if feeds is not None else _random_feeds(probe, ranges)
        if batch is None:
            return selection, []
        order = global_order(layers)
        cache: dict[int, list[np.ndarray]] = {}
        feeds_at = PrefixFeeds(probe.base, layers, masked, order).at  # no copy per run

        def outputs(k: int) -> list[np.ndarray]:
            if k not in cache:
                with feeds_at(k) as restored:
                    cache[k] = probe.run(batch, restored)
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


def _random_feeds(probe: Probe, ranges: Mapping[str, IntegerRange]) -> dict[str, np.ndarray] | None:
    """Seeded random inputs of the declared shapes: unknown dimensions at the smallest
    size in ``_DYNAMIC_SIZES`` that the model runs with, or None if none does. Integer
    inputs take the values the graph reads (``ranges``) where the model runs with them,
    else zeros."""
    inputs = [i for i in probe.session.get_inputs() if i.name in probe.data_inputs]
    rng = np.random.default_rng(0)
    for size in _DYNAMIC_SIZES:
        shapes = []
        for meta in inputs:
            shape = [d if isinstance(d, int) and d > 0 else size for d in meta.shape]
            if meta.shape and not (isinstance(meta.shape[0], int) and meta.shape[0] > 0):
                shape[0] = 1  # a batch dimension
            if int(np.prod(shape)) > _ELEMENTS_CAP:
                return None
            shapes.append((meta.name, meta.type, shape))
        for informed in (ranges, None) if ranges or _has_bool(shapes) else (None,):
            feeds = probe_feeds(shapes, informed, rng)
            if feeds is None:
                return None
            try:
                probe.run(feeds, quiet=True)
            except Exception:  # too small for its kernels, or an input it needs otherwise
                continue
            return feeds
    return None


def _has_bool(inputs: list[tuple[str, str, list[int]]]) -> bool:
    return any(kind == "tensor(bool)" for _, kind, _ in inputs)
