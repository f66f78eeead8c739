"""Step detection (issue 26): the check of a few values first decides each row as the
check of the whole row does."""

from __future__ import annotations

import numpy as np

from onnx_selenc._select.value_grid import _HEAD, _on_steps


def _whole_rows(values: np.ndarray, step: np.ndarray, max_level: int) -> np.ndarray:
    levels = np.rint(values / step[:, None])
    error = np.abs(values / step[:, None] - levels)
    ok = np.all(error <= 1e-6 * np.maximum(np.abs(levels), 1) + 1e-9, axis=1)
    return ok & (np.abs(levels).max(axis=1) <= max_level)


def test_on_steps_equals_the_whole_row_check() -> None:
    rng = np.random.default_rng(0)
    for width in (3, _HEAD, _HEAD + 1, 3 * _HEAD + 7):
        step = rng.uniform(1e-3, 1e-2, size=12)
        values = np.rint(rng.standard_normal((12, width)) * 60) * step[:, None]
        values[1] = rng.standard_normal(width)  # off any step
        values[2, -1] += step[2] / 3  # off the step in its last value only
        values[3, -1] = step[3] * 5000  # a level past max_level, last value only
        values[4, 0] = np.nan
        values[5, -1] = np.inf
        with np.errstate(invalid="ignore"):  # inf - inf, as in the layer check itself
            for max_level in (4096, 1 << 15):
                want = _whole_rows(values, step, max_level)
                np.testing.assert_array_equal(_on_steps(values, step, max_level), want)
            assert not _whole_rows(values, step, 4096)[1:6].any()
