"""DPRM replacement values on the layer's own grid: zeros at its rate, copies where natural.

The empirical draw (``masking``) picks values from the public kernels; these helpers
keep the draws from carrying a numeric fingerprint (issue 13.3): exact zeros where the
layer has them, values on the layer's bf16 / fp16 / quantised grid, and exact copies
of other weights no more often than the layer's own values recur.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from onnx_selenc._select.value_grid import ValueGrid

_REDRAWS = 16  # rounds of redrawing a zero donor before the few left are drawn exactly


def _nonzero_donors(
    kernels: np.ndarray,
    public_rows: np.ndarray,
    rows: np.ndarray,
    p_count: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Redraw the donor rows whose value at the position is zero (zeros come apart).

    A few vectorised rounds of redrawing settle almost all of them; what is left sits
    at positions with few nonzero public values and is drawn among those directly (a
    loop over positions, not weights). Positions with none keep a zero donor.
    """
    cols = np.arange(rows.shape[1])
    need = (kernels[rows, cols] == 0) & (p_count > 0)
    for _ in range(_REDRAWS):
        if not need.any():
            return rows
        i, j = np.nonzero(need)
        rows[i, j] = public_rows[rng.integers(0, len(public_rows), size=len(i))]
        need[i, j] = kernels[rows[i, j], j] == 0
    for col in np.flatnonzero(need.any(axis=0)):
        donors = public_rows[kernels[public_rows, col] != 0]
        if donors.size:
            at = np.flatnonzero(need[:, col])
            rows[at, col] = donors[rng.integers(0, len(donors), size=len(at))]
    return rows


def _random_zeros(rate: np.ndarray, n_sel: int, rng: np.random.Generator) -> np.ndarray | None:
    """Zeros at each position's rate (no public kernel to take a pattern from)."""
    if not np.any(rate > 0):
        return None
    return rng.random((n_sel, len(rate))) < rate


def _fit(draw: np.ndarray, rows: np.ndarray, grid: ValueGrid, gap: float) -> np.ndarray:
    """Fold nonzero draws into the layer's support, then snap them onto its grid.

    Draws past a quantised layer's top level, or inside the gap around zero that no
    nonzero weight enters (a pruned layer's threshold), are reflected back: a mirror
    keeps the density near the edge, where clipping would pile values up on it.
    """
    bounds = grid.bounds(rows)
    if bounds is not None:
        lo, hi = bounds
        draw = np.where(draw > hi, 2 * hi - draw, draw)
        draw = np.where(draw < lo, 2 * lo - draw, draw)
    magnitude = np.abs(draw)
    draw = np.where(magnitude < gap, np.copysign(2 * gap - magnitude, draw), draw)
    if bounds is not None:
        draw = np.clip(draw, *bounds)
    return grid.snap(draw, rows)


def _mend_off_grid(
    values: np.ndarray,
    kernels: np.ndarray,
    selected: np.ndarray,
    public_rows: np.ndarray,
    live: np.ndarray,
    grid: ValueGrid,
    rng: np.random.Generator,
) -> np.ndarray:
    """Replace the rare snapped values that still fall off the grid (a layer on two
    float grids at once, or past float16's range) by a public nonzero value at the
    position: on a coarse grid such copies are as common as in the layer itself.

    Args:
        values: the replacements, ``(len(selected), kernel_size)``.
        kernels: the layer's kernels.
        selected: the rows being replaced.
        public_rows: the rows that stay public.
        live: nonzero values of the layer per position.
        grid: the layer's value grid.
        rng: source of randomness.
    """
    off = ~grid.contains(values.astype(np.float64), selected) & (values != 0)
    if not off.any():
        return values
    rows = public_rows[rng.integers(0, len(public_rows), size=values.shape)]
    rows = _nonzero_donors(kernels, public_rows, rows, live, rng)
    i, j = np.nonzero(off)
    values = values.copy()
    values[i, j] = kernels[rows[i, j], j]
    return values


_COPY_ROUNDS = 8  # rounds of matching the copy shares (each move shifts both a little)
_STEPS = 8  # grid steps searched each way for a value no kernel holds
_THREAD_ROWS = 1 << 15  # public kernels from which the next column is sorted on a thread
_FEW = 64  # values searched in a table without sorting them first


@dataclass(frozen=True)
class _Column:
    """One position's nonzero public values, as copy matching reads them.

    Attributes:
        public: the distinct values, sorted.
        lonely: those only one public kernel holds, sorted.
        size: the number of values (with repeats).
    """

    public: np.ndarray
    lonely: np.ndarray
    size: int


