"""Selection: which kernels to encrypt, and at which level each one is restored.

Budget allocation decides how many kernels each layer gives up; the scores
decide which; the level split orders the chosen kernels into nested sets
``E_1 ⊂ ... ⊂ E_M`` (level m restores ``E_m``; level M restores all).
"""

from __future__ import annotations

import fnmatch
import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnx_selenc._onnx.graph import ConvWeight
from onnx_selenc._select.allocation import allocate_balanced as allocate_balanced
from onnx_selenc._select.allocation import allocate_uniform as allocate_uniform
from onnx_selenc.exceptions import LevelCountWarning

ALLOCATIONS = ("balanced", "uniform", "sensitivity")
LEVEL_ORDERS = ("most-important-first", "least-important-first")


@dataclass(frozen=True)
class LayerSelection:
    """The kernels chosen in one weight tensor.

    Attributes:
        address: the weight's address (``ConvWeight.address``).
        kernels: flat kernel indices, most important first.
        restore_level: for each chosen kernel, the level (1..M) that restores it.
    """

    address: str
    kernels: np.ndarray
    restore_level: np.ndarray


@dataclass(frozen=True)
class Selection:
    """What the whole model gives up: one entry per layer with at least one kernel."""

    layers: tuple[LayerSelection, ...]
    levels: int
    selected_weights: int
    total_weights: int

    @property
    def fraction(self) -> float:
        return self.selected_weights / self.total_weights if self.total_weights else 0.0


def filter_layers(
    weights: Sequence[ConvWeight], patterns: Sequence[str] | None
) -> list[ConvWeight]:
    """Keep the weights whose address, name or consumer node name matches a glob pattern.

    Raises:
        ValueError: a pattern matches nothing (a typo should not silently encrypt less).
    """
    if not patterns:
        return list(weights)
    kept: list[ConvWeight] = []
    for pattern in patterns:
        matched = [
            w
            for w in weights
            if fnmatch.fnmatchcase(w.address, pattern)
            or fnmatch.fnmatchcase(w.name, pattern)
            or any(fnmatch.fnmatchcase(c.split("'")[1], pattern) for c in w.consumers)
        ]
        if not matched:
            raise ValueError(f"layer pattern {pattern!r} matches no conv weight")
        kept.extend(w for w in matched if w not in kept)
    return kept


def level_split(
    n_selected: int, fractions: Sequence[float], order: str = "most-important-first"
) -> np.ndarray:
    """Level (1..M) restoring each of ``n_selected`` kernels ranked most important first.

    ``fractions[m-1]`` is the cumulative share of the kernels that level m restores
    (increasing, last = 1). With ``least-important-first`` level 1 restores the least
    important kernels, which keeps low tiers weak for longer. Every level restores at
    least one kernel more than the one below (``n_selected >= M``).
    """
    cum = distinct_cuts(
        np.ceil(np.asarray(fractions, dtype=np.float64) * n_selected).astype(np.int64).tolist(),
        n_selected,
    )
    rank = np.arange(n_selected)
    if order == "least-important-first":
        rank = rank[::-1]
    elif order != "most-important-first":
        raise ValueError(f"unknown level order {order!r} (known: {', '.join(LEVEL_ORDERS)})")
    return (np.searchsorted(np.asarray(cum), rank, side="right") + 1).astype(np.int16)


def distinct_cuts(cuts: Sequence[int], total: int) -> list[int]:
    """Cumulative kernel counts per level made strictly increasing, the last ``total``.

    A level that adds nothing would hand out a key equal to the level below it (or,
    for the level under the top, to the owner key).
    """
    if total < len(cuts):
        raise ValueError(f"{len(cuts)} levels need at least {len(cuts)} kernels, got {total}")
    out: list[int] = []
    for i, c in enumerate(cuts):
        low = out[-1] + 1 if out else 1
        out.append(min(max(int(c), low), total - (len(cuts) - 1 - i)))
    return out


