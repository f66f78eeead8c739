"""Proof that moving whole blocks can be compensated: a token-permutation analysis.

Starting from the stem output (scrambled along its block grid), every node that
reads a scrambled tensor must be permutation-equivariant over the scrambled axes
(elementwise ops, LayerNorm over features, token-wise MatMul, attention, ...), or
invariant (pooling over tokens), or combine the tokens with a *constant* laid out
along them (a position embedding, a token-mixing weight) which can be permuted
with the same key. Any other node (a spatial Conv, a Pad, a Gather of a patch
token, ...) stops the proof and the model is refused.
"""

from __future__ import annotations

import onnx

from onnx_selenc.blockwise._graph import attr
from onnx_selenc.blockwise._propagation import TokenStates
from onnx_selenc.blockwise._tokens import INVARIANT, ConstantEdit, Group, State
from onnx_selenc.exceptions import UnsupportedModel

_ELEMENTWISE = frozenset(
    [
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Max",
        "Min",
        "Sum",
        "Mean",
        "Where",
        "Equal",
        "Less",
        "LessOrEqual",
        "Greater",
        "GreaterOrEqual",
        "And",
        "Or",
        "Xor",
        "Mod",
        "PRelu",
        "BitShift",
    ]
)
_UNARY = frozenset(
    [
        "Relu",
        "Gelu",
        "Erf",
        "Sigmoid",
        "Tanh",
        "Sqrt",
        "Exp",
        "Log",
        "Neg",
        "Abs",
        "Identity",
        "Cast",
        "CastLike",
        "Softplus",
        "Softsign",
        "Reciprocal",
        "Clip",
        "LeakyRelu",
        "Elu",
        "Selu",
        "Celu",
        "HardSigmoid",
        "HardSwish",
        "Mish",
        "Sin",
        "Cos",
        "Floor",
        "Ceil",
        "Round",
        "Sign",
        "Not",
        "IsNaN",
        "IsInf",
        "ThresholdedRelu",
        "Dropout",
        "Swish",
    ]
)
_RESHAPES = frozenset(("Reshape", "Flatten", "Squeeze", "Unsqueeze"))
_REDUCES = frozenset(
    [
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    ]
)
_GLOBAL_POOLS = frozenset(("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"))
_SOFTMAXES = frozenset(("Softmax", "LogSoftmax", "Hardmax"))
_SPATIAL_NORMS = frozenset(("InstanceNormalization", "GroupNormalization"))


