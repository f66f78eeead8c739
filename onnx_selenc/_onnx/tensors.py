"""Read and write the tensors the graph walk found, by their stable address."""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_selenc._onnx.graph import ConvWeight, subgraphs
from onnx_selenc.exceptions import FormatError


def owning_graph(model: onnx.ModelProto, graph_path: tuple[str, ...]) -> onnx.GraphProto:
    """Follow ``graph_path`` (``"<node index>:<attribute>"`` steps) from the main graph."""
    graph = model.graph
    for step in graph_path:
        idx_text, _, attr = step.partition(":")
        try:
            node = graph.node[int(idx_text)]
        except (ValueError, IndexError):
            raise FormatError(f"no subgraph at {'/'.join(graph_path)}") from None
        graph = dict(subgraphs(node)).get(attr)  # type: ignore[assignment]
        if graph is None:
            raise FormatError(f"no subgraph at {'/'.join(graph_path)}")
    return graph


def find_tensor(
    model: onnx.ModelProto, graph_path: tuple[str, ...], storage: str, name: str
) -> onnx.TensorProto:
    """Return the TensorProto (not a copy) holding a weight."""
    graph = owning_graph(model, graph_path)
    if storage == "initializer":
        for init in graph.initializer:
            if init.name == name:
                return init
    elif storage == "constant":
        for node in graph.node:
            if node.op_type == "Constant" and node.output and node.output[0] == name:
                for attr in node.attribute:
                    if attr.name == "value":
                        return attr.t
    raise FormatError(f"tensor '{name}' ({storage}) not found in the model")


def graph_constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """A graph's constant tensors by name, as :func:`find_tensor` chooses: the first
    initializer of that name, else the first Constant node with a ``value`` that
    outputs it."""
    found: dict[str, onnx.TensorProto] = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute[:]:  # a slice: see iter_tensors
                if attr.name == "value":
                    found.setdefault(node.output[0], attr.t)
                    break
    initializers: dict[str, onnx.TensorProto] = {}
    for t in graph.initializer:
        initializers.setdefault(t.name, t)
    return {**found, **initializers}


def weight_tensor(model: onnx.ModelProto, weight: ConvWeight) -> onnx.TensorProto:
    return find_tensor(model, weight.graph_path, weight.storage, weight.name)


