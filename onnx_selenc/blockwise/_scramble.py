"""Block scrambling: plan (prove invariance, list constant edits) and apply with a key."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnx_selenc.blockwise._equivariance import TokenAnalysis
from onnx_selenc.blockwise._graph import GraphIndex, replace_constant
from onnx_selenc.blockwise._shapes import Shapes, concrete_shapes
from onnx_selenc.blockwise._stem import PatchStem
from onnx_selenc.blockwise._tokens import ConstantEdit, materialize, take_along


@dataclass(frozen=True)
class ScramblePlan:
    """How to compensate a keyed permutation of whole blocks.

    Attributes:
        grid: ``(rows, cols)`` of blocks the stem produces (block ``j`` is row-major).
        edits: Constants to permute (position embeddings, token-mixing weights).
        checked_nodes: Number of nodes proven equivariant or invariant.
    """

    grid: tuple[int, int]
    edits: tuple[ConstantEdit, ...]
    checked_nodes: int


def plan_scramble(
    model: onnx.ModelProto, stem: PatchStem, shapes: Shapes | None = None
) -> ScramblePlan:
    """Prove that the model is invariant to a permutation of its blocks (after edits).

    Args:
        model: The plain model.
        stem: Its patch-embedding stem.
        shapes: Concrete tensor shapes (computed when None).

    Returns:
        The plan.

    Raises:
        UnsupportedModel: If a node after the stem is not provably equivariant over the
            tokens (e.g. the spatial depthwise convolutions of a ConvMixer), or the
            input size is dynamic.
    """
    analysis = TokenAnalysis(model, stem.conv_index, shapes or concrete_shapes(model))
    grid, edits = analysis.run()
    return ScramblePlan(grid, edits, analysis.checked)


def apply_scramble(model: onnx.ModelProto, plan: ScramblePlan, block_perm: np.ndarray) -> None:
    """Permute the planned constants in place for the key's block permutation.

    Args:
        model: The model being encrypted (modified in place).
        plan: The plan from :func:`plan_scramble` on the same graph.
        block_perm: Encrypted block ``j`` holds plain block ``block_perm[j]``.

    Raises:
        UnsupportedModel: If a planned constant cannot be rewritten.
    """
    index = GraphIndex(model)
    for edit in plan.edits:
        value = index.constant(edit.tensor)
        assert value is not None
        for axes, outer, inner, perm in edit.moves:
            value = take_along(value, axes, materialize(perm, block_perm), outer, inner)
        replace_constant(model, index, edit.tensor, value)
