"""Parsing a model *without* the raw bytes of its large tensors.

A small wire-format pass cuts them out of the serialised model and records where they
are, so callers hash them and hand them to ONNX Runtime straight from the one buffer
read from disk, with no protobuf copy of them at all. Anything irregular falls back to
the ordinary parser, which words any error.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from onnx_selenc._onnx.modelio import (
    Buffer,
    _check_model,
    _file_format,
    parse_model,
    read_model_buffer,
)
from onnx_selenc._onnx.tensors import PLAIN_DTYPES, Region, encode_varint

# Tensors whose raw data is at least this long are cut out by read_stripped (smaller
# ones cost less to copy through protobuf, in C, than to track in Python).
STRIP_THRESHOLD = 1 << 16
Span = tuple[int, int]

# --- parsing without the bulk ----------------------------------------------------------
# Field numbers of onnx.proto on the path to the large tensors.
_MODEL_GRAPH = 7
_GRAPH_NODE = 1
_GRAPH_INITIALIZER = 5
_NODE_ATTRIBUTE = 5
_ATTRIBUTE_T = 5
_ATTRIBUTE_TYPE = 20
_TYPE_TENSOR = onnx.AttributeProto.TENSOR
_TENSOR_RAW_DATA = 9
_WIRE_LEN = 2


class _Irregular(Exception):
    """The wire layout is not the plain one this pass handles (callers fall back)."""


@dataclass
class StrippedModel:
    """A model parsed without the raw data of its large tensors.

    Attributes:
        model: the parsed model; the stripped tensors have no ``raw_data`` field.
        data: the serialised model the spans index into (followed, after
            :meth:`adopt`, by the raw data of tensors that were external).
        spans: ``(start, stop)`` in ``data`` of each stripped tensor's raw data, keyed
            by ``id()`` of the tensor in ``model`` (``tensors`` keeps them alive, so
            the ids stay valid).
        tensors: the stripped tensors, main-graph initializers first, then node
            attribute tensors, each in graph order; then any :meth:`adopt` took.
    """

    model: onnx.ModelProto
    data: Buffer
    spans: dict[int, Span] = field(default_factory=dict)
    tensors: list[onnx.TensorProto] = field(default_factory=list)

    def span(self, tensor: onnx.TensorProto) -> Span | None:
        """Where a tensor's raw data lies in :attr:`data`, if it was stripped."""
        return self.spans.get(id(tensor))

    def raw(self, tensor: onnx.TensorProto) -> memoryview | None:
        """A zero-copy view of a stripped tensor's raw data."""
        span = self.spans.get(id(tensor))
        return None if span is None else memoryview(self.data)[span[0] : span[1]]

    def region(self, tensor: onnx.TensorProto) -> Region | None:
        """Where a stripped tensor's raw data is, for a digest that tolerates patching."""
        span = self.spans.get(id(tensor))
        return None if span is None else Region(memoryview(self.data), span[0], span[1])

    def array(self, tensor: onnx.TensorProto) -> np.ndarray | None:
        """An array over a stripped tensor's raw data, ``None`` if it does not fit.

        It is a view of :attr:`data` (writable when the buffer is).
        """
        raw = self.raw(tensor)
        if raw is None:
            return None
        dtype = PLAIN_DTYPES.get(tensor.data_type)
        shape = tuple(tensor.dims)
        if dtype is None or len(raw) != math.prod(shape) * dtype.itemsize:
            return None
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def adopt(self, data: Buffer, spans: Sequence[tuple[onnx.TensorProto, Span]]) -> None:
        """Move to a larger buffer holding more tensors' raw data after the model's bytes.

        ``data`` must start with :attr:`data`'s bytes (the spans so far stay valid).
        Each tensor (external until now) becomes a stripped tensor over its span: its
        ``external_data`` and ``data_location`` are cleared, which the digest's skeleton
        clears anyway, so the model's digest is unchanged.
        """
        if len(data) < len(self.data):
            raise ValueError("the new buffer must hold the model's bytes first")
        self.data = data
        for tensor, span in spans:
            tensor.ClearField("external_data")
            tensor.ClearField("data_location")
            self.spans[id(tensor)] = span
            self.tensors.append(tensor)

    def restore_raw_data(self, *, skip: frozenset[int] = frozenset()) -> None:
        """Copy the stripped bytes back into the model (all but ids in ``skip``)."""
        for t in self.tensors:
            span = self.spans[id(t)]
            if id(t) not in skip:
                t.raw_data = bytes(self.data[span[0] : span[1]])


