"""The value grid a layer's weights lie on: bfloat16, float16 or integer steps.

A float32 tensor often holds values of a coarser format: a model trained or shipped in
bf16 or fp16, or fake-quantised (int8 steps: a per-tensor or per-output-channel scale
times integers). A replacement value off that grid marks its kernel as masked to anyone
who reads the bits, so :mod:`masking` snaps its draws onto the grid found here.

:func:`find_grid` looks at every weight of the layer (the grid is how the model was
stored, which the originals share). Integer dtypes are their own grid (masking rounds
them); a float layer on no coarser grid gets :data:`FULL`, which snaps nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["FULL", "StepGrid", "ValueGrid", "find_grid", "round_bf16", "round_fp16"]

MAX_LEVEL = 1 << 15  # per-tensor steps: integers up to int16
MAX_GROUP_LEVEL = 1 << 12  # per-channel steps: a table per channel, so fewer levels
MAX_TABLE = 1 << 22  # channels x levels in one table (32 MiB of float64)
_ROWS = 1 << 14  # rows per chunk for the whole-layer checks (bounded temporaries)
_PROBE_GROUPS = 4  # channels tried before all of them: a full-precision layer fails fast
_DIVISORS = (1, 2, 3, 4)  # the smallest gap between two values may span a few steps
_MIN_VALUES = 8  # values per group, at least, before a step is believed
_HEAD = 256  # values of a group checked before the rest (most layers fail there)


def round_bf16(values: np.ndarray) -> np.ndarray:
    """Round to the nearest bfloat16 (ties to even), returned as float64."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    one, half = np.uint64(1), np.uint64(0x7FFF)
    bits = (bits + half + ((bits >> np.uint64(16)) & one)) & np.uint64(0xFFFF0000)
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def round_fp16(values: np.ndarray) -> np.ndarray:
    """Round to the nearest float16 (inside its finite range), returned as float64."""
    clipped = np.clip(values, -65504.0, 65504.0)
    return clipped.astype(np.float16).astype(np.float64)


def is_bf16(values: np.ndarray) -> np.ndarray:
    """Which values a bfloat16 holds exactly."""
    with np.errstate(over="ignore", invalid="ignore"):
        single = np.asarray(values).astype(np.float32)
    exact = single == values
    return exact & ((np.ascontiguousarray(single).view(np.uint32) & 0xFFFF) == 0)