def _public_column(kernels: np.ndarray, public_rows: np.ndarray, j: int) -> _Column:
    """The nonzero public values at position ``j``: ``np.unique`` with counts, done
    with one in-place sort and one pass of neighbour comparisons (no index arrays)."""
    column = kernels[public_rows, j]
    column = column[column != 0]  # a fresh array: sorted in place
    column.sort()
    if column.size and np.isnan(column[-1]):  # NaNs sort last; np.unique merges them
        public, counts = np.unique(column, return_counts=True)
        return _Column(public, public[counts == 1], column.size)
    # new[i]: column[i] starts a run of equal values; a run of one is a lonely value.
    new = np.ones(column.size + 1, dtype=bool)
    np.not_equal(column[1:], column[:-1], out=new[1:-1])
    return _Column(column[new[:-1]], column[new[:-1] & new[1:]], column.size)


def _match_copies(
    values: np.ndarray,
    kernels: np.ndarray,
    selected: np.ndarray,
    public_rows: np.ndarray,
    grid: ValueGrid,
    rng: np.random.Generator,
) -> np.ndarray:
    """Give the replacements the layer's own share of values another kernel also holds.

    Values recur at a position: nearly all of them on a coarse grid, a few in float32
    (hundreds of thousands of weights on 2**23 values a binade), none in float64.
    Smoothed draws recur at a rate of their own (a few more or fewer than the weights
    do), so an exact-copy count would single the replacements out. At each position (a
    loop over positions, not weights) the share of replacement values that recur in the
    masked layer is brought to the public values' share: a draw nobody else holds moves
    to the nearest public value, or one that recurs steps to the next value of the grid.

    Which draws a public value equals is searched once per position and then kept up
    to date for the few that move; the public columns are sorted on a second thread
    while the rounds of the previous position run (``np.sort`` releases the GIL).
    """
    values = values.copy()
    width = values.shape[1]
    if len(public_rows) < _THREAD_ROWS:  # a thread costs more than it saves on a small layer
        for j in range(width):
            _match_position(values, j, _public_column(kernels, public_rows, j), selected, grid, rng)
        return values
    with ThreadPoolExecutor(max_workers=1) as pool:
        # One column ahead, not all: a column of a large layer is tens of megabytes.
        ahead = pool.submit(_public_column, kernels, public_rows, 0)
        for j in range(width):
            col = ahead.result()
            if j + 1 < width:
                ahead = pool.submit(_public_column, kernels, public_rows, j + 1)
            _match_position(values, j, col, selected, grid, rng)
    return values


def _match_position(
    values: np.ndarray,
    j: int,
    col: _Column,
    selected: np.ndarray,
    grid: ValueGrid,
    rng: np.random.Generator,
) -> None:
    """Match the copy share at position ``j`` of ``values`` (changed in place)."""
    slots = np.flatnonzero(values[:, j] != 0)
    if col.size >= 2 and slots.size:
        values[slots, j] = _match_column(values[slots, j], col, selected[slots], grid, rng)


def _match_column(
    drawn: np.ndarray, col: _Column, rows: np.ndarray, grid: ValueGrid, rng: np.random.Generator
) -> np.ndarray:
    """The rounds of :func:`_match_copies` at one position; ``drawn`` is changed in place."""
    in_public = _in_sorted(drawn, col.public)
    for _ in range(_COPY_ROUNDS):
        ours, theirs = _recurring(drawn, in_public, col)
        share = np.count_nonzero(ours) / ours.size  # == ours.mean(), bit for bit
        if share == theirs:
            break
        move, moved = _copy_moves(drawn, col.public, ours, share, theirs, rows, grid, rng)
        if move.size:
            drawn[move] = moved
            in_public[move] = _in_sorted(moved, col.public)
    return drawn


def _recurring(drawn: np.ndarray, in_public: np.ndarray, col: _Column) -> tuple[np.ndarray, float]:
    """Which draws recur among draws and public values, and the public values' share.

    Args:
        drawn: the replacement values at the position.
        in_public: which of them a public kernel holds there.
        col: the position's public values.
    """
    ours = in_public | _repeated(drawn)
    # A lonely value is a public one, so the distinct draws that meet one are among the
    # few draws a public kernel holds: a search of those, not of every draw.
    held = drawn[in_public]
    met = int(np.sum(_in_sorted(np.unique(held), col.lonely))) if held.size else 0
    return ours, (col.size - col.lonely.size + met) / col.size