def read_array(tensor: onnx.TensorProto, base_dir: str | os.PathLike[str] | None) -> np.ndarray:
    """Read a tensor's values, from its external data file if it has one."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        if base_dir is None:
            raise FormatError(f"tensor '{tensor.name}' has external data but no folder was given")
        info = external_info(tensor, base_dir)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        count = int(np.prod(tensor.dims, dtype=np.int64))
        # Read straight into the result (one copy, not a bytes object and then a cast).
        out = np.empty(count, dtype=dtype.newbyteorder("<"))
        view = out.data.cast("B")
        got = 0
        with open(info.path, "rb", buffering=0) as fh:
            fh.seek(info.offset)
            while got < len(view):
                n = fh.readinto(view[got:])
                if not n:
                    break
                got += n
        if got != count * dtype.itemsize:
            raise FormatError(f"external data of '{tensor.name}' is truncated in {info.path}")
        if out.dtype != dtype:  # a big-endian host
            out = out.astype(dtype)
        return out.reshape(tuple(tensor.dims))
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        # A size that does not fit the dims, an unknown data type: a malformed model.
        raise FormatError(f"tensor '{tensor.name}' is malformed: {exc}") from None


def _plain_dtypes() -> dict[int, np.dtype]:
    found = {}
    for code in onnx.TensorProto.DataType.values():
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code))
        except (KeyError, ValueError, TypeError):
            continue
        if dtype.kind in "fiub":
            found[code] = dtype.newbyteorder("<")
    return found


# ONNX data types whose raw data numpy reads as it is, with the little-endian dtype it
# reads them as: looked up per tensor on every load (onnx's helpers cost microseconds).
PLAIN_DTYPES: Mapping[int, np.dtype] = MappingProxyType(_plain_dtypes())


# Plain numeric dtypes: from_array stores them as little-endian raw_data, nothing else.
_RAW_KINDS = "fiub"
_RAW_DTYPES = frozenset(
    np.dtype(t)
    for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
              np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)
)  # fmt: skip
_T = onnx.TensorProto
# Where ONNX's typed fields keep each data type (onnx.proto's comments on each field).
_TYPED_FIELD: dict[int, str] = {
    _T.FLOAT: "float_data", _T.DOUBLE: "double_data", _T.INT64: "int64_data",
    _T.UINT32: "uint64_data", _T.UINT64: "uint64_data", _T.INT32: "int32_data",
    _T.INT16: "int32_data", _T.INT8: "int32_data", _T.UINT16: "int32_data",
    _T.UINT8: "int32_data", _T.BOOL: "int32_data", _T.FLOAT16: "int32_data",
    _T.BFLOAT16: "int32_data",
}  # fmt: skip
_VALUE_FIELDS = (
    "raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data",
    "uint64_data",
)  # fmt: skip


def write_array(tensor: onnx.TensorProto, values: np.ndarray) -> None:
    """Replace a tensor's values in place, in the field that holds them now.

    A tensor stored in a typed field (``float_data``, fp16 bits in ``int32_data``...)
    keeps it, so that restoring the originals gives the file's bytes back; anything
    else becomes inline ``raw_data``. Every other field (name, ``doc_string``, an
    explicit ``data_location``, metadata) is kept; an external tensor becomes inline.
    """
    if tuple(values.shape) != tuple(tensor.dims):
        raise ValueError(f"shape {values.shape} does not fit tensor '{tensor.name}'")
    values = np.ascontiguousarray(values)
    if tensor.data_location == _T.EXTERNAL:
        del tensor.external_data[:]
        tensor.ClearField("data_location")
    field = _typed_field(tensor, values)
    if field is not None:
        _write_typed(tensor, field, values)
        return
    if values.dtype.kind not in _RAW_KINDS or values.dtype not in _RAW_DTYPES:
        made = numpy_helper.from_array(values, tensor.name)  # bfloat16, strings...
        _clear_values(tensor)
        tensor.data_type = made.data_type
        if made.HasField("raw_data"):
            tensor.raw_data = made.raw_data
        tensor.string_data.extend(made.string_data)
        return
    # from_array's bytes, without building a second tensor to copy them from.
    _clear_values(tensor)
    tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
    if sys.byteorder == "big":
        values = values.astype(values.dtype.newbyteorder("<"))
    tensor.raw_data = values.tobytes()


def _clear_values(tensor: onnx.TensorProto) -> None:
    for name in _VALUE_FIELDS:
        tensor.ClearField(name)


def _typed_field(tensor: onnx.TensorProto, values: np.ndarray) -> str | None:
    """The typed field holding the tensor's values, if it is the one for the values'
    type (a tensor with raw data, or none, or of another type, gets raw data)."""
    field = _TYPED_FIELD.get(tensor.data_type)
    if field is None or tensor.HasField("raw_data") or not len(getattr(tensor, field)):
        return None
    try:
        same_type = onnx.helper.np_dtype_to_tensor_dtype(values.dtype) == tensor.data_type
    except (KeyError, TypeError, ValueError):
        return None
    return field if same_type else None


# Packed fixed-width fields, written as protobuf's wire bytes (parsed in C): ten times
# faster than a list of Python floats for a float_data weight of millions of values.
_PACKED_FIXED = {"float_data": (4, "<f4"), "double_data": (10, "<f8")}


def _write_typed(tensor: onnx.TensorProto, field: str, values: np.ndarray) -> None:
    flat = values.reshape(-1)
    container = getattr(tensor, field)
    if field in _PACKED_FIXED:
        number, dtype = _PACKED_FIXED[field]
        raw = flat.astype(dtype).tobytes()
        tensor.ClearField(field)
        tensor.MergeFromString(encode_varint(number << 3 | 2) + encode_varint(len(raw)) + raw)
        return
    if tensor.data_type in (_T.FLOAT16, _T.BFLOAT16):
        stored = flat.view(np.uint16).astype(np.int32)  # the bits, as ONNX keeps them
    else:
        wide = {"int64_data": np.int64, "uint64_data": np.uint64, "int32_data": np.int32}[field]
        stored = flat.astype(wide)
    del container[:]
    container.extend(stored.tolist())


def encode_varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative integer."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def every_tensor(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of a model, sparse ones' values and indices included: graphs
    (initializers, then each node's attributes and subgraphs, depth first), then the
    local functions' nodes. The same order for the same structure, whatever the values."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in (
                *([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []),
                *attr.sparse_tensors,
            ):
                yield sparse.values
                yield sparse.indices
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for g in attr.graphs:
                yield from _graph_tensors(g)


class ExternalInfo:
    """Where an external tensor's bytes are: file, offset and length (bounds-checked)."""

    def __init__(self, path: Path, offset: int, length: int | None) -> None:
        self.path, self.offset, self.length = path, offset, length


def external_info(tensor: onnx.TensorProto, base_dir: str | os.PathLike[str]) -> ExternalInfo:
    """Where an external tensor's bytes are, every entry checked against the file.

    Raises:
        FormatError: no or an unusable location (see :func:`external_location`), an
            offset or length that is not a decimal integer, or one past the file's end.
    """
    entries = _external_entries(tensor)
    path, size = _external_file(tensor, base_dir, entries.get("location"))
    offset = _external_number(tensor, entries.get("offset", "0"), "offset")
    length = (
        None if "length" not in entries else _external_number(tensor, entries["length"], "length")
    )
    if offset > size or (length is not None and offset + length > size):
        raise FormatError(f"external data of '{tensor.name}' lies outside {path.name}")
    return ExternalInfo(path, offset, length)


