"""Read-side helpers over an ONNX graph: producers, consumers, constants, attributes."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_selenc.exceptions import UnsupportedModel


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A readable name for a node (its name, or ``op#index`` when unnamed)."""
    return node.name or f"{node.op_type}#{index}"


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """Return the value of attribute ``name`` of ``node`` (or ``default``)."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for a in node.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                names |= _subgraph_inputs(sub)
    return names


def opset_version(model: onnx.ModelProto) -> int:
    """Version of the default ("ai.onnx") opset the model imports."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 1


class GraphIndex:
    """Lookups over the main graph of a model (built once, read-only).

    Attributes:
        graph: The indexed graph.
        initializers: Initializer tensors by name.
        producer: Index of the node producing each tensor.
        consumers: For each tensor, the indices of nodes reading it (a node whose
            subgraph reads it counts as a reader).
        outputs: Names of the graph outputs.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.opset = opset_version(model)
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, node in enumerate(self.graph.node):
            for out in node.output:
                if out:
                    self.producer[out] = i
            used = {name for name in node.input if name}
            for a in node.attribute:
                for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    used |= _subgraph_inputs(sub)
            for name in sorted(used):
                self.consumers[name].append(i)
        self.outputs = {o.name for o in self.graph.output}

    def node(self, index: int) -> onnx.NodeProto:
        """The node at ``index``."""
        return self.graph.node[index]

    def resolve(self, name: str) -> str:
        """Follow Identity nodes back to the tensor they copy."""
        seen = 0
        while name in self.producer and self.node(self.producer[name]).op_type == "Identity":
            name = self.node(self.producer[name]).input[0]
            seen += 1
            if seen > 1000:
                break
        return name

    def is_constant(self, name: str) -> bool:
        """True when ``name`` is an initializer or a Constant output (through Identity)."""
        root = self.resolve(name)
        if root in self.initializers:
            return True
        return root in self.producer and self.node(self.producer[root]).op_type == "Constant"

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant node), else None.

        Raises:
            UnsupportedModel: If the Constant node uses a sparse value.
        """
        root = self.resolve(name)
        if root in self.initializers:
            return numpy_helper.to_array(self.initializers[root])
        if root not in self.producer:
            return None
        node = self.node(self.producer[root])
        if node.op_type != "Constant" or not node.attribute:
            return None
        a = node.attribute[0]
        if a.name == "sparse_value":
            raise UnsupportedModel(f"Constant '{root}' holds a sparse tensor (not supported)")
        value = helper.get_attribute_value(a)
        if isinstance(value, onnx.TensorProto):
            return numpy_helper.to_array(value)
        if a.name in ("value_float", "value_floats"):
            return np.asarray(value, dtype=np.float32)
        if a.name in ("value_int", "value_ints"):
            return np.asarray(value, dtype=np.int64)
        return None

    def use_sites(self, name: str) -> list[tuple[int, int]]:
        """``(node index, input slot)`` of every use of ``name``, looking through Identity.

        A node that reads ``name`` only inside a subgraph is reported with slot -1.
        """
        sites: list[tuple[int, int]] = []
        for i in self.consumers.get(name, []):
            node = self.node(i)
            slots = [s for s, n in enumerate(node.input) if n == name]
            if node.op_type == "Identity" and slots:
                sites.extend(self.use_sites(node.output[0]))
            else:
                sites.extend((i, s) for s in slots or [-1])
        return sites


def replace_constant(
    model: onnx.ModelProto, index: GraphIndex, name: str, value: np.ndarray
) -> None:
    """Overwrite the constant behind ``name`` (initializer or Constant node) in place.

    The new value keeps the original element type.

    Raises:
        UnsupportedModel: If ``name`` is not a rewritable constant.
    """
    root = index.resolve(name)
    graph = model.graph
    for i, init in enumerate(graph.initializer):
        if init.name == root:
            dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(value.astype(dtype), root))
            return
    if root in index.producer:
        node = graph.node[index.producer[root]]
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            dtype = helper.tensor_dtype_to_np_dtype(node.attribute[0].t.data_type)
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(value.astype(dtype), root))
            return
    raise UnsupportedModel(f"tensor '{name}' is not an initializer or Constant: cannot rewrite it")


def unique_name(model: onnx.ModelProto, base: str) -> str:
    """A tensor name based on ``base`` not used anywhere in the main graph."""
    used = {t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
    for node in model.graph.node:
        used.update(node.input)
        used.update(node.output)
    name, n = base, 0
    while name in used:
        n += 1
        name = f"{base}_{n}"
    return name


def tensor_shape(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    """Static dims (int), symbolic dims (str) or unknown (None) of a value; None if unranked."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)
