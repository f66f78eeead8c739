"""The digest's skeleton: a model with every tensor's bytes and storage fields cleared
and the onnx-selenc metadata removed, rebuilt field by field (a deep copy of the whole
model would copy the bytes too)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import onnx
from google.protobuf import unknown_fields

from onnx_selenc._onnx.tensors import iter_tensors
from onnx_selenc.exceptions import FormatError

STORAGE_FIELDS = frozenset({"raw_data", "external_data", "data_location"})
_A = onnx.AttributeProto


# --- the skeleton, rebuilt without the tensor storage ----------------------------------
class HasUnknownFields(Exception):
    """A message on the rebuilt path has fields this onnx does not know."""


def _known(message: object) -> None:
    if len(unknown_fields.UnknownFieldSet(message)):  # type: ignore[arg-type]
        raise HasUnknownFields


def _repeated(fd: Any) -> bool:
    flag = getattr(fd, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return bool(fd.label == fd.LABEL_REPEATED)  # older protobuf


def _copy_fields(src: Any, dst: Any, skip: frozenset[str] | set[str]) -> None:
    """Copy every present field of ``src`` to ``dst`` except those named in ``skip``.

    Walks the descriptor rather than ``ListFields()``: that returns every value,
    and with upb reading ``raw_data`` copies the bytes even when they are skipped.
    """
    for fd in src.DESCRIPTOR.fields:
        name = fd.name
        if name in skip:
            continue
        if _repeated(fd):
            values = getattr(src, name)
            if len(values):
                getattr(dst, name).extend(values)
        elif fd.message_type is not None:
            if src.HasField(name):
                getattr(dst, name).CopyFrom(getattr(src, name))
        elif (
            src.HasField(name)
            if getattr(fd, "has_presence", True)
            else (getattr(src, name) != fd.default_value)
        ):
            setattr(dst, name, getattr(src, name))


def skeleton_model(model: onnx.ModelProto, exclude_metadata: frozenset[str]) -> onnx.ModelProto:
    _known(model)
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, {"graph", "metadata_props"})
    if model.HasField("graph"):
        skeleton.graph.SetInParent()
        _skeleton_graph(model.graph, skeleton.graph)
    for k, v in metadata_pairs(model, exclude_metadata):
        skeleton.metadata_props.add(key=k, value=v)
    return skeleton


def metadata_pairs(
    model: onnx.ModelProto, exclude: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """The metadata entries kept, as text; the digest rewrites them as plain pairs.

    Raises:
        FormatError: an entry is not UTF-8 (protobuf hands it over as bytes, which
            cannot be written back).
    """
    pairs = [(p.key, p.value) for p in model.metadata_props if p.key not in exclude]
    for k, v in pairs:
        if not isinstance(k, str) or not isinstance(v, str):
            raise FormatError(f"the model's metadata entry {k!r} is not valid UTF-8 text")
    return pairs


def _skeleton_graph(src: onnx.GraphProto, dst: onnx.GraphProto) -> None:
    _known(src)
    _copy_fields(src, dst, {"initializer", "sparse_initializer", "node"})
    for t in src.initializer:
        _skeleton_tensor(t, dst.initializer.add())
    for sparse in src.sparse_initializer:
        _known(sparse)
        out = dst.sparse_initializer.add()
        _copy_fields(sparse, out, {"values", "indices"})
        # Clearing the storage of an absent values/indices made it present: keep that.
        out.values.SetInParent()
        out.indices.SetInParent()
        _skeleton_tensor(sparse.values, out.values)
        _skeleton_tensor(sparse.indices, out.indices)
    for node in src.node:
        _skeleton_node(node, dst.node.add())


_REBUILT_ATTRIBUTES = {_A.TENSOR: "t", _A.TENSORS: "tensors", _A.GRAPH: "g", _A.GRAPHS: "graphs"}


def _skeleton_node(src: onnx.NodeProto, dst: onnx.NodeProto) -> None:
    kinds = [a.type for a in src.attribute]
    if not any(k in _REBUILT_ATTRIBUTES for k in kinds):
        dst.CopyFrom(src)  # nothing of the digest's tensors in it
        return
    if (
        _A.GRAPH not in kinds
        and _A.GRAPHS not in kinds
        and all(_small(t) for t in _attribute_tensors(src))
    ):
        # Small tensors (a Constant's bias, most Paddle weights): copying them in C and
        # clearing the copy is much cheaper than rebuilding field by field in Python.
        dst.CopyFrom(src)
        for t in _attribute_tensors(dst):
            _clear_storage(t)
        return
    _known(src)
    _copy_fields(src, dst, {"attribute"})
    for attr in src.attribute:
        out = dst.attribute.add()
        rebuilt = _REBUILT_ATTRIBUTES.get(attr.type)
        if rebuilt is None:
            out.CopyFrom(attr)
            continue
        _known(attr)
        _copy_fields(attr, out, {rebuilt})
        if attr.type == _A.TENSOR:
            out.t.SetInParent()  # as above: a TENSOR attribute's t ends up present
            _skeleton_tensor(attr.t, out.t)
        elif attr.type == _A.TENSORS:
            for t in attr.tensors:
                _skeleton_tensor(t, out.tensors.add())
        elif attr.type == _A.GRAPH:
            if attr.HasField("g"):
                out.g.SetInParent()
                _skeleton_graph(attr.g, out.g)
        else:
            for g in attr.graphs:
                _skeleton_graph(g, out.graphs.add())


def _skeleton_tensor(src: onnx.TensorProto, dst: onnx.TensorProto) -> None:
    if _small(src):
        dst.CopyFrom(src)
        _clear_storage(dst)
        return
    _known(src)
    _copy_fields(src, dst, STORAGE_FIELDS)


def _attribute_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    """The node's tensors the digest clears: as :func:`iter_tensors` lists them."""
    for attr in node.attribute:
        if attr.type == _A.TENSOR:
            yield attr.t
        elif attr.type == _A.TENSORS:
            yield from attr.tensors


