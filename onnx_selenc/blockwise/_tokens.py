"""Symbolic token permutations tracked by the scrambling analysis.

The block scrambling ``pi`` (a permutation of the ``N`` blocks) is unknown while the
graph is analysed, so permutations of an axis are kept symbolically as a tuple of
segments: ``("id", n)`` for ``n`` positions that stay put (e.g. a class token) and
``("pi", N)`` for ``N`` positions permuted by ``pi``. A tensor is "scrambled along a
group of consecutive axes" when its values equal the plain tensor's values taken
along those axes (flattened row-major) with the materialised permutation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

Segment = tuple[str, int]
Perm = tuple[Segment, ...]


@dataclass(frozen=True)
class Group:
    """A digit of a tensor's row-major index that is permuted by ``perm``.

    The digit spans the consecutive ``axes``; ``outer`` is the factor of the first of
    them that comes before the digit and ``inner`` the factor of the last one after it.
    Both are 1 when the digit is exactly those axes (the token axis, the block grid);
    tokens merged with a batch of two as one axis of ``2 N`` rows are ``outer=1,
    inner=2``.
    """

    axes: tuple[int, ...]
    perm: Perm
    outer: int = 1
    inner: int = 1

    @property
    def aligned(self) -> bool:
        """True when the digit is exactly its axes."""
        return self.outer == 1 and self.inner == 1

    def moved(self, axes: tuple[int, ...] | list[int]) -> Group:
        """The same digit on other axes."""
        return replace(self, axes=tuple(axes))

    def shifted(self, k: int) -> Group:
        """The same digit with every axis index moved by ``k``."""
        return replace(self, axes=tuple(a + k for a in self.axes))

    def move(self, axes: tuple[int, ...]) -> Move:
        """A constant edit along ``axes`` that follows this digit."""
        return (axes, self.outer, self.inner, self.perm)


State = frozenset[Group]
INVARIANT: State = frozenset()


Move = tuple[tuple[int, ...], int, int, Perm]


@dataclass(frozen=True)
class ConstantEdit:
    """A constant to permute: take ``tensor`` along each move's digit with its permutation.

    Attributes:
        tensor: Name of the initializer or Constant output.
        moves: ``(axes, outer, inner, perm)`` digits (see :class:`Group`) on disjoint axes.
    """

    tensor: str
    moves: tuple[Move, ...]


def perm_length(perm: Perm) -> int:
    """Number of positions a symbolic permutation acts on."""
    return sum(n for _, n in perm)


def merge(segments: list[Segment]) -> Perm:
    """Join adjacent identity segments (``pi`` segments never merge)."""
    out: list[Segment] = []
    for kind, n in segments:
        if n == 0:
            continue
        if kind == "id" and out and out[-1][0] == "id":
            out[-1] = ("id", out[-1][1] + n)
        else:
            out.append((kind, n))
    return tuple(out)


def is_identity(perm: Perm) -> bool:
    """True when no position is moved."""
    return all(kind == "id" for kind, _ in perm)


def fixed_positions(perm: Perm) -> np.ndarray:
    """Boolean mask of the positions that are never moved (identity segments)."""
    return np.concatenate([np.full(n, kind == "id") for kind, n in perm])


def restrict(perm: Perm, indices: np.ndarray) -> Perm | None:
    """The permutation seen by ``take(x, indices)`` of a tensor permuted by ``perm``.

    Returns:
        The restricted symbolic permutation (identity when only fixed positions are
        taken), or None when the selection cuts through a permuted segment.
    """
    fixed = fixed_positions(perm)
    if indices.size and bool(np.all(fixed[indices])):
        return (("id", int(indices.size)),)
    if indices.size == 0:
        return ()
    lo, hi = int(indices[0]), int(indices[-1]) + 1
    if not np.array_equal(indices, np.arange(lo, hi)):
        return None
    out: list[Segment] = []
    start = 0
    for kind, n in perm:
        a, b = max(start, lo), min(start + n, hi)
        if a < b:
            if kind == "pi" and (a, b) != (start, start + n):
                return None
            out.append((kind, b - a))
        start += n
    return merge(out)


def materialize(perm: Perm, block_perm: np.ndarray) -> np.ndarray:
    """The concrete index array of a symbolic permutation for the key's ``pi``.

    Raises:
        ValueError: If a ``pi`` segment's length is not ``len(block_perm)``.
    """
    parts, start = [], 0
    for kind, n in perm:
        if kind == "pi":
            if n != block_perm.size:
                raise ValueError("token permutation length does not match the block grid")
            parts.append(start + block_perm)
        else:
            parts.append(np.arange(start, start + n))
        start += n
    return np.concatenate(parts).astype(np.int64)


def take_along(
    value: np.ndarray, axes: tuple[int, ...], index: np.ndarray, outer: int = 1, inner: int = 1
) -> np.ndarray:
    """Take ``value`` along the digit of ``axes`` (see :class:`Group`) with ``index``."""
    a, b = axes[0], axes[-1]
    size = math.prod(value.shape[a : b + 1]) // (outer * inner)
    merged = value.reshape((*value.shape[:a], outer, size, inner, *value.shape[b + 1 :]))
    return np.take(merged, index, axis=a + 1).reshape(value.shape)
