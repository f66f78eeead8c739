"""Graph walk: find every convolution weight in an ONNX model, wherever it lives.

A weight can be an initializer or the output of a Constant node, in the main graph
or in an If/Loop/Scan subgraph (resolved through the enclosing scopes), stored
inline or in an external data file, shared by several convs, in float16 or
float64, or quantized behind a DequantizeLinear. Weights the tool cannot reach
(graph inputs, values computed at run time) are reported, never skipped silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

# op type -> index of its weight input. Layout of every weight: the first two axes
# index the kernel (Conv: C_out x C_in/g; ConvTranspose: C_in x C_out/g), the rest
# are the spatial positions within the kernel.
CONV_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "ConvInteger": 1, "QLinearConv": 3}
# Shape-preserving ops a weight may pass through on its way to a conv.
_PASS_THROUGH = {"Identity": 0, "Cast": 0, "DequantizeLinear": 0}
_SUPPORTED_DTYPES = {
    np.dtype(np.float16),
    np.dtype(np.float32),
    np.dtype(np.float64),
    np.dtype(np.int8),
    np.dtype(np.uint8),
}
_ONNX_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class ConvWeight:
    """One convolution weight tensor and where it lives.

    Attributes:
        key: stable address, ``"<graph path>/<tensor name>"``; the main graph's path is
            empty, a subgraph's is ``"<node index>:<attribute>"`` per level.
        name: the tensor's name (initializer name or Constant node output).
        graph_path: the node-index/attribute steps from the main graph to the owning graph.
        storage: ``"initializer"`` or ``"constant"``.
        shape: tensor shape; kernels are indexed by the first two axes.
        dtype: numpy dtype name of the stored values.
        consumers: ``"<op type> '<node name>'"`` of every conv that reads the tensor.
        via: ops between the tensor and the conv (e.g. ``DequantizeLinear``).
        external: whether the values live in an external data file.
        data_inputs: the activation each consumer convolves (its input 0).
        groups: each consumer's ``group`` attribute.
        op_types: each consumer's op type.
    """

    key: str
    name: str
    graph_path: tuple[str, ...]
    storage: str
    shape: tuple[int, ...]
    dtype: str
    consumers: tuple[str, ...]
    via: tuple[str, ...]
    external: bool
    data_inputs: tuple[str, ...] = ()
    groups: tuple[int, ...] = ()
    op_types: tuple[str, ...] = ()

    @property
    def n_kernels(self) -> int:
        return int(self.shape[0] * self.shape[1])

    @property
    def kernel_size(self) -> int:
        return int(np.prod(self.shape[2:], dtype=np.int64)) if len(self.shape) > 2 else 1

    @property
    def n_weights(self) -> int:
        return self.n_kernels * self.kernel_size


@dataclass(frozen=True)
class UnsupportedConv:
    """A conv whose weight the tool cannot encrypt, and why."""

    node: str
    graph_path: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class ConvInventory:
    """Everything the walk found: encryptable weights (sorted by key) and refusals."""

    weights: tuple[ConvWeight, ...]
    unsupported: tuple[UnsupportedConv, ...]

    @property
    def total_weights(self) -> int:
        return sum(w.n_weights for w in self.weights)

    def by_key(self) -> dict[str, ConvWeight]:
        return {w.key: w for w in self.weights}


@dataclass(frozen=True)
class _Source:
    storage: str
    graph_path: tuple[str, ...]
    tensor: onnx.TensorProto


def graph_key(graph_path: tuple[str, ...], name: str) -> str:
    return "/".join((*graph_path, name))


def node_label(node: onnx.NodeProto, index: int) -> str:
    return f"{node.op_type} '{node.name or f'#{index}'}'"


def subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """Yield ``(step, subgraph)`` for every graph-valued attribute of ``node``."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for j, g in enumerate(attr.graphs):
                yield f"{attr.name}[{j}]", g


