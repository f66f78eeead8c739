"""Model digest: one SHA-256 over everything that defines an encrypted model.

Covers the graph structure, every attribute, all metadata except the onnx-selenc
entries themselves, and every tensor's bytes, wherever they are stored. The digest
is the same whether tensor data is inline or in an external file, so a model can be
checked without loading its external data into memory. Any edit after encryption
(a masked weight, a BatchNorm scale, a node) changes it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import onnx

from ._graph import subgraphs
from ._tensors import external_info
from .exceptions import FormatError

_CHUNK = 1 << 22


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto in a graph and its subgraphs, in a deterministic order."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
        for _, sub in subgraphs(node):
            yield from iter_tensors(sub)


def model_digest(
    model: onnx.ModelProto,
    base_dir: str | os.PathLike[str] | None,
    *,
    exclude_metadata: frozenset[str] = frozenset(),
) -> str:
    """SHA-256 of a model, independent of where its tensor bytes are stored.

    Args:
        model: the model; external data may be loaded or not.
        base_dir: folder of the model file, for tensors whose data is external.
        exclude_metadata: ``metadata_props`` keys left out (the bundle itself).

    Returns:
        ``"sha256:<hex>"``.
    """
    h = hashlib.sha256(b"onnx-selenc/v1/model-digest\0")
    tensors = list(iter_tensors(model.graph))
    # Detach the bulky and storage-dependent fields, hash the small skeleton, restore.
    saved = []
    for t in tensors:
        saved.append(
            (
                t.raw_data if t.HasField("raw_data") else None,
                list(t.external_data),
                t.data_location if t.HasField("data_location") else None,
            )
        )
    kept_meta = [(p.key, p.value) for p in model.metadata_props]
    try:
        for t in tensors:
            t.ClearField("raw_data")
            t.ClearField("external_data")
            t.ClearField("data_location")
        del model.metadata_props[:]
        for k, v in kept_meta:
            if k not in exclude_metadata:
                model.metadata_props.add(key=k, value=v)
        skeleton = model.SerializeToString(deterministic=True)
    finally:
        del model.metadata_props[:]
        for k, v in kept_meta:
            model.metadata_props.add(key=k, value=v)
        for t, (raw, ext, loc) in zip(tensors, saved, strict=True):
            if raw is not None:
                t.raw_data = raw
            t.external_data.extend(ext)
            if loc is not None:
                t.data_location = loc
    h.update(len(skeleton).to_bytes(8, "little"))
    h.update(skeleton)
    for t, (raw, _, loc) in zip(tensors, saved, strict=True):
        if loc == onnx.TensorProto.EXTERNAL:
            if base_dir is None:
                raise ValueError(f"tensor '{t.name}' is external but no model folder was given")
            _hash_external(h, t, base_dir)
        else:
            data = raw or b""
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return "sha256:" + h.hexdigest()


def _hash_external(
    h: hashlib._Hash, tensor: onnx.TensorProto, base_dir: str | os.PathLike[str]
) -> None:
    info = external_info(tensor, base_dir)
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    count = 1
    for d in tensor.dims:
        count *= int(d)
    length = info.length if info.length is not None else count * itemsize
    h.update(length.to_bytes(8, "little"))
    with open(info.path, "rb") as fh:
        fh.seek(info.offset)
        left = length
        while left:
            chunk = fh.read(min(_CHUNK, left))
            if not chunk:
                raise FormatError(f"external data of '{tensor.name}' is truncated")
            h.update(chunk)
            left -= len(chunk)
