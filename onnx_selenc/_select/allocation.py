"""Budget allocation: how many kernels each layer gives up, told by nothing public.

Two things the public file must not say (issue 13.4): the per-layer counts (with a
data-free allocation they could be replayed exactly from the public shapes and the
total), and every position of a small layer (a layer masked at 94-100% reveals them
all). So the balanced allocation draws each layer's share with a secret jitter, and
no allocation takes more than :data:`MAX_LAYER_SHARE` of a layer's kernels unless the
budget cannot be met otherwise, or the caller asked for it (``uniform``'s ratio).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from onnx_selenc._onnx.graph import ConvWeight

MAX_LAYER_SHARE = 0.5
# Each layer's share of the water level varies by this much either way (secretly).
BALANCED_JITTER = 0.35


def allocate_uniform(weights: Sequence[ConvWeight], ratio: float) -> dict[str, int]:
    """The paper's per-layer ratio: ``floor(n_kernels * ratio) + 1`` kernels in every layer."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"per-layer ratio must be in (0, 1], got {ratio}")
    return {w.address: min(w.n_kernels, int(np.floor(w.n_kernels * ratio)) + 1) for w in weights}


def allocate_balanced(
    weights: Sequence[ConvWeight],
    budget_weights: int,
    rng: np.random.Generator | None = None,
    *,
    max_share: float = MAX_LAYER_SHARE,
) -> dict[str, int]:
    """Spread a weight budget so each layer gives up about the same number of weights.

    Water-filling: every layer gets ``min(cap, t * u)`` weights with one level ``t`` for
    all, ``u`` a secret factor per layer (``rng``; 1 without one) and ``cap`` at most
    ``max_share`` of the layer. Small layers, usually the early ones that matter most
    per weight, lose a large share of their kernels; large late layers a small one.
    Data-free.
    """
    if budget_weights <= 0:
        raise ValueError("the budget must select at least one weight")
    sizes = np.array([w.n_weights for w in weights], dtype=np.int64)
    ksize = np.array([w.kernel_size for w in weights], dtype=np.int64)
    caps = _caps(weights, max_share)
    budget = min(int(budget_weights), int(sizes.sum()))
    if caps.sum() < budget:  # more than the caps hold: the budget wins
        caps = sizes.astype(np.float64)
    rate = (
        np.ones(len(weights))
        if rng is None
        else rng.uniform(1 - BALANCED_JITTER, 1 + BALANCED_JITTER, len(weights))
    )
    per_layer = np.minimum(caps, _water_level(caps, rate, budget) * rate)
    kernels = np.maximum(1, np.rint(per_layer / ksize)).astype(np.int64)
    kernels = np.minimum(kernels, np.maximum(1, caps // ksize).astype(np.int64))
    return {w.address: int(k) for w, k in zip(weights, kernels, strict=True)}


def cap_layer_shares(
    counts: Mapping[str, int],
    weights: Sequence[ConvWeight],
    *,
    max_share: float = MAX_LAYER_SHARE,
) -> dict[str, int]:
    """Counts with no layer above ``max_share`` of its kernels, the excess moved to the
    layers with room in proportion to what they already give up (their shape kept).

    Where the other layers have too little room, the budget wins over the cap.
    """
    chosen = [w for w in weights if w.address in counts]
    if not chosen:
        return dict(counts)
    ksize = np.array([w.kernel_size for w in chosen], dtype=np.int64)
    caps = np.maximum(1, _caps(chosen, max_share) // ksize).astype(np.int64)
    have = np.array([int(counts[w.address]) for w in chosen], dtype=np.int64)
    want = int((have * ksize).sum())  # the weights to spend, as allocated
    out = np.minimum(have, caps)
    for _ in range(8):  # each pass fills the layers with room; few are ever needed
        short = want - int((out * ksize).sum())
        room = caps - out
        if short <= 0 or not room.any():
            break
        share = np.where(room > 0, np.maximum(out, 1), 0).astype(np.float64)
        extra = np.ceil(short * share / (share * ksize).sum()).astype(np.int64)
        out = out + np.minimum(room, extra)
    if want - int((out * ksize).sum()) > int(ksize.max()):
        out = have  # the cap cannot hold this budget: as allocated
    return {**counts, **{w.address: int(c) for w, c in zip(chosen, out, strict=True)}}


def _caps(weights: Sequence[ConvWeight], max_share: float) -> np.ndarray:
    """Weights each layer may give up: ``max_share`` of its kernels, at least one kernel."""
    n = np.array([w.n_kernels for w in weights], dtype=np.int64)
    ksize = np.array([w.kernel_size for w in weights], dtype=np.int64)
    return (np.maximum(1, np.floor(n * max_share)) * ksize).astype(np.float64)


def _water_level(caps: np.ndarray, rate: np.ndarray, budget: int) -> float:
    """The ``t`` with ``sum(min(caps, t * rate)) == budget`` (bisection: the sum is
    continuous and non-decreasing in ``t``)."""
    low, high = 0.0, float((caps / rate).max())
    for _ in range(64):
        mid = (low + high) / 2
        if np.minimum(caps, mid * rate).sum() < budget:
            low = mid
        else:
            high = mid
    return high