def walk_conv_weights(model: onnx.ModelProto) -> ConvInventory:
    """Find every Conv / ConvTranspose / QLinearConv / ConvInteger weight in ``model``.

    Args:
        model: the model; external data may or may not be loaded.

    Returns:
        The inventory of encryptable weights and of convs that cannot be handled.
    """
    found: dict[str, dict[str, object]] = {}
    unsupported: list[UnsupportedConv] = []
    _walk(model.graph, (), {}, found, unsupported)
    weights = []
    for key in sorted(found):
        entry = found[key]
        source = entry["source"]
        assert isinstance(source, _Source)
        t = source.tensor
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
        weights.append(
            ConvWeight(
                key=key,
                name=t.name,
                graph_path=source.graph_path,
                storage=source.storage,
                shape=tuple(int(d) for d in t.dims),
                dtype=dtype.name,
                consumers=tuple(entry["consumers"]),  # type: ignore[arg-type]
                via=tuple(entry["via"]),  # type: ignore[arg-type]
                external=t.data_location == onnx.TensorProto.EXTERNAL,
                data_inputs=tuple(entry["data_inputs"]),  # type: ignore[arg-type]
                groups=tuple(entry["groups"]),  # type: ignore[arg-type]
                op_types=tuple(entry["op_types"]),  # type: ignore[arg-type]
            )
        )
    return ConvInventory(weights=tuple(weights), unsupported=tuple(unsupported))


def _walk(
    graph: onnx.GraphProto,
    path: tuple[str, ...],
    outer: dict[str, _Source],
    found: dict[str, dict[str, object]],
    unsupported: list[UnsupportedConv],
) -> None:
    scope = dict(outer)
    graph_inputs = {i.name for i in graph.input}
    for init in graph.initializer:
        scope[init.name] = _Source("initializer", path, init)
        graph_inputs.discard(init.name)  # old IR lists initializers as inputs too
    producers: dict[str, tuple[int, onnx.NodeProto]] = {}
    for idx, node in enumerate(graph.node):
        for out in node.output:
            producers[out] = (idx, node)
        if node.op_type == "Constant" and node.domain in _ONNX_DOMAINS:
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None and value.type == onnx.AttributeProto.TENSOR:
                scope[node.output[0]] = _Source("constant", path, value.t)

    for idx, node in enumerate(graph.node):
        if node.op_type in CONV_WEIGHT_INPUT and node.domain in _ONNX_DOMAINS:
            _resolve_weight(node, idx, path, scope, producers, graph_inputs, found, unsupported)
        for step, sub in subgraphs(node):
            _walk(sub, (*path, f"{idx}:{step}"), scope, found, unsupported)


def _resolve_weight(
    node: onnx.NodeProto,
    idx: int,
    path: tuple[str, ...],
    scope: dict[str, _Source],
    producers: dict[str, tuple[int, onnx.NodeProto]],
    graph_inputs: set[str],
    found: dict[str, dict[str, object]],
    unsupported: list[UnsupportedConv],
) -> None:
    label = node_label(node, idx)
    w_index = CONV_WEIGHT_INPUT[node.op_type]
    if len(node.input) <= w_index or not node.input[w_index]:
        unsupported.append(UnsupportedConv(label, path, "has no weight input"))
        return
    name = node.input[w_index]
    via: list[str] = []
    while True:
        if name in producers and producers[name][1].op_type in _PASS_THROUGH:
            p_node = producers[name][1]
            via.append(p_node.op_type)
            name = p_node.input[_PASS_THROUGH[p_node.op_type]]
            continue
        break
    source = scope.get(name)
    if source is None:
        if name in graph_inputs:
            reason = f"weight '{name}' is a graph input, supplied at run time"
        elif name in producers:
            p_idx, p_node = producers[name]
            reason = f"weight '{name}' is computed at run time by {node_label(p_node, p_idx)}"
        else:
            reason = f"weight '{name}' comes from an enclosing graph input or is undefined"
        unsupported.append(UnsupportedConv(label, path, reason))
        return
    t = source.tensor
    dtype = helper.tensor_dtype_to_np_dtype(t.data_type) if t.data_type else None
    if dtype is None or np.dtype(dtype) not in _SUPPORTED_DTYPES:
        dname = onnx.TensorProto.DataType.Name(t.data_type)
        unsupported.append(UnsupportedConv(label, path, f"weight '{name}' has dtype {dname}"))
        return
    if len(t.dims) < 3 or any(d <= 0 for d in t.dims):
        unsupported.append(
            UnsupportedConv(label, path, f"weight '{name}' has shape {list(t.dims)}")
        )
        return
    key = graph_key(source.graph_path, name)
    entry = found.setdefault(
        key,
        {
            "source": source,
            "consumers": [],
            "via": [],
            "data_inputs": [],
            "groups": [],
            "op_types": [],
        },
    )
    entry["consumers"].append(label)  # type: ignore[union-attr]
    entry["data_inputs"].append(node.input[0])  # type: ignore[union-attr]
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    entry["groups"].append(int(group))  # type: ignore[union-attr]
    entry["op_types"].append(node.op_type)  # type: ignore[union-attr]
    for op in via:
        if op not in entry["via"]:  # type: ignore[operator]
            entry["via"].append(op)  # type: ignore[union-attr]