def is_fp16(values: np.ndarray) -> np.ndarray:
    """Which values a float16 holds exactly."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(values).astype(np.float16).astype(np.float64) == values


@dataclass(frozen=True)
class StepGrid:
    """Weights that are ``step[g] * n`` for integers ``lo[g] <= n <= hi[g]``.

    ``g`` is a kernel row's group (one for a per-tensor scale, the output channel for a
    per-channel one). ``table[g, n - base]`` is the value the tensor stores for level
    ``n``: the stored one where the layer has it, so replacements match bit for bit.

    Attributes:
        group: ``(n_rows,)`` the group of each kernel row.
        step: ``(G,)`` the step of each group.
        lo: ``(G,)`` lowest level of each group.
        hi: ``(G,)`` highest level of each group.
        base: the level of the table's first column.
        table: ``(G, span)`` stored values of the levels.
    """

    group: np.ndarray
    step: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    base: int
    table: np.ndarray

    def _levels(self, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = self.group[rows][:, None]
        return g, np.rint(values / self.step[g])

    def snap(self, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The stored value of the level nearest each value (inside the group's range)."""
        g, n = self._levels(values, rows)
        n = np.clip(n, self.lo[g], self.hi[g]).astype(np.int64)
        return self.table[g, n - self.base]

    def contains(self, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Which values are exactly a level's stored value."""
        g, n = self._levels(values, rows)
        inside = (n >= self.lo[g]) & (n <= self.hi[g])
        n = np.clip(n, self.lo[g], self.hi[g]).astype(np.int64)
        return inside & (self.table[g, n - self.base] == values)

    def bounds(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(n_rows, 1)`` lowest and highest value of each row's group."""
        g = self.group[rows]
        return (
            self.table[g, self.lo[g] - self.base][:, None],
            self.table[g, self.hi[g] - self.base][:, None],
        )

    def neighbour(self, values: np.ndarray, rows: np.ndarray, up: np.ndarray) -> np.ndarray:
        """The next level up (``up``) or down from each 1-D value, or the other way at the
        group's edge."""
        g = self.group[rows]
        n = np.rint(values / self.step[g]) + np.where(up, 1, -1)
        n = np.where((n < self.lo[g]) | (n > self.hi[g]), n - 2 * np.where(up, 1, -1), n)
        n = np.clip(n, self.lo[g], self.hi[g]).astype(np.int64)
        return self.table[g, n - self.base]


@dataclass(frozen=True)
class ValueGrid:
    """What every weight of a float layer is representable in.

    Attributes:
        bf16: every weight is a bfloat16 value.
        fp16: every weight is a float16 value.
        steps: every weight is an integer multiple of a (per-tensor or per-channel) step.
    """

    bf16: bool = False
    fp16: bool = False
    steps: StepGrid | None = None

    @property
    def coarse(self) -> bool:
        """Whether the layer is on a grid coarser than its dtype."""
        return self.bf16 or self.fp16 or self.steps is not None

    def snap(self, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Round ``(len(rows), width)`` float64 values of kernel rows ``rows`` onto the grid."""
        if self.steps is not None:
            return self.steps.snap(values, rows)  # its table already honours bf16 / fp16
        if self.bf16:
            values = round_bf16(values)
        if self.fp16:
            values = round_fp16(values)
        return values

    def contains(self, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Which of the values of kernel rows ``rows`` lie on the grid."""
        inside = np.ones(values.shape, dtype=bool)
        if self.steps is not None:
            inside &= self.steps.contains(values, rows)
        if self.bf16:
            inside &= is_bf16(values)
        if self.fp16:
            inside &= is_fp16(values)
        return inside

    def bounds(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The range each row's values must stay in (integer steps have a top level)."""
        return None if self.steps is None else self.steps.bounds(rows)

    def neighbour(self, values: np.ndarray, rows: np.ndarray, up: np.ndarray) -> np.ndarray:
        """Another grid value next to each 1-D float64 value: above it where ``up``.

        Only for a coarse grid (a full-precision layer steps in its own dtype).
        """
        if self.steps is not None:
            return self.steps.neighbour(values, rows, up)
        direction = np.where(up, 1.0, -1.0)
        if self.bf16:
            # One bf16 step is 2**16 float32 steps (the next bf16 value, or the one after).
            ulp = np.spacing(np.abs(values).astype(np.float32)).astype(np.float64) * 65536.0
            return self.snap(values + direction * ulp, rows)
        half = values.astype(np.float16)
        return np.nextafter(half, (direction * np.inf).astype(np.float16)).astype(np.float64)


FULL = ValueGrid()


def find_grid(kernels: np.ndarray, axes: tuple[int, int] | None = None) -> ValueGrid:
    """The coarsest grid every weight of a float layer lies on.

    Args:
        kernels: ``(n_kernels, kernel_size)`` values of one layer.
        axes: the weight's first two dimensions (kernel row ``r`` is ``(r // axes[1],
            r % axes[1])``): a per-channel scale is looked for along each; ``None``
            looks for a per-tensor scale only.

    Returns:
        The grid; :data:`FULL` for an integer dtype or a full-precision float layer.
    """
    if not np.issubdtype(kernels.dtype, np.floating) or kernels.size == 0:
        return FULL
    bf16 = _every_row(kernels, is_bf16)
    fp16 = kernels.dtype == np.float16 or _every_row(kernels, is_fp16)
    steps = _find_steps(kernels, axes, bf16, fp16)
    return ValueGrid(bf16=bf16, fp16=fp16, steps=steps)


def _every_row(kernels: np.ndarray, holds: Callable[[np.ndarray], np.ndarray]) -> bool:
    """Whether ``holds`` is true of every value, checked a chunk of rows at a time."""
    return all(bool(np.all(holds(kernels[i : i + _ROWS]))) for i in range(0, len(kernels), _ROWS))


def _find_steps(
    kernels: np.ndarray, axes: tuple[int, int] | None, bf16: bool, fp16: bool
) -> StepGrid | None:
    """A per-tensor step, else a per-channel one along either of ``axes``."""
    n = len(kernels)
    layouts = [(np.zeros(n, dtype=np.int64), 1, MAX_LEVEL)]
    if axes is not None and axes[0] * axes[1] == n and n > 1:
        rows = np.arange(n, dtype=np.int64)
        layouts += [(rows // axes[1], axes[0], MAX_GROUP_LEVEL)]
        layouts += [(rows % axes[1], axes[1], MAX_GROUP_LEVEL)]
    for group, n_groups, max_level in layouts:
        # A channel of a few values fits some step by chance: ask for enough of them.
        if kernels.size >= _MIN_VALUES * n_groups:
            grid = _steps_for(kernels, group, n_groups, max_level, bf16, fp16)
            if grid is not None:
                return grid
    return None


def _grouped(kernels: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """``(n_groups, values per group)``: each group's values in one row (the kernels' dtype)."""
    order = np.argsort(group, kind="stable")
    return kernels[order].reshape(n_groups, -1)


def _steps_for(
    kernels: np.ndarray,
    group: np.ndarray,
    n_groups: int,
    max_level: int,
    bf16: bool,
    fp16: bool,
) -> StepGrid | None:
    """The step grid of one layout, or None when some group is on no step grid.

    A probe first (a few channels, or the first rows of a per-tensor layout): a
    full-precision layer fails it without a float64 copy of the whole layer.
    """
    if not _probe_passes(kernels, group, n_groups, max_level):
        return None
    stored = _grouped(kernels, group, n_groups)
    step = _group_steps(stored, max_level)
    if step is None:
        return None
    values = stored.astype(np.float64)
    levels = np.rint(values / step[:, None]).astype(np.int64)
    lo, hi = levels.min(axis=1), levels.max(axis=1)
    base, span = int(lo.min()), int(hi.max() - lo.min()) + 1
    if n_groups * span > MAX_TABLE:
        return None
    step = _exact_step(values, levels, step, kernels.dtype)
    table = _level_table(values, levels, step, base, span, kernels.dtype, bf16, fp16)
    return StepGrid(group, step, lo, hi, base, table)


def _probe_passes(kernels: np.ndarray, group: np.ndarray, n_groups: int, max_level: int) -> bool:
    """Whether a part of the layer is on a step grid of this layout (a necessary test)."""
    if n_groups == 1:
        probe = kernels[:_ROWS].reshape(1, -1)
    else:
        few = min(_PROBE_GROUPS, n_groups)
        inside = group < few
        probe = _grouped(kernels[inside], group[inside], few)
    return _group_steps(probe, max_level) is not None


def _group_steps(stored: np.ndarray, max_level: int) -> np.ndarray | None:
    """Each row's step: values are integer multiples of it (up to ``max_level``), else None.

    The candidate is the smallest gap between two distinct magnitudes (or the smallest
    magnitude), or a small fraction of it; a least-squares fit then refines it.

    Args:
        stored: ``(groups, values)`` in the layer's own float dtype (sorted as they are,
            half the work of sorting their float64 copies, which order the same).
        max_level: the largest level allowed.
    """
    mags = np.sort(np.abs(stored), axis=1).astype(np.float64)
    values = stored.astype(np.float64)
    gaps = np.diff(mags, axis=1)
    smallest = np.where(mags > 0, mags, np.inf).min(axis=1)
    gap = np.where(gaps > 0, gaps, np.inf).min(axis=1) if gaps.shape[1] else smallest
    candidate = np.minimum(gap, smallest)
    candidate = np.where(np.isfinite(candidate), candidate, 1.0)  # an all-zero group
    found = np.full(len(values), np.nan)
    for divisor in _DIVISORS:
        todo = np.isnan(found)
        if not todo.any():
            break
        rows = values[todo]
        step = candidate[todo] / divisor
        levels = np.rint(rows / step[:, None])
        fit = np.sum(rows * levels, axis=1) / np.maximum(np.sum(levels**2, axis=1), 1)
        fit = np.where(fit > 0, fit, step)
        ok = _on_steps(rows, fit, max_level)
        idx = np.flatnonzero(todo)[ok]
        found[idx] = fit[ok]
    return None if np.isnan(found).any() else found


def _on_steps(values: np.ndarray, step: np.ndarray, max_level: int) -> np.ndarray:
    """Which rows are integer multiples of their step (within rounding), up to ``max_level``.

    The first ``_HEAD`` values of each row are checked first: they rule out nearly every
    row of a full-precision layer without a pass over the whole row.
    """
    ok = np.ones(len(values), dtype=bool)
    for part in (slice(0, _HEAD), slice(_HEAD, None)):
        rows = np.flatnonzero(ok)
        if not rows.size or not values[:, part].size:
            break
        chunk, size = values[rows, part], step[rows, None]
        levels = np.rint(chunk / size)
        good = np.all(
            np.abs(chunk / size - levels) <= 1e-6 * np.maximum(np.abs(levels), 1) + 1e-9, axis=1
        )
        ok[rows] = good & (np.abs(levels).max(axis=1) <= max_level)
    return ok


def _exact_step(
    values: np.ndarray, levels: np.ndarray, step: np.ndarray, dtype: np.dtype
) -> np.ndarray:
    """The dtype-representable step nearest the fit that reproduces the most stored values
    (``dtype(step * n)`` is how a quantiser writes them): a few ulps around it are tried."""
    base = step.astype(dtype)
    best, best_misses = step, np.full(len(step), np.inf)
    for shift in (0, 1, -1, 2, -2):
        cand = base
        for _ in range(abs(shift)):
            cand = np.nextafter(cand, np.inf if shift > 0 else -np.inf).astype(dtype)
        made = (cand.astype(np.float64)[:, None] * levels).astype(dtype).astype(np.float64)
        misses = np.sum(made != values, axis=1)
        better = misses < best_misses
        best = np.where(better, cand.astype(np.float64), best)
        best_misses = np.where(better, misses, best_misses)
    return best


def _level_table(
    values: np.ndarray,
    levels: np.ndarray,
    step: np.ndarray,
    base: int,
    span: int,
    dtype: np.dtype,
    bf16: bool,
    fp16: bool,
) -> np.ndarray:
    """``(G, span)`` stored value per level: the layer's own where present, else the
    quantiser's product; a product off the layer's bf16 / fp16 grid takes the nearest
    usable level's value instead."""
    n = np.arange(base, base + span, dtype=np.float64)
    table = (step[:, None] * n).astype(dtype).astype(np.float64)
    rows = np.repeat(np.arange(len(values)), values.shape[1])
    table[rows, levels.ravel() - base] = values.ravel()
    usable = np.ones(table.shape, dtype=bool)
    if bf16:
        usable &= is_bf16(table)
    if fp16:
        usable &= is_fp16(table)
    usable[rows, levels.ravel() - base] = True  # stored values are usable by definition
    if usable.all():
        return table
    return np.take_along_axis(table, _nearest_usable(usable), axis=1)


def _nearest_usable(usable: np.ndarray) -> np.ndarray:
    """For each column, the index of the nearest usable column in the same row."""
    cols = np.arange(usable.shape[1])
    left = np.maximum.accumulate(np.where(usable, cols, -1), axis=1)
    right = np.minimum.accumulate(np.where(usable, cols, usable.shape[1])[:, ::-1], axis=1)
    right = right[:, ::-1]
    left_far = np.where(left >= 0, cols - left, np.iinfo(np.int64).max)
    right_far = np.where(right < usable.shape[1], right - cols, np.iinfo(np.int64).max)
    return np.where(left_far <= right_far, left, right)