def _repeated(drawn: np.ndarray) -> np.ndarray:
    """Which values occur more than once in ``drawn`` (as ``np.unique``'s counts say)."""
    ordered = np.sort(drawn)
    if ordered.size and np.isnan(ordered[-1]):  # np.unique counts NaNs as one value
        _, inverse, counts = np.unique(drawn, return_inverse=True, return_counts=True)
        return counts[inverse.ravel()] > 1
    twice = ordered[1:][ordered[1:] == ordered[:-1]]
    if not twice.size:  # the usual case: no draw repeats another
        return np.zeros(drawn.shape, dtype=bool)
    return _in_sorted(drawn, twice)


def _copy_moves(
    drawn: np.ndarray,
    public: np.ndarray,
    ours: np.ndarray,
    share: float,
    theirs: float,
    rows: np.ndarray,
    grid: ValueGrid,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Which draws move towards the public share (indices) and their new values.

    The random draws are made for every value, as the share needs; the searches only
    for the values that move.
    """
    if share < theirs:
        move = np.flatnonzero(~ours & (rng.random(drawn.size) < (theirs - share) / (1.0 - share)))
        at = drawn[move]
        near = np.clip(_positions(public, at), 1, max(len(public) - 1, 1))
        below, above = public[near - 1], public[np.minimum(near, len(public) - 1)]
        moved = np.where(np.abs(above - at) <= np.abs(at - below), above, below)
    else:
        pick = ours & (rng.random(drawn.size) < (share - theirs) / share)
        up = rng.random(drawn.size) < 0.5
        move = np.flatnonzero(pick)
        taken = (public, np.sort(drawn))  # searched apart: their union is a re-sort
        moved = _walk_off(drawn[move], rows[move], taken, grid, up[move])
        found = moved != drawn[move]  # found a value no one holds
        move, moved = move[found], moved[found]
    keep = grid.contains(moved[:, None].astype(np.float64), rows[move])[:, 0] & (moved != 0)
    return move[keep], moved[keep]


def _walk_off(
    values: np.ndarray,
    rows: np.ndarray,
    taken: tuple[np.ndarray, ...],
    grid: ValueGrid,
    up: np.ndarray,
) -> np.ndarray:
    """Walk each value along the grid, a step at a time (``up`` or down, then the other
    way), to the first value no table of ``taken`` (each sorted) holds; vectorised over
    the values, each stops where it lands (or stays, if none is found)."""
    values = values.copy()
    todo = np.arange(values.size)
    for _ in range(2):  # the chosen direction, then the other one
        found = np.zeros(todo.size, dtype=bool)
        active, current = np.arange(todo.size), values[todo]
        for _ in range(_STEPS):
            current = _next_value(current, rows[todo[active]], grid, up[active])
            held = np.zeros(current.shape, dtype=bool)
            for table in taken:
                held |= _in_sorted(current, table)
            ok = ~held & (current != 0)
            ok &= grid.contains(current[:, None].astype(np.float64), rows[todo[active]])[:, 0]
            values[todo[active[ok]]] = current[ok]
            found[active[ok]] = True
            active, current = active[~ok], current[~ok]
            if not active.size:
                break
        todo, up = todo[~found], ~up[~found]
        if not todo.size:
            break
    return values


def _positions(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.searchsorted(table, values)``, the values searched in sorted order: in a
    table of millions, random lookups miss the cache at every step, sorted ones walk it
    (a few values are searched as they come: the sort would cost more)."""
    if values.size <= _FEW:
        return np.searchsorted(table, values)
    flat = values.ravel()
    order = np.argsort(flat, kind="stable")
    at = np.empty(flat.shape, dtype=np.intp)
    at[order] = np.searchsorted(table, flat[order])
    return at.reshape(values.shape)


def _in_sorted(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Which values a sorted table holds."""
    if not table.size:
        return np.zeros(values.shape, dtype=bool)
    at = np.minimum(_positions(table, values), len(table) - 1)  # positions are >= 0
    return table[at] == values


def _next_value(
    values: np.ndarray, rows: np.ndarray, grid: ValueGrid, up: np.ndarray
) -> np.ndarray:
    """The next value of the grid (or of the dtype, for full precision) from 1-D values."""
    if grid.coarse:
        return grid.neighbour(values.astype(np.float64), rows, up).astype(values.dtype)
    direction = np.where(up, np.inf, -np.inf).astype(values.dtype)
    return np.nextafter(values, direction)