class TokenAnalysis(TokenStates):
    """Proves token-permutation invariance of a model after its patch stem."""

    def run(self) -> tuple[tuple[int, int], tuple[ConstantEdit, ...]]:
        """Analyse the graph.

        Returns:
            The block grid and the constant edits that make the model invariant.

        Raises:
            UnsupportedModel: If equivariance cannot be established.
        """
        stem_out = self.index.node(self.conv_index).output[0]
        dims = self.shape(stem_out)
        grid = (int(dims[2]), int(dims[3]))
        if grid[0] * grid[1] < 2:
            raise UnsupportedModel("block scrambling needs at least two blocks")
        self.states[stem_out] = frozenset({Group((2, 3), (("pi", grid[0] * grid[1]),))})
        for i, node in enumerate(self.index.graph.node):
            if i == self.conv_index or not (self.reads[i] & self.states.keys()):
                continue
            self.checked += 1
            outs = self._rule(i, node)
            for name, state in zip(node.output, outs, strict=False):
                if name and state:
                    self.states[name] = state
        for out in self.index.graph.output:
            if out.name in self.states:
                raise UnsupportedModel(
                    f"block scrambling: model output '{out.name}' still depends on the block order"
                    " (no pooling over the tokens before it)"
                )
        return grid, self._edits()

    def _rule(self, i: int, node: onnx.NodeProto) -> list[State]:  # noqa: C901
        op = node.op_type
        n_out = len(node.output)
        if node.domain not in ("", "ai.onnx"):
            raise self._refuse(i, f"is a custom-domain op ({node.domain})")
        if op in ("Shape", "Size"):
            return [INVARIANT]
        if not set(node.input) & self.states.keys():
            raise self._refuse(i, "reads a scrambled tensor inside a subgraph")
        if op in _ELEMENTWISE:
            return [self._broadcast(i, node, [s for s, n in enumerate(node.input) if n])]
        if op in _UNARY:
            return [self._only_first(i, node)] * n_out
        if op in ("MatMul", "Gemm"):
            return [self._contract(i, node)]
        if op == "Concat":
            return [self._concat(i, node)]
        state = self._only_first(i, node)
        rank = len(self.shape(node.input[0]))
        if op in _RESHAPES:
            return [self._reshape(i, node, state)]
        if op == "Transpose":
            perm = [int(p) for p in attr(node, "perm", list(range(rank))[::-1])]
            result = set()
            for g in state:
                new = [perm.index(a) for a in g.axes]
                if new != list(range(new[0], new[0] + len(new))):
                    raise self._refuse(i, "splits or reorders the scrambled block grid")
                result.add(g.moved(new))
            return [frozenset(result)]
        if op == "Expand":
            shift = len(self.shape(node.output[0])) - rank
            return [frozenset(g.shifted(shift) for g in state)]
        if op in _REDUCES or op in ("ArgMax", "ArgMin"):
            if op in _REDUCES:
                axes = self._axes_input(i, node, 1, "axes")
                if not axes and attr(node, "noop_with_empty_axes", 0):
                    return [state]
            else:
                axes = [int(attr(node, "axis", 0))]
            reduced = {a % rank for a in axes} if axes else set(range(rank))
            if op.startswith("Arg") and any(set(g.axes) & reduced for g in state):
                raise self._refuse(i, "picks a token by its position")
            return [self._reduce(i, state, rank, reduced, bool(attr(node, "keepdims", 1)))]
        if op in _GLOBAL_POOLS:
            return [self._reduce(i, state, rank, set(range(2, rank)), True)]
        if op in _SOFTMAXES:
            legacy = self.index.opset < 13
            axis = int(attr(node, "axis", 1 if legacy else -1)) % rank
            for g in state:
                if (legacy and min(g.axes) < axis <= max(g.axes)) or (
                    not legacy and axis in g.axes and len(g.axes) > 1
                ):
                    raise self._refuse(i, "normalises across part of the scrambled grid")
            return [state]
        if op == "LpNormalization":
            axis = int(attr(node, "axis", -1)) % rank
            if any(axis in g.axes and len(g.axes) > 1 for g in state):
                raise self._refuse(i, "normalises across part of the scrambled grid")
            return [state]
        if op == "LayerNormalization":
            return self._layer_norm(i, node, rank)
        if op == "BatchNormalization" or op in _SPATIAL_NORMS:
            low = 1 if op == "BatchNormalization" else 2
            if any(min(g.axes) < low for g in state):
                raise self._refuse(i, "normalises over the scrambled axis per channel")
            return [state] + [INVARIANT] * (n_out - 1)
        if op == "Conv":
            return [self._pointwise_conv(i, node, state)]
        if op == "Split":
            axis = int(attr(node, "axis", 0)) % rank
            if any(axis in g.axes for g in state):
                raise self._refuse(i, "splits the tokens")
            return [state] * n_out
        if op in ("Slice", "Gather"):
            return [self._select(i, node, state, rank)]
        if op in (
            "Pad",
            "MaxPool",
            "AveragePool",
            "LpPool",
            "Resize",
            "ConvTranspose",
            "DepthToSpace",
            "SpaceToDepth",
            "Upsample",
        ):
            raise self._refuse(i, "mixes neighbouring positions (a spatial operation)")
        raise self._refuse(i, "is not known to be equivariant to a permutation of the tokens")

    def _contract(self, i: int, node: onnx.NodeProto) -> State:  # noqa: C901
        out = self.shape(node.output[0])
        ra, rb, r = len(self.shape(node.input[0])), len(self.shape(node.input[1])), len(out)
        if node.op_type == "MatMul":
            if ra < 2 or rb < 2:
                raise self._refuse(i, "is a 1-D product over scrambled tokens")
            amap = {ax: ax + r - ra for ax in range(ra - 2)} | {ra - 2: r - 2, ra - 1: -1}
            bmap = {ax: ax + r - rb for ax in range(rb - 2)} | {rb - 2: -1, rb - 1: r - 1}
        else:
            ta, tb = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
            amap = {ta: 0, 1 - ta: -1}
            bmap = {tb: -1, 1 - tb: 1}
        groups: dict[tuple[int, ...], Group] = {}
        contracted: list[Group | None] = []
        for slot, amap_ in ((0, amap), (1, bmap)):
            k_group = None
            for g in self._st(node.input[slot]):
                mapped = [amap_[a] for a in g.axes]
                if -1 in mapped:
                    if len(mapped) > 1:
                        raise self._refuse(i, "contracts part of the scrambled grid")
                    k_group = g
                elif groups.setdefault(tuple(mapped), g.moved(mapped)) != g.moved(mapped):
                    raise self._refuse(i, "combines tensors scrambled differently")
            contracted.append(k_group)
        ka, kb = contracted
        if ka is not None and kb is not None and ka.move(()) != kb.move(()):
            raise self._refuse(i, "contracts tokens scrambled differently")
        for slot, amap_, k_group in ((1, bmap, ka), (0, amap, kb)):
            if k_group is not None and contracted[slot] is None:
                name = node.input[slot]
                if not self.index.is_constant(name):
                    raise self._refuse(i, "contracts the scrambled tokens with a computed tensor")
                k_axis = next(a for a, m in amap_.items() if m == -1)
                self._edit(i, slot, name, k_group.move((k_axis,)))
        for slot, amap_ in ((0, amap), (1, bmap)):
            inverse = {m: a for a, m in amap_.items() if m != -1}
            own = {g.axes: g for g in self._st(node.input[slot])}
            dims = self.shape(node.input[slot])
            for axes, group in groups.items():
                local = tuple(inverse.get(a, -1) for a in axes)
                if own.get(local) == group.moved(local) or all(
                    a < 0 or dims[a] == 1 for a in local
                ):
                    continue
                if min(local) >= 0 and self.index.is_constant(node.input[slot]):
                    self._edit(i, slot, node.input[slot], group.move(local))
                    continue
                raise self._refuse(i, "multiplies scrambled tokens with an unscrambled tensor")
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            if node.input[2] in self.states:
                raise self._refuse(i, "adds a scrambled bias")
            self._absorb(i, 2, groups, out)
        return frozenset(groups.values())

    def _layer_norm(self, i: int, node: onnx.NodeProto, rank: int) -> list[State]:
        state = self._st(node.input[0])
        axis = int(attr(node, "axis", -1)) % rank
        normed = set(range(axis, rank))
        for g in state:
            if set(g.axes) & normed and not set(g.axes) <= normed:
                raise self._refuse(i, "normalises across part of the scrambled grid")
        groups = {g.axes: g for g in state}
        for slot in (1, 2):
            if len(node.input) > slot and node.input[slot]:
                if node.input[slot] in self.states:
                    raise self._refuse(i, "has scrambled scale or bias")
                self._absorb(i, slot, groups, self.shape(node.input[0]))
        stats = frozenset(g for g in state if not set(g.axes) & normed)
        return [state, stats, stats]

    def _pointwise_conv(self, i: int, node: onnx.NodeProto, state: State) -> State:
        weight = self.shape(node.input[1])
        kernel = list(attr(node, "kernel_shape", weight[2:]))
        spatial = len(weight) - 2
        if (
            any(k != 1 for k in kernel)
            or any(s != 1 for s in attr(node, "strides", [1]))
            or any(attr(node, "pads", [0]))
            or any(d != 1 for d in attr(node, "dilations", [1]))
            or attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")
        ):
            raise self._refuse(
                i,
                f"mixes neighbouring positions (kernel {kernel}): only 1x1 convolutions act"
                " per block",
            )
        if any(min(g.axes) < 2 for g in state) or spatial < 1:
            raise self._refuse(i, "convolves over the scrambled axis")
        return state