def external_location(tensor: onnx.TensorProto, base_dir: str | os.PathLike[str]) -> Path:
    """The file holding an external tensor's data: resolved, inside ``base_dir``, a file.

    Raises:
        FormatError: no location, one that is not a file name (not UTF-8, a NUL byte),
            points outside ``base_dir``, or names no readable regular file.
    """
    return _external_file(tensor, base_dir, _external_entries(tensor).get("location"))[0]


def _external_entries(tensor: onnx.TensorProto) -> dict[object, object]:
    # protobuf hands over bytes for a key or value that is not UTF-8: kept, and refused
    # where it is used, instead of failing in Path or int with an undocumented error.
    return {e.key: e.value for e in tensor.external_data}


def _external_file(
    tensor: onnx.TensorProto, base_dir: str | os.PathLike[str], location: object
) -> tuple[Path, int]:
    """Resolve, contain and stat a location; returns the path and the file's size."""
    if not location:
        raise FormatError(f"tensor '{tensor.name}' is external but names no file")
    if not isinstance(location, str) or "\0" in location:
        raise FormatError(f"the external data location of '{tensor.name}' is not a file name")
    base = Path(base_dir).resolve()
    try:
        path = (base / location).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name too long
        raise FormatError(
            f"the external data location of '{tensor.name}' cannot be resolved"
        ) from None
    # A model must not make us read files outside its own folder.
    if base != path and base not in path.parents:
        raise FormatError(f"external data of '{tensor.name}' points outside the model folder")
    try:
        info = path.stat()
    except (OSError, ValueError):
        info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        raise FormatError(f"external data file {path} of '{tensor.name}' is missing")
    return path, info.st_size


_DECIMAL = re.compile(r"[0-9]{1,19}")  # int() would also take "+1", " 1", "1_0", "١"


def _external_number(tensor: onnx.TensorProto, value: object, field: str) -> int:
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
        raise FormatError(
            f"external data entry of '{tensor.name}' is malformed: its {field} is not "
            "a decimal integer"
        )
    return int(value)


def has_external_data(model: onnx.ModelProto) -> bool:
    """Whether any tensor of the model (any graph) stores its values externally."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in all_tensors(model))


def initializer_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers of a graph and its subgraphs, in the order ``onnx.save_model``
    writes external data (each graph's own, then its nodes' subgraphs, depth first)."""
    yield from graph.initializer
    for node in graph.node:
        for step, sub in subgraphs(node):
            del step
            yield from initializer_tensors(sub)


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every initializer and node-attribute tensor, in every graph and local function
    (the tensors ``onnx.save_model`` may move to external data)."""
    yield from initializer_tensors(model.graph)
    yield from _attribute_tensors(model.graph.node)
    for function in model.functions:
        yield from _attribute_tensors(function.node)


def _attribute_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _attribute_tensors(attr.g.node)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _attribute_tensors(g.node)


@dataclass(frozen=True)
class Region:
    """A tensor's bytes inside a larger buffer: ``data[start:stop]``.

    With a ``_digest.PatchGate``, the loader may patch the region in place while the
    digest is being computed; the digest still sees the bytes as they were.
    """

    data: memoryview
    start: int
    stop: int


def kernel_matrix(weight: np.ndarray) -> np.ndarray:
    """View a conv weight as ``(n_kernels, kernel_size)`` (first two axes index kernels);
    a rank-1 tensor (a bias, a batch norm's scale) as one value per kernel."""
    if weight.ndim < 2:
        return weight.reshape(-1, 1)
    return weight.reshape(weight.shape[0] * weight.shape[1], -1)


_A = onnx.AttributeProto
_HOLDERS = frozenset({_A.TENSOR, _A.TENSORS, _A.GRAPH, _A.GRAPHS})


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto in a graph and its subgraphs, in a deterministic order.

    Per node: the tensors of its TENSOR/TENSORS attributes, then those of its subgraphs
    (GRAPH/GRAPHS attributes, as :func:`_graph.subgraphs` lists them), in attribute
    order. One pass over the attributes: this walk runs several times per load.
    """
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        subs: list[onnx.GraphProto] | None = None
        # A slice, not the container: upb iterates a repeated field several times
        # slower than it copies it out (hundreds of nodes, on every load).
        for attr in node.attribute[:]:
            kind = attr.type
            if kind in _HOLDERS:
                if kind == _A.TENSOR:
                    yield attr.t
                elif kind == _A.TENSORS:
                    yield from attr.tensors
                elif kind == _A.GRAPH:
                    subs = [*(subs or ()), attr.g]
                else:
                    subs = [*(subs or ()), *attr.graphs]
        if subs:
            for sub in subs:
                yield from iter_tensors(sub)