def _clear_storage(t: onnx.TensorProto) -> None:
    for name in STORAGE_FIELDS:
        t.ClearField(name)


# Bytes per element of the fixed-size tensor types, to size raw data without reading it.
_ITEMSIZE: dict[int, int] = {
    onnx.TensorProto.FLOAT: 4, onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.BFLOAT16: 2, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.INT16: 2, onnx.TensorProto.UINT16: 2, onnx.TensorProto.INT32: 4,
    onnx.TensorProto.UINT32: 4, onnx.TensorProto.INT64: 8, onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.BOOL: 1,
}  # fmt: skip
_SMALL_TENSOR = 1 << 16  # bytes: a tensor under this is cheap to copy


def _small(t: onnx.TensorProto) -> bool:
    """Whether copying the tensor costs little: no raw data, or a known small size."""
    if not t.HasField("raw_data"):
        return True
    itemsize = _ITEMSIZE.get(t.data_type)
    if itemsize is None:
        return False
    count = 1
    for d in t.dims:
        count *= d
    return count * itemsize < _SMALL_TENSOR


def normalise(model: onnx.ModelProto, tensors: Iterable[onnx.TensorProto] | None = None) -> None:
    """The side effects the digest always had on the model it read.

    Clearing a tensor's storage made an absent sparse ``values``/``indices`` or
    TENSOR-attribute ``t`` present, and the metadata entries were rewritten as plain
    key/value pairs; keeping both keeps every saved encrypted file byte-identical.
    """
    for t in iter_tensors(model.graph) if tensors is None else tensors:
        t.SetInParent()
    kept = metadata_pairs(model)
    del model.metadata_props[:]
    for k, v in kept:
        model.metadata_props.add(key=k, value=v)