def global_levels(
    counts: Sequence[int], fractions: Sequence[float], order: str = "most-important-first"
) -> list[np.ndarray]:
    """Restore levels of every layer's chosen kernels, split over the whole model.

    Scores are not comparable across layers, so the layers are merged by relative rank
    (a layer's top kernel ranks with every other layer's top share): level m restores
    about ``fractions[m-1]`` of *all* chosen kernels, not of each layer's. A per-layer
    split gives every layer's first kernel to level 1, which with one or two kernels per
    layer hands level 1 most of the model.
    """
    if order not in LEVEL_ORDERS:
        raise ValueError(f"unknown level order {order!r} (known: {', '.join(LEVEL_ORDERS)})")
    sizes = np.asarray(counts, dtype=np.int64)
    total = int(sizes.sum())
    layer = np.repeat(np.arange(len(sizes)), sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    rank = np.arange(total) - starts[layer]
    if order == "least-important-first":
        rank = sizes[layer] - 1 - rank
    merged = np.argsort((rank + 0.5) / sizes[layer], kind="stable")
    levels = np.empty(total, dtype=np.int16)
    levels[merged] = level_split(total, fractions)
    return np.split(levels, np.cumsum(sizes)[:-1])


def check_fractions(levels: int, fractions: Sequence[float] | None) -> tuple[float, ...]:
    """Validate the cumulative level fractions; default: equal steps m/M."""
    if levels < 1 or levels > 255:
        raise ValueError(f"levels must be between 1 and 255, got {levels}")
    if fractions is None:
        return tuple((m + 1) / levels for m in range(levels))
    fr = tuple(float(f) for f in fractions)
    if len(fr) != levels:
        raise ValueError(f"{len(fr)} level fractions given for {levels} levels")
    if any(b <= a for a, b in itertools.pairwise(fr)) or fr[0] <= 0 or fr[-1] != 1.0:
        raise ValueError(
            "level fractions must be increasing, > 0, and end at 1.0 (a level that adds "
            "nothing would give a key equal to the level below it)"
        )
    return fr


def select(
    scores: Mapping[str, np.ndarray],
    counts: Mapping[str, int],
    *,
    levels: int,
    fractions: Sequence[float],
    order: str,
    total_weights: int,
    kernel_sizes: Mapping[str, int],
) -> Selection:
    """Pick the top ``counts[address]`` kernels of each layer by score and assign levels.

    Raises:
        ValueError: fewer kernels are chosen than there are levels.
    """
    addresses = [address for address in sorted(counts) if int(counts[address]) > 0]
    tops = [top_kernels(scores[address], int(counts[address])) for address in addresses]
    n_chosen = sum(len(t) for t in tops)
    if n_chosen < levels:
        raise ValueError(
            f"{levels} distinct levels need at least {levels} encrypted kernels, "
            f"{n_chosen} chosen: raise the budget or lower the level count"
        )
    restore = global_levels([len(t) for t in tops], fractions, order)
    layers = tuple(
        LayerSelection(address, top, lv)
        for address, top, lv in zip(addresses, tops, restore, strict=True)
    )
    selected = sum(
        len(t) * kernel_sizes[address] for address, t in zip(addresses, tops, strict=True)
    )
    return Selection(layers, levels, selected, total_weights)


def top_kernels(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, highest first; equal scores in index order.

    Same result as a stable descending sort cut to ``k``, without sorting every kernel.
    """
    neg = -np.asarray(scores, dtype=np.float64)
    if k >= len(neg):
        return np.argsort(neg, kind="stable").astype(np.int64)
    kth = np.partition(neg, k - 1)[k - 1]
    above = np.flatnonzero(neg < kth)
    tied = np.flatnonzero(neg == kth)[: k - len(above)]
    chosen = np.concatenate([above, tied])  # index order within equal scores
    return chosen[np.argsort(neg[chosen], kind="stable")].astype(np.int64)


def at_least_one_per_level(
    counts: Mapping[str, int], chosen: Sequence[ConvWeight], levels: int
) -> dict[str, int]:
    """Raise the kernel counts so each of the ``levels`` levels restores one kernel.

    With fewer encrypted kernels than levels, two tier keys would be equal (or a tier
    key equal to the owner's); the largest layers give the extra kernels, with a warning.
    """
    out = {k: int(v) for k, v in counts.items()}
    short = levels - sum(out.values())
    if short <= 0:
        return out
    room = sorted(chosen, key=lambda w: w.n_kernels - out.get(w.address, 0), reverse=True)
    available = sum(w.n_kernels - out.get(w.address, 0) for w in room)
    if available < short:
        raise ValueError(
            f"{levels} distinct levels need at least {levels} encrypted kernels, and the "
            f"chosen conv weights hold only {sum(out.values()) + available}: use fewer levels"
        )
    before = sum(out.values())
    while short > 0:
        for w in room:
            if short and out.get(w.address, 0) < w.n_kernels:
                out[w.address] = out.get(w.address, 0) + 1
                short -= 1
    warnings.warn(
        f"the budget selects {before} kernels for {levels} levels; encrypting {levels} "
        "so that every level restores at least one kernel more than the one below",
        LevelCountWarning,
        stacklevel=3,
    )
    return out


def grow_counts(counts: dict[str, int], chosen: Sequence[ConvWeight]) -> bool:
    """Double every layer's kernel count (within its size); False if none can grow."""
    grown = False
    for w in chosen:
        now = counts.get(w.address, 0)
        new = min(w.n_kernels, 2 * now)
        grown = grown or new > now
        counts[w.address] = new
    return grown
