"""Which convolutions' output channels can be wired (permuted under a key), and why not.

Keyed wiring permutes a conv's output channels (its weight's first axis, with its bias
and the BatchNormalization right after it) and leaves every consumer's input side as it
was, so the public model runs with channels in the wrong places until level 1 puts
them back. A permutation only hides something when a later layer mixes the channels
(a Conv, Gemm or MatMul); one whose channels reach the model's output unmixed would
only reorder outputs, which labelled data undoes at once. This module only reads the
graph: :func:`plan_wiring` says which layers qualify and, for the others, why not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import onnx

from onnx_selenc._onnx.graph import ConvInventory, ConvWeight, subgraphs, tensor_address
from onnx_selenc._onnx.tensors import graph_constants

# A consumer of these ops mixes channels: a permutation before it is a secret.
_MIXING = frozenset(
    {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "Gemm", "MatMul",
     "MatMulInteger", "QLinearMatMul", "Einsum", "LSTM", "GRU", "RNN"}
)  # fmt: skip
# Consumers that read only a tensor's shape: the channel order is of no concern to them.
_SHAPE_ONLY = frozenset({"Shape", "Size"})
_BN_PARAMS = 4  # scale, B, mean, var: per channel, like the conv's bias
_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
)


@dataclass(frozen=True)
class WiredLayer:
    """One conv whose output channels get a secret order.

    Attributes:
        node: the conv node's label.
        weight: address of its weight (permuted along axis 0).
        companions: addresses of the per-channel tensors permuted with it (its bias,
            the parameters of a BatchNormalization reading only its output).
        channels: output channels.
        group_size: output channels per group; permutations stay within a group.
    """

    node: str
    weight: str
    companions: tuple[str, ...]
    channels: int
    group_size: int

    @property
    def tensors(self) -> tuple[str, ...]:
        return (self.weight, *self.companions)


@dataclass(frozen=True)
class UnwiredLayer:
    """A conv left in its true order, and why."""

    node: str
    reason: str


@dataclass(frozen=True)
class WiringPlan:
    """Every conv of the graph walk: wired, or not with the reason."""

    wired: tuple[WiredLayer, ...]
    unwired: tuple[UnwiredLayer, ...]


def plan_wiring(model: onnx.ModelProto, inventory: ConvInventory) -> WiringPlan:
    """Which of ``inventory``'s convs can be wired in ``model`` (functions inlined).

    Only main-graph convs with a weight of their own, stored as it is used (no
    DequantizeLinear or Cast on the way), qualify; see :func:`_why_not`.
    """
    index = _GraphIndex(model)
    wired: list[WiredLayer] = []
    unwired: list[UnwiredLayer] = []
    for w in inventory.weights:
        label = w.consumers[0] if len(w.consumers) == 1 else w.name
        problem, layer = _why_not(w, index)
        if layer is not None:
            wired.append(layer)
        else:
            unwired.append(UnwiredLayer(label, problem))
    return WiringPlan(tuple(wired), tuple(unwired))


class _GraphIndex:
    """The main graph's producers, consumers and constants, and every name's use count."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.nodes = list(graph.node)
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(i)
        self.outputs = {o.name for o in graph.output}
        self.conv_of: dict[str, onnx.NodeProto] = {}
        for node in self.nodes:
            if node.op_type == "Conv" and len(node.input) > 1:
                self.conv_of.setdefault(node.input[1], node)
        self.constants = graph_constants(graph)
        # Every reference, subgraphs' outer-scope reads and graph outputs included.
        self.uses = Counter(_references(graph))

    def used_once(self, name: str) -> bool:
        return self.uses[name] == 1 and name not in self.outputs


def _references(graph: onnx.GraphProto) -> Iterator[str]:
    for node in graph.node:
        yield from (n for n in node.input if n)
        for _, sub in subgraphs(node):
            yield from _references(sub)
    yield from (o.name for o in graph.output)


def _why_not(w: ConvWeight, index: _GraphIndex) -> tuple[str, WiredLayer | None]:
    """The reason ``w``'s conv cannot be wired, or its :class:`WiredLayer`."""
    if w.graph_path or any(w.consumer_paths):
        return "inside a subgraph", None
    if len(w.consumers) != 1:
        return f"its weight is shared by {len(w.consumers)} convs", None
    if w.op_types[0] != "Conv":
        return f"{w.op_types[0]}: only Conv output channels are wired", None
    if w.via:
        return f"its weight passes through {', '.join(w.via)}", None
    if w.storage != "initializer" and w.name not in index.constants:
        return "its weight is not a constant of its own", None
    if not index.used_once(w.name):
        return "its weight is read by other nodes too", None
    channels, group = int(w.shape[0]), max(1, w.groups[0])
    if channels < 2:
        return "it has one output channel", None
    if channels // group < 2:
        return "depthwise: one output channel per group", None
    node = index.conv_of[w.name]
    companions: list[str] = []
    if len(node.input) > 2 and node.input[2]:
        if not _own_vector(node.input[2], channels, index):
            return "its bias is not a constant of its own", None
        companions.append(node.input[2])
    out = node.output[0]
    readers = index.consumers.get(out, [])
    if len(readers) == 1 and out not in index.outputs:
        bn = index.nodes[readers[0]]
        if bn.op_type == "BatchNormalization" and bn.input[0] == out:
            params = list(bn.input[1 : 1 + _BN_PARAMS])
            if len(params) != _BN_PARAMS or not all(
                _own_vector(p, channels, index) for p in params
            ):
                return "the BatchNormalization after it has shared or computed parameters", None
            companions += params
            out = bn.output[0]
    problem = _unmixed_path(out, index)
    if problem:
        return problem, None
    return "", WiredLayer(
        w.consumers[0],
        w.address,
        tuple(tensor_address((), c) for c in companions),
        channels,
        channels // group,
    )


def _own_vector(name: str, channels: int, index: _GraphIndex) -> bool:
    """``name`` is a constant of shape ``(channels,)`` that only one node reads."""
    tensor = index.constants.get(name)
    return (
        tensor is not None
        and list(tensor.dims) == [channels]
        and tensor.data_type in _FLOAT_TYPES
        and index.used_once(name)
    )


def _unmixed_path(start: str, index: _GraphIndex) -> str:
    """Why channels from ``start`` need no key to be put right, or ``""`` if every path
    from it meets a layer that mixes channels before the model's output."""
    seen = {start}
    todo = [start]
    while todo:
        name = todo.pop()
        if name in index.outputs:
            return "its channels reach the model's output with no layer mixing them"
        for i in index.consumers.get(name, []):
            node = index.nodes[i]
            if node.op_type in _MIXING or node.op_type in _SHAPE_ONLY:
                continue
            if any(True for _ in subgraphs(node)):
                return f"its channels are read by a {node.op_type} with subgraphs"
            for out in node.output:
                if out and out not in seen:
                    seen.add(out)
                    todo.append(out)
    return ""
