"""DPRM replacement values on the layer's own grid: zeros at its rate, copies where natural.

The empirical draw (``masking``) picks values from the public kernels; these helpers
keep the draws from carrying a numeric fingerprint (issue 13.3): exact zeros where the
layer has them, values on the layer's bf16 / fp16 / quantised grid, and exact copies
of other weights no more often than the layer's own values recur.
"""

from __future__ import annotations

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


def _donor_zeros(
    kernels: np.ndarray, public_rows: np.ndarray, n_sel: int, rng: np.random.Generator
) -> np.ndarray:
    """Each replacement takes the zero pattern of a random public kernel.

    A whole pattern, not a rate per position: pruned layers hold all-zero and dense
    kernels side by side, and per-kernel zero counts keep that spread.
    """
    donors = public_rows[rng.integers(0, len(public_rows), size=n_sel)]
    return kernels[donors] == 0


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
    """
    values = values.copy()
    for j in range(values.shape[1]):
        column = kernels[public_rows, j]
        column = column[column != 0]
        slots = np.flatnonzero(values[:, j] != 0)
        if column.size < 2 or not slots.size:
            continue
        public, counts = np.unique(column, return_counts=True)
        lonely = public[counts == 1]  # the public values only a draw can make recur
        for _ in range(_COPY_ROUNDS):
            drawn = values[slots, j]
            ours, theirs = _recurring(drawn, public, lonely, column.size)
            if ours.mean() == theirs:
                break
            moved, move = _copy_moves(drawn, public, ours, theirs, selected[slots], grid, rng)
            values[slots[move], j] = moved[move]
    return values


def _recurring(
    drawn: np.ndarray, public: np.ndarray, lonely: np.ndarray, n_public: int
) -> tuple[np.ndarray, float]:
    """Which draws recur among draws and public values, and the public values' share.

    Args:
        drawn: the replacement values at the position.
        public: the distinct public values there, sorted.
        lonely: those only one public kernel holds, sorted.
        n_public: the number of public values.
    """
    distinct, inverse, counts = np.unique(drawn, return_inverse=True, return_counts=True)
    ours = _in_sorted(drawn, public) | (counts[inverse.ravel()] > 1)
    # Lonely values are distinct, so those a draw meets are the distinct draws among
    # them: a search of the few draws, not of every lonely value.
    met = int(np.sum(_in_sorted(distinct, lonely)))
    return ours, (n_public - lonely.size + met) / n_public


def _copy_moves(
    drawn: np.ndarray,
    public: np.ndarray,
    ours: np.ndarray,
    theirs: float,
    rows: np.ndarray,
    grid: ValueGrid,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """New values for some draws and which of them move, towards the public share."""
    share = float(ours.mean())
    near = np.clip(_positions(public, drawn), 1, max(len(public) - 1, 1))
    below, above = public[near - 1], public[np.minimum(near, len(public) - 1)]
    if share < theirs:
        move = ~ours & (rng.random(drawn.size) < (theirs - share) / (1.0 - share))
        moved = np.where(np.abs(above - drawn) <= np.abs(drawn - below), above, below)
    else:
        move = ours & (rng.random(drawn.size) < (share - theirs) / share)
        up = rng.random(drawn.size) < 0.5
        taken = (public, np.sort(drawn))  # searched apart: their union is a re-sort
        moved = _walk_off(drawn, np.flatnonzero(move), taken, rows, grid, up[move])
        move &= moved != drawn  # found a value no one holds
    move &= grid.contains(moved[:, None].astype(np.float64), rows)[:, 0] & (moved != 0)
    return moved, move


def _walk_off(
    values: np.ndarray,
    todo: np.ndarray,
    taken: tuple[np.ndarray, ...],
    rows: np.ndarray,
    grid: ValueGrid,
    up: np.ndarray,
) -> np.ndarray:
    """Walk the values at ``todo`` along the grid, a step at a time (``up`` or down, then
    the other way), to the first value no table of ``taken`` (each sorted) holds;
    vectorised over the values, each stops where it lands."""
    values = values.copy()
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
    table of millions, random lookups miss the cache at every step, sorted ones walk it."""
    flat = values.ravel()
    order = np.argsort(flat, kind="stable")
    at = np.empty(flat.shape, dtype=np.intp)
    at[order] = np.searchsorted(table, flat[order])
    return at.reshape(values.shape)


def _in_sorted(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Which values a sorted table holds."""
    if not table.size:
        return np.zeros(values.shape, dtype=bool)
    at = np.clip(_positions(table, values), 0, len(table) - 1)
    return table[at] == values


def _next_value(
    values: np.ndarray, rows: np.ndarray, grid: ValueGrid, up: np.ndarray
) -> np.ndarray:
    """The next value of the grid (or of the dtype, for full precision) from 1-D values."""
    if grid.coarse:
        return grid.neighbour(values.astype(np.float64), rows, up).astype(values.dtype)
    direction = np.where(up, np.inf, -np.inf).astype(values.dtype)
    return np.nextafter(values, direction)