def read_stripped(path: str | os.PathLike[str], data: Buffer | None = None) -> StrippedModel:
    """Parse a model file, leaving the raw data of its large tensors in the file buffer.

    Large main-graph initializers and node-attribute tensors (Constant values) are cut
    out of the serialised bytes before parsing; everything else (subgraphs, small
    tensors, a layout this pass does not handle) is parsed as usual, so the result is
    always exactly the model, minus those ``raw_data`` fields.

    Args:
        path: the model file (for messages, and reading when ``data`` is not given).
        data: the file's bytes, if already read.

    Raises:
        FileNotFoundError: no such file.
        FormatError: not a valid ONNX model.
    """
    if data is None:
        data = read_model_buffer(path)
    if _file_format(path) not in (None, "protobuf"):
        return StrippedModel(parse_model(data, path), data)
    try:
        stripped, init_spans, attr_spans = _strip(data)
        model = onnx.ModelProto.FromString(stripped)
    except (_Irregular, DecodeError, RuntimeWarning, ValueError):
        # Anything unusual: the ordinary parser decides (and words any error).
        return StrippedModel(parse_model(data, path), data)
    _check_model(model, path)
    result = StrippedModel(model, data)
    graph = model.graph
    try:
        for i, span in init_spans.items():
            t = graph.initializer[i]
            result.spans[id(t)] = span
            result.tensors.append(t)
        for (n, a), span in attr_spans.items():
            t = graph.node[n].attribute[a].t
            result.spans[id(t)] = span
            result.tensors.append(t)
    except IndexError:  # cannot happen for bytes that parsed; be safe anyway
        return StrippedModel(parse_model(data, path), data)
    return result


