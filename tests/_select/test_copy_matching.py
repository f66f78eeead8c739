"""Copy matching (issue 26): the fast rounds give the same values, bit for bit, as the
plain per-round search they replaced (kept here as the reference), on every grid."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_selenc._select import replacements
from onnx_selenc._select.replacements import _match_copies, _next_value, _public_column
from onnx_selenc._select.value_grid import ValueGrid, find_grid


def _in(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    if not table.size:
        return np.zeros(values.shape, dtype=bool)
    return table[np.clip(np.searchsorted(table, values), 0, len(table) - 1)] == values


def _walk(values, todo, taken, rows, grid, up):  # type: ignore[no-untyped-def]
    values = values.copy()
    for _ in range(2):
        found = np.zeros(todo.size, dtype=bool)
        active, current = np.arange(todo.size), values[todo]
        for _ in range(8):
            current = _next_value(current, rows[todo[active]], grid, up[active])
            held = np.zeros(current.shape, dtype=bool)
            for table in taken:
                held |= _in(current, table)
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


def _reference(
    values: np.ndarray,
    kernels: np.ndarray,
    selected: np.ndarray,
    public_rows: np.ndarray,
    grid: ValueGrid,
    rng: np.random.Generator,
) -> np.ndarray:
    """Copy matching as first written: every search redone over every draw each round."""
    values = values.copy()
    for j in range(values.shape[1]):
        column = kernels[public_rows, j]
        column = column[column != 0]
        slots = np.flatnonzero(values[:, j] != 0)
        if column.size < 2 or not slots.size:
            continue
        public, counts = np.unique(column, return_counts=True)
        lonely = public[counts == 1]
        rows = selected[slots]
        for _ in range(8):
            drawn = values[slots, j]
            distinct, inverse, reps = np.unique(drawn, return_inverse=True, return_counts=True)
            ours = _in(drawn, public) | (reps[inverse.ravel()] > 1)
            theirs = (column.size - lonely.size + int(np.sum(_in(distinct, lonely)))) / column.size
            share = float(ours.mean())
            if share == theirs:
                break
            near = np.clip(np.searchsorted(public, drawn), 1, max(len(public) - 1, 1))
            below, above = public[near - 1], public[np.minimum(near, len(public) - 1)]
            if share < theirs:
                move = ~ours & (rng.random(drawn.size) < (theirs - share) / (1.0 - share))
                moved = np.where(np.abs(above - drawn) <= np.abs(drawn - below), above, below)
            else:
                move = ours & (rng.random(drawn.size) < (share - theirs) / share)
                up = rng.random(drawn.size) < 0.5
                taken = (public, np.sort(drawn))
                moved = _walk(drawn, np.flatnonzero(move), taken, rows, grid, up[move])
                move &= moved != drawn
            move &= grid.contains(moved[:, None].astype(np.float64), rows)[:, 0] & (moved != 0)
            values[slots[move], j] = moved[move]
    return values


def _layer(kind: str, rng: np.random.Generator) -> np.ndarray:
    w = rng.standard_normal((24, 16, 3, 3)) * 0.05
    if kind == "fp16":
        return w.astype(np.float16)
    if kind == "bf16":
        bits = w.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
        return bits.view(np.float32)
    if kind == "int8-steps":  # coarse: most draws recur, the walk-off branch runs
        return (np.rint(w / 0.01) * 0.01).astype(np.float32)
    if kind == "pruned":
        w[np.abs(w) < 0.03] = 0.0
    return w.astype(np.float32)


@pytest.mark.parametrize("kind", ["float32", "fp16", "bf16", "int8-steps", "pruned"])
@pytest.mark.parametrize("threaded", [False, True])
def test_match_copies_equals_the_reference(
    kind: str, threaded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if threaded:  # the columns sorted ahead on threads, as for a large layer
        monkeypatch.setattr(replacements, "_THREAD_ROWS", 1)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        kernels = _layer(kind, rng).reshape(-1, 9)
        selected = np.sort(rng.choice(len(kernels), size=len(kernels) // 8, replace=False))
        public_rows = np.setdiff1d(np.arange(len(kernels)), selected)
        grid = find_grid(kernels, (24, 16))
        # Draws near the public values, some equal to them, some repeated, some zero.
        values = grid.snap(kernels[selected].astype(np.float64) * 1.1, selected)
        values = values.astype(kernels.dtype)
        values[::5] = kernels[public_rows[: len(values[::5])]]
        values[1::7] = values[0]
        values[rng.random(values.shape) < 0.05] = 0
        fast = _match_copies(values, kernels, selected, public_rows, grid, np.random.default_rng(9))
        slow = _reference(values, kernels, selected, public_rows, grid, np.random.default_rng(9))
        assert fast.dtype == slow.dtype
        assert np.array_equal(fast.view(np.uint8), slow.view(np.uint8))


def test_public_column_is_unique_with_counts() -> None:
    rng = np.random.default_rng(0)
    kernels = np.rint(rng.standard_normal((500, 3)) * 20).astype(np.float32) / 8
    kernels[rng.random(kernels.shape) < 0.1] = 0
    kernels[3, 1] = np.nan
    kernels[7, 1] = np.nan
    rows = np.sort(rng.choice(500, size=400, replace=False))
    for j in range(3):
        col = _public_column(kernels, rows, j)
        column = kernels[rows, j]
        public, counts = np.unique(column[column != 0], return_counts=True)
        np.testing.assert_array_equal(col.public, public)
        np.testing.assert_array_equal(col.lonely, public[counts == 1])
        assert col.size == int(np.sum(column != 0))
