"""Data-free kernel importance scores.

Every scorer maps a layer's kernels, shaped ``(n_kernels, kernel_size)``, to one
score per kernel; a higher score means more important. Data-driven scorers (which
need calibration inputs) plug in through the same shape of result.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Scorer = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def random_scores(kernels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform random scores: the paper's random-selection baseline."""
    return rng.random(kernels.shape[0])


def magnitude_scores(kernels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean absolute value of each kernel (L1 norm per weight)."""
    if kernels.dtype.kind != "f":  # abs(-128) overflows in int8
        kernels = kernels.astype(np.float64)
    return np.abs(kernels).mean(axis=1, dtype=np.float64)


def abs_mean_scores(kernels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """|mean| of each kernel, largest first: the PSS authors' 'largest |mean|' baseline."""
    return np.abs(kernels.mean(axis=1, dtype=np.float64))


DATA_FREE_SCORERS: dict[str, Scorer] = {
    "random": random_scores,
    "magnitude": magnitude_scores,
    "abs-mean": abs_mean_scores,
}


def score_kernels(kernels: np.ndarray, method: str, rng: np.random.Generator) -> np.ndarray:
    """Score each kernel of one layer with a data-free scorer.

    Raises:
        ValueError: unknown method.
    """
    try:
        scorer = DATA_FREE_SCORERS[method]
    except KeyError:
        known = ", ".join(sorted(DATA_FREE_SCORERS))
        raise ValueError(f"unknown data-free importance {method!r} (known: {known})") from None
    return np.asarray(scorer(kernels, rng), dtype=np.float64)
