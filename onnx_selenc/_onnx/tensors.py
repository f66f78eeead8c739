"""Read and write the tensors the graph walk found, by their stable address."""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

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


# Plain numeric dtypes: from_array stores them as little-endian raw_data, nothing else.
_RAW_KINDS = "fiub"
_RAW_DTYPES = frozenset(
    np.dtype(t)
    for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
              np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)
)  # fmt: skip


def write_array(tensor: onnx.TensorProto, values: np.ndarray) -> None:
    """Replace a tensor's values in place (stored inline, as raw data)."""
    if tuple(values.shape) != tuple(tensor.dims):
        raise ValueError(f"shape {values.shape} does not fit tensor '{tensor.name}'")
    values = np.ascontiguousarray(values)
    if values.dtype.kind not in _RAW_KINDS or values.dtype not in _RAW_DTYPES:
        tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
        return
    # What CopyFrom(from_array(values, name)) gives, without building the tensor
    # twice: from_array's bytes, a new TensorProto, then CopyFrom's copy of it.
    name = tensor.name
    tensor.Clear()
    tensor.dims.extend(values.shape)
    if name:
        tensor.name = name
    tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
    if sys.byteorder == "big":
        values = values.astype(values.dtype.newbyteorder("<"))
    tensor.raw_data = values.tobytes()


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
    """View a conv weight as ``(n_kernels, kernel_size)`` (first two axes index kernels)."""
    return weight.reshape(weight.shape[0] * weight.shape[1], -1)


_A = onnx.AttributeProto


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
        for attr in node.attribute:
            kind = attr.type
            if kind == _A.TENSOR:
                yield attr.t
            elif kind == _A.TENSORS:
                yield from attr.tensors
            elif kind == _A.GRAPH:
                subs = [*(subs or ()), attr.g]
            elif kind == _A.GRAPHS:
                subs = [*(subs or ()), *attr.graphs]
        if subs:
            for sub in subs:
                yield from iter_tensors(sub)
