"""Token-permutation states and the structural propagation rules (shared by the analysis).

A tensor's state is the set of :class:`~._tokens.Group` s along which it equals the
plain tensor taken with the (symbolic) block permutation. The base class holds the
states, the constant edits found so far, and the rules that only move axes around
(broadcasting, reductions, reshapes, concatenation, selection).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import onnx

from onnx_selenc.blockwise._graph import GraphIndex, attr, node_label
from onnx_selenc.blockwise._shapes import Shapes
from onnx_selenc.blockwise._tokens import (
    INVARIANT,
    ConstantEdit,
    Group,
    Move,
    State,
    merge,
    restrict,
)
from onnx_selenc.exceptions import UnsupportedModel


class TokenStates:
    """Scrambling states of tensors, constant edits, and the axis-moving rules."""

    def __init__(self, model: onnx.ModelProto, conv_index: int, shapes: Shapes) -> None:
        self.index = GraphIndex(model)
        self.conv_index = conv_index
        self.shapes = shapes
        self.states: dict[str, State] = {}
        self.edits: dict[str, list[tuple[int, int, Move]]] = defaultdict(list)
        self.reads: dict[int, set[str]] = defaultdict(set)
        for name, users in self.index.consumers.items():
            for i in users:
                self.reads[i].add(name)
        self.checked = 0

    def shape(self, name: str) -> tuple[int, ...]:
        """Concrete shape of a tensor.

        Raises:
            UnsupportedModel: If the shape is unknown.
        """
        if name in self.shapes:
            return self.shapes[name]
        value = self.index.constant(name)
        if value is not None:
            return tuple(value.shape)
        raise UnsupportedModel(
            f"block scrambling: the shape of tensor '{name}' is unknown (install onnxruntime"
            " for exact shapes)"
        )

    def _edits(self) -> tuple[ConstantEdit, ...]:
        result = []
        for root, regs in sorted(self.edits.items()):
            per_site: dict[tuple[int, int], set[Move]] = defaultdict(set)
            for i, s, move in regs:
                per_site[(i, s)].add(move)
            specs = {frozenset(moves) for moves in per_site.values()}
            moves = sorted(specs.pop()) if len(specs) == 1 else []
            used = [a for move in moves for a in move[0]]
            if not moves or len(used) != len(set(used)):
                raise UnsupportedModel(
                    f"block scrambling: constant '{root}' would need two different permutations"
                )
            if root in self.index.outputs:
                raise UnsupportedModel(f"block scrambling: constant '{root}' is a graph output")
            for i, s in self.index.use_sites(root):
                if (i, s) not in per_site:
                    label = node_label(self.index.node(i), i)
                    raise UnsupportedModel(
                        f"block scrambling: constant '{root}' is also used by node '{label}' where"
                        " the tokens are not scrambled (a permuted copy would leave the plain one"
                        " in the model, which reveals the key)"
                    )
            result.append(ConstantEdit(root, tuple(moves)))
        return tuple(result)

    def _refuse(self, i: int, why: str) -> UnsupportedModel:
        node = self.index.node(i)
        return UnsupportedModel(
            f"block scrambling: {node.op_type} '{node_label(node, i)}' {why}; the model is not"
            " provably invariant to moving blocks, so scrambling is refused"
        )

    def _st(self, name: str) -> State:
        return self.states.get(name, INVARIANT)

    def _only_first(self, i: int, node: onnx.NodeProto) -> State:
        for name in node.input[1:]:
            if name in self.states:
                raise self._refuse(i, f"takes a scrambled tensor as its parameter '{name}'")
        return self._st(node.input[0])

    def _edit(self, i: int, slot: int, name: str, move: Move) -> None:
        self.edits[self.index.resolve(name)].append((i, slot, move))

    def _absorb(
        self, i: int, slot: int, groups: dict[tuple[int, ...], Group], out: tuple[int, ...]
    ) -> None:
        """Check an operand broadcast (right-aligned) against the scrambled output digits."""
        name = self.index.graph.node[i].input[slot]
        dims = self.shape(name)
        shift = len(out) - len(dims)
        own = {g.axes: g for g in (h.shifted(shift) for h in self._st(name))}
        for axes, group in groups.items():
            local = tuple(a - shift for a in axes)
            if axes in own:
                if own[axes] != group:
                    raise self._refuse(i, "combines tensors scrambled differently")
                continue
            sizes = [dims[a] if a >= 0 else 1 for a in local]
            if all(s == 1 for s in sizes):
                continue
            if min(local) >= 0 and sizes == [out[a] for a in axes] and self.index.is_constant(name):
                self._edit(i, slot, name, group.move(local))
                continue
            raise self._refuse(
                i,
                f"combines the scrambled tokens with '{name}', which varies along them but is"
                " not a constant that could be permuted (like a position embedding)",
            )

    def _broadcast(self, i: int, node: onnx.NodeProto, slots: list[int]) -> State:
        out = self.shape(node.output[0])
        union: dict[tuple[int, ...], Group] = {}
        for slot in slots:
            name = node.input[slot]
            shift = len(out) - len(self.shape(name))
            for g in self._st(name):
                h = g.shifted(shift)
                if union.setdefault(h.axes, h) != h:
                    raise self._refuse(i, "combines tensors scrambled differently")
        used = [a for axes in union for a in axes]
        if len(used) != len(set(used)):
            raise self._refuse(i, "combines tensors scrambled along overlapping axes")
        for slot in slots:
            self._absorb(i, slot, union, out)
        return frozenset(union.values())

    def _axes_input(self, i: int, node: onnx.NodeProto, slot: int, name: str) -> list[int] | None:
        if attr(node, name) is not None:
            return [int(a) for a in attr(node, name)]
        if len(node.input) > slot and node.input[slot]:
            value = self.index.constant(node.input[slot])
            if value is None:
                raise self._refuse(i, f"has run-time {name}")
            return [int(a) for a in np.asarray(value).reshape(-1)]
        return None

    def _reduce(self, i: int, state: State, rank: int, reduced: set[int], keep: bool) -> State:
        result = set()
        for g in state:
            inside = set(g.axes) & reduced
            if inside == set(g.axes):
                continue
            if inside:
                raise self._refuse(i, "reduces only part of the scrambled block grid")
            result.add(g.shifted(0 if keep else -sum(1 for r in reduced if r < g.axes[0])))
        return frozenset(result)

    def _reshape(self, i: int, node: onnx.NodeProto, state: State) -> State:
        """Follow each digit through a row-major reshape (it keeps its place in the index)."""
        src, dst = self.shape(node.input[0]), self.shape(node.output[0])
        prefix = [math.prod(dst[:k]) for k in range(len(dst) + 1)]
        result = set()
        for g in state:
            size = math.prod(src[g.axes[0] : g.axes[-1] + 1]) // (g.outer * g.inner)
            pre = math.prod(src[: g.axes[0]]) * g.outer
            end = pre * size
            # the axes holding the digit's first and last index positions, widened until
            # the digit is a whole digit of their combined index (always possible)
            c = next(k for k in range(len(dst)) if prefix[k] <= pre < prefix[k + 1])
            d = next(k for k in range(len(dst)) if prefix[k] < end <= prefix[k + 1])
            c = max(k for k in range(c + 1) if pre % prefix[k] == 0)
            d = min(k for k in range(d, len(dst)) if prefix[k + 1] % end == 0)
            outer, inner = pre // prefix[c], prefix[d + 1] // end
            result.add(Group(tuple(range(c, d + 1)), g.perm, outer, inner))
        return frozenset(result)

    def _concat(self, i: int, node: onnx.NodeProto) -> State:
        out = self.shape(node.output[0])
        axis = int(attr(node, "axis", 0)) % len(out)
        others: dict[tuple[int, ...], Group] = {}
        segments: list[tuple[str, int]] = []
        along = False
        for name in node.input:
            for g in self._st(name):
                if axis in g.axes:
                    if g.axes != (axis,) or not g.aligned:
                        raise self._refuse(i, "concatenates along part of the scrambled grid")
                    along = True
                elif others.setdefault(g.axes, g) != g:
                    raise self._refuse(i, "concatenates tensors scrambled differently")
        for slot, name in enumerate(node.input):
            here = [g for g in self._st(name) if g.axes == (axis,)]
            segments.extend(here[0].perm if here else [("id", self.shape(name)[axis])])
            if {g.axes: g for g in self._st(name) if g.axes != (axis,)} != others:
                self._absorb(i, slot, others, out)
        result = set(others.values())
        if along:
            result.add(Group((axis,), merge(segments)))
        return frozenset(result)

    def _select(self, i: int, node: onnx.NodeProto, state: State, rank: int) -> State:
        dims = self.shape(node.input[0])
        if node.op_type == "Gather":
            axis = int(attr(node, "axis", 0)) % rank
            indices = self.index.constant(node.input[1])
            if indices is None:
                raise self._refuse(i, "selects with run-time indices")
            extra = np.asarray(indices).ndim - 1
            picks = {axis: np.asarray(indices).reshape(-1) % dims[axis]}
        else:
            if self.index.opset < 10:
                starts, ends = attr(node, "starts"), attr(node, "ends")
                axes, steps = attr(node, "axes"), None
            else:
                values = [self.index.constant(n) if n else None for n in node.input[1:5]]
                if any(v is None for v in values[:2]) or any(
                    n and v is None for n, v in zip(node.input[3:5], values[2:], strict=False)
                ):
                    raise self._refuse(i, "slices with run-time bounds")
                starts, ends = values[0], values[1]
                axes = values[2] if len(values) > 2 else None
                steps = values[3] if len(values) > 3 else None
            first = [int(v) for v in np.asarray(starts).reshape(-1)]
            last = [int(v) for v in np.asarray(ends).reshape(-1)]
            where = (
                list(range(len(first)))
                if axes is None
                else [int(a) % rank for a in np.asarray(axes).reshape(-1)]
            )
            stride = [1] * len(first) if steps is None else [int(v) for v in np.asarray(steps)]
            picks = {}
            for a, s, e, st in zip(where, first, last, stride, strict=True):
                picks[a % rank] = np.arange(dims[a % rank])[slice(s, e, st)]
            extra = 0
        result = set()
        for g in state:
            touched = [a for a in g.axes if a in picks]
            if not touched:
                result.add(g.shifted(extra if node.op_type == "Gather" and g.axes[0] > axis else 0))
                continue
            if len(g.axes) > 1 or not g.aligned:
                raise self._refuse(i, "selects part of the scrambled block grid")
            restricted = restrict(g.perm, picks[g.axes[0]])
            if restricted is None or (extra != 0 and any(k == "pi" for k, _ in restricted)):
                raise self._refuse(i, "picks tokens by their position")
            if any(k == "pi" for k, _ in restricted):
                result.add(Group(g.axes, restricted))
        return frozenset(result)