def _varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Irregular
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _records(buf: Buffer, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield ``(field, wire type, record start, value start, value end)`` of a message."""
    while pos < end:
        start = pos
        # One-byte varints (most keys and short lengths) inline: this walks every
        # record of the graph on each load, and a call per varint doubles its cost.
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, stop = _varint(buf, pos, end)
        elif wire == 1:
            stop = pos + 8
        elif wire == _WIRE_LEN:
            length = buf[pos] if pos < end else 0x80
            if length < 0x80:
                pos += 1
            else:
                length, pos = _varint(buf, pos, end)
            stop = pos + length
        elif wire == 5:
            stop = pos + 4
        else:  # groups: never written by ONNX
            raise _Irregular
        if stop > end or number == 0:
            raise _Irregular
        yield number, wire, start, pos, stop
        pos = stop


class _Pieces:
    """Builds a message from runs of the original bytes and replaced records.

    A message is a list of pieces (views of the buffer, new headers), joined once for
    the whole model: joining each level would copy the graph's bytes twice more.
    """

    def __init__(self, buf: Buffer, start: int) -> None:
        self.buf, self.run = buf, start
        self.parts: list[Buffer] = []
        self.changed = False

    def replace(self, start: int, stop: int, number: int, content: list[Buffer]) -> None:
        size = sum(map(len, content))  # bytes: the views are of unsigned bytes
        self.parts.append(self.buf[self.run : start])
        self.parts.append(encode_varint(number << 3 | _WIRE_LEN) + encode_varint(size))
        self.parts += content
        self.run, self.changed = stop, True

    def drop(self, start: int, stop: int) -> None:
        self.parts.append(self.buf[self.run : start])
        self.run, self.changed = stop, True

    def finish(self, end: int) -> list[Buffer]:
        self.parts.append(self.buf[self.run : end])
        return self.parts


def _strip(buf: Buffer) -> tuple[Buffer, dict[int, Span], dict[tuple[int, int], Span]]:
    """Cut large tensor data out of a serialised ModelProto (see :func:`read_stripped`)."""
    init_spans: dict[int, Span] = {}
    attr_spans: dict[tuple[int, int], Span] = {}
    out = _Pieces(buf, 0)
    seen_graph = False
    for number, wire, start, vstart, vstop in _records(buf, 0, len(buf)):
        if number != _MODEL_GRAPH:
            continue
        if wire != _WIRE_LEN or seen_graph:  # a repeated message field merges: not handled
            raise _Irregular
        seen_graph = True
        graph = _strip_graph(buf, vstart, vstop, init_spans, attr_spans)
        if graph is not None:
            out.replace(start, vstop, _MODEL_GRAPH, graph)
    if not init_spans and not attr_spans:
        return buf, {}, {}
    return b"".join(out.finish(len(buf))), init_spans, attr_spans


def _strip_graph(
    buf: Buffer,
    start: int,
    end: int,
    init_spans: dict[int, Span],
    attr_spans: dict[tuple[int, int], Span],
) -> list[Buffer] | None:
    out = _Pieces(buf, start)
    n_init = n_node = 0
    for number, wire, rstart, vstart, vstop in _records(buf, start, end):
        if number == _GRAPH_INITIALIZER:
            if wire != _WIRE_LEN:
                raise _Irregular
            if vstop - vstart >= STRIP_THRESHOLD:
                cut = _strip_tensor(buf, vstart, vstop)
                if cut is not None:
                    out.replace(rstart, vstop, number, cut[0])
                    init_spans[n_init] = cut[1]
            n_init += 1
        elif number == _GRAPH_NODE:
            if wire != _WIRE_LEN:
                raise _Irregular
            if vstop - vstart >= STRIP_THRESHOLD:  # a small node holds no large tensor
                node = _strip_node(buf, vstart, vstop, n_node, attr_spans)
                if node is not None:
                    out.replace(rstart, vstop, number, node)
            n_node += 1
    return out.finish(end) if out.changed else None


def _strip_node(
    buf: Buffer, start: int, end: int, node_index: int, attr_spans: dict[tuple[int, int], Span]
) -> list[Buffer] | None:
    out = _Pieces(buf, start)
    n_attr = 0
    for number, wire, rstart, vstart, vstop in _records(buf, start, end):
        if number != _NODE_ATTRIBUTE:
            continue
        if wire != _WIRE_LEN:
            raise _Irregular
        if vstop - vstart >= STRIP_THRESHOLD:
            attr = _strip_attribute(buf, vstart, vstop)
            if attr is not None:
                out.replace(rstart, vstop, number, attr[0])
                attr_spans[(node_index, n_attr)] = attr[1]
        n_attr += 1
    return out.finish(end) if out.changed else None


def _strip_attribute(buf: Buffer, start: int, end: int) -> tuple[list[Buffer], Span] | None:
    found = None
    kind = None
    for number, wire, rstart, vstart, vstop in _records(buf, start, end):
        if number == _ATTRIBUTE_T:
            if wire != _WIRE_LEN or found is not None:  # two 't' records would merge
                return None
            found = (rstart, vstart, vstop)
        elif number == _ATTRIBUTE_TYPE:
            kind = _varint(buf, vstart, vstop)[0] if wire == 0 else None  # the last one wins
    # Only a TENSOR attribute's tensor is the model's (the digest ignores any other 't').
    if found is None or kind != _TYPE_TENSOR or found[2] - found[1] < STRIP_THRESHOLD:
        return None
    cut = _strip_tensor(buf, found[1], found[2])
    if cut is None:
        return None
    out = _Pieces(buf, start)
    out.replace(found[0], found[2], _ATTRIBUTE_T, cut[0])
    return out.finish(end), cut[1]


def _strip_tensor(buf: Buffer, start: int, end: int) -> tuple[list[Buffer], Span] | None:
    """The tensor without its raw_data record, and where the data was; ``None`` if none."""
    found = None
    for number, wire, rstart, vstart, vstop in _records(buf, start, end):
        if number == _TENSOR_RAW_DATA:
            if wire != _WIRE_LEN or found is not None:  # the last one would win: not handled
                return None
            found = (rstart, vstart, vstop)
    if found is None or found[2] - found[1] < STRIP_THRESHOLD:
        return None
    out = _Pieces(buf, start)
    out.drop(found[0], found[2])
    return out.finish(end), (found[1], found[2])


# --- saving ------------------------------------------------------------------------------
