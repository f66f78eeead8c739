"""What ONNX Runtime receives in memory rather than inside the serialised graph.

Large main-graph weights reach ONNX Runtime as in-memory external initializers
(``SessionOptions.add_external_initializers``); the model marks them with a location
that names no file. No tensor handed to ONNX Runtime may name a real file: its bytes
would be read again, after the loader authenticated its own copy of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx

from onnx_selenc._onnx.graph import ONNX_DOMAINS, subgraphs
from onnx_selenc._onnx.tensors import all_tensors, iter_tensors
from onnx_selenc.exceptions import FormatError

# The location given to tensors whose values ONNX Runtime receives in memory. No such
# file exists (':' cannot even be in a Windows file name): were ONNX Runtime ever to
# read the location instead of using the value, it would fail, never run masked weights.
IN_MEMORY = "onnx-selenc:in-memory"


# TensorProto.data_location (field 14, varint) = EXTERNAL as serialised: the key byte
# 14 << 3 = 0x70, then 1. Absent from a message's bytes, no tensor in it is external.
_EXTERNAL_RECORD = bytes(
    [onnx.TensorProto.DESCRIPTOR.fields_by_name["data_location"].number << 3, 1]
)


# The standard operators with graph attributes (see _may_hold_subgraphs).
_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def mark_in_memory(tensor: onnx.TensorProto, nbytes: int) -> None:
    """Make a tensor external at :data:`IN_MEMORY` (its value goes to ONNX Runtime apart)."""
    del tensor.external_data[:]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", IN_MEMORY), ("offset", "0"), ("length", str(nbytes))):
        tensor.external_data.add(key=k, value=v)


def file_references(
    model: onnx.ModelProto,
    listed: Sequence[onnx.TensorProto] | None = None,
    skeleton: bytes | None = None,
) -> list[str]:
    """Names of the tensors whose data the model says is in a file (not in memory).

    ``listed`` (``iter_tensors(model.graph)``, as the graph is now) and ``skeleton``
    (the digest's, of the same graph) spare the walk over every node's attributes:
    the skeleton keeps every tensor outside ``listed`` whole, so with no
    ``data_location: EXTERNAL`` record in it, only ``listed`` can name a file.
    """
    if listed is not None and skeleton is not None and _EXTERNAL_RECORD not in skeleton:
        tensors: Iterable[onnx.TensorProto] = listed
    else:
        # Local functions too, and the graphs inside their nodes (an If branch's
        # initializers), which all_tensors does not open.
        tensors = [*iter_tensors(model.graph), *all_tensors(model), *_function_graphs(model)]
    found = []
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in t.external_data}.get("location")
            if location != IN_MEMORY:
                found.append(t.name)
    return found


def _function_graphs(model: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    """Every tensor of the subgraphs held by the nodes of the model's local functions."""
    for function in model.functions:
        for node in function.node:
            for _, graph in subgraphs(node):
                yield from iter_tensors(graph)


def refuse_file_references(
    model: onnx.ModelProto,
    listed: Sequence[onnx.TensorProto] | None = None,
    skeleton: bytes | None = None,
) -> None:
    """Refuse a model that would make ONNX Runtime read tensor data from a file.

    The loader reads external data once, into memory, and authenticates that copy; a
    tensor left pointing at a file (external data in a local function, outside the
    digest) would be read unchecked. ``listed`` and ``skeleton``: see
    :func:`file_references`.

    Raises:
        FormatError: such a tensor.
    """
    names = file_references(model, listed, skeleton)
    if names:
        raise FormatError(
            f"tensor '{names[0]}' keeps its data in an external file where the loader "
            "does not read it (only graph tensors may be external)"
        )


def _memory_candidates(model: onnx.ModelProto) -> dict[int, tuple[onnx.TensorProto, str]]:
    """Each main-graph tensor ONNX Runtime accepts as an in-memory initializer, by ``id()``.

    That is an initializer, or the value of a Constant node (ONNX Runtime turns those
    into initializers), that some node reads: an unused one is dropped before the
    replacement and would be an error. A name given twice is left alone.
    """
    graph = model.graph
    nodes = graph.node[:]  # slices: upb iterates repeated fields slowly (see iter_tensors)
    # One pass over the nodes (this runs on every load; Paddle exports hold hundreds).
    read: set[str] = {name for node in nodes for name in node.input[:]}
    candidates: list[tuple[onnx.TensorProto, str]] = [(t, t.name) for t in graph.initializer]
    for node in nodes:
        op = node.op_type
        if op == "Constant" and node.domain in ONNX_DOMAINS:
            if node.output:
                for attr in node.attribute[:]:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        candidates.append((attr.t, node.output[0]))
            continue
        if (op in _SUBGRAPH_OPS or node.domain not in ONNX_DOMAINS) and node.attribute:
            for _, sub in subgraphs(node):
                _inputs_read(sub, read)
    seen: dict[str, int] = {}
    for _, name in candidates:
        seen[name] = seen.get(name, 0) + 1
    # The values hold the tensors, which keeps their ids unique while the dict lives.
    return {
        id(tensor): (tensor, name)
        for tensor, name in candidates
        if name and name in read and seen[name] == 1
    }


def _inputs_read(graph: onnx.GraphProto, names: set[str] | None = None) -> set[str]:
    """Every value name a node of the graph or of its subgraphs reads."""
    names = set() if names is None else names
    for node in graph.node:
        names.update(node.input)
        if _may_hold_subgraphs(node):
            for _, sub in subgraphs(node):
                _inputs_read(sub, names)
    return names


def _may_hold_subgraphs(node: onnx.NodeProto) -> bool:
    """Cheaper than :func:`subgraphs` on every node: of the standard operators only
    If, Loop, Scan and SequenceMap have graph attributes (the checker refuses others)."""
    return bool(node.attribute) and (
        node.domain not in ONNX_DOMAINS or node.op_type in _SUBGRAPH_OPS
    )
