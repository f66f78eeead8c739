"""Smoothed-bootstrap helpers of the masking: how far a replacement moves from its
donor (Silverman's bandwidth), and the draws of sparse (pruned) layers within a zero
pattern (:mod:`onnx_selenc._select.masking`)."""

from __future__ import annotations

import numpy as np


def bandwidth(n: int | np.ndarray, dims: int | np.ndarray) -> np.ndarray:
    """Silverman's rule in ``dims`` dimensions for ``n`` kernels, at most 0.9: the fewer
    the kernels, the farther apart they are, and the farther a replacement moves."""
    dims = np.maximum(dims, 1)
    n = np.maximum(n, 1)
    return np.minimum(0.9, (4.0 / (dims + 2)) ** (1.0 / (dims + 4)) * n ** (-1.0 / (dims + 4)))


SPARSE = 0.9  # share of nonzero weights below which draws follow their zero pattern
_MIN_PATTERN = 8  # public kernels that share a donor's zero pattern, at least, to smooth in it


def pattern_draws(
    draw: np.ndarray,
    kernels: np.ndarray,
    donors: np.ndarray,
    public_rows: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Redraw, in place, the rows whose donor's zero pattern at least ``_MIN_PATTERN``
    public kernels share: a smoothed bootstrap within that pattern.

    In a sparse (pruned) layer the Gaussian noise of :func:`masking._joint` lives on every
    position but survives only on the donor's nonzero ones, with the layer's covariance,
    which zeros dilute: too little of it leaves a replacement next to its donor (the
    nearest-neighbour distance), more of it breaks the joint structure of the nonzero
    values (the covariance ratio). The public kernels with the donor's zero pattern
    hold that structure: a replacement keeps ``sqrt(1 - h**2)`` of the donor's
    deviation from their mean and adds ``h / sqrt(2)`` times the difference of two
    other random kernels of them, which keeps their mean and covariance; ``h`` is
    Silverman's bandwidth for their count in as many dimensions as the pattern has
    nonzeros. Rarer patterns keep the draws of :func:`masking._joint`.
    """
    zero = kernels[public_rows] == 0
    width = zero.shape[1]
    if width <= 62:  # the zero pattern as the bits of one integer
        codes = zero @ (np.int64(1) << np.arange(width, dtype=np.int64))
    else:
        codes = np.unique(zero, axis=0, return_inverse=True)[1].reshape(-1)
    _, pattern, counts = np.unique(codes, return_inverse=True, return_counts=True)
    pattern = pattern.reshape(-1)
    # Donors are public rows (public_rows is sorted): their pattern by their place in it.
    cls = pattern[np.searchsorted(public_rows, donors)]
    rows = np.flatnonzero(counts[cls] >= _MIN_PATTERN)
    if not rows.size:
        return
    cls = cls[rows]
    count = counts[cls]
    order = public_rows[np.argsort(pattern, kind="stable")]  # public rows by pattern
    start = (np.cumsum(counts) - counts)[cls]
    # The means of the patterns in use (a layer of unique patterns has as many as rows).
    used, where = np.unique(cls, return_inverse=True)
    slot = np.full(counts.size, -1)
    slot[used] = np.arange(used.size)
    slot = slot[pattern]
    member = slot >= 0
    sums = np.zeros((used.size, width))
    np.add.at(sums, slot[member], kernels[public_rows[member]].astype(np.float64))
    mu = (sums / counts[used][:, None])[where.reshape(-1)]
    second = rng.integers(0, count)
    third = rng.integers(0, count - 1)
    third = third + (third >= second)  # two different kernels of the pattern
    nonzero = width - zero[np.searchsorted(public_rows, donors[rows])].sum(axis=1)
    h = bandwidth(count, nonzero)[:, None]
    spread = kernels[order[start + second]].astype(np.float64) - kernels[order[start + third]]
    own = kernels[donors[rows]].astype(np.float64) - mu
    draw[rows] = mu + np.sqrt(1.0 - h**2) * own + h / np.sqrt(2.0) * spread
