"""The model digest as first written (the reference the faster one must equal), and the
models it is checked on: every tiny model plus odd but valid-to-protobuf ones."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._onnx.graph import subgraphs
from onnx_selenc._onnx.tensors import external_info

from . import tiny_models as tm


def _reference_iter(graph: onnx.GraphProto):
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
            yield from _reference_iter(sub)


def reference_digest(model: onnx.ModelProto, base_dir, *, exclude_metadata=frozenset()) -> str:
    h = hashlib.sha256(b"onnx-selenc/v1/model-digest\0")
    tensors = list(_reference_iter(model.graph))
    saved = [
        (
            t.raw_data if t.HasField("raw_data") else None,
            list(t.external_data),
            t.data_location if t.HasField("data_location") else None,
        )
        for t in tensors
    ]
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
            info = external_info(t, base_dir)
            length = (
                info.length
                if info.length is not None
                else (int(np.prod(t.dims)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize)
            )
            with open(info.path, "rb") as fh:
                fh.seek(info.offset)
                data = fh.read(length)
            h.update(length.to_bytes(8, "little"))
            h.update(data)
        else:
            data = raw or b""
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return "sha256:" + h.hexdigest()


def _odd_model() -> onnx.ModelProto:
    """Sparse initializers, a TENSOR attribute without its tensor, TENSORS attributes,
    an attribute tensor on a non-tensor attribute, unusual metadata entries."""
    model = tm.if_subgraph()
    g = model.graph
    sp = g.sparse_initializer.add()
    sp.dims.extend([4])
    sp.values.CopyFrom(numpy_helper.from_array(np.arange(2, dtype=np.float32), "sv"))
    sp.indices.CopyFrom(numpy_helper.from_array(np.array([0, 3], dtype=np.int64), "si"))
    stub = g.sparse_initializer.add()  # no values, no indices
    stub.dims.extend([2])
    node = g.node.add(op_type="Custom", domain="x.y", name="odd")
    a = node.attribute.add(name="t_missing", type=onnx.AttributeProto.TENSOR)
    b = node.attribute.add(name="many", type=onnx.AttributeProto.TENSORS)
    b.tensors.add().CopyFrom(numpy_helper.from_array(np.ones(3, np.float32), "m0"))
    c = node.attribute.add(name="f_with_t", type=onnx.AttributeProto.FLOAT, f=1.0)
    c.t.CopyFrom(numpy_helper.from_array(np.ones(2, np.float32), "hidden"))
    del a
    model.metadata_props.add(key="only_key")
    model.metadata_props.add(key="k", value="v")
    model.metadata_props.add(key=_bundle.MANIFEST_KEY, value="{}")
    return model


def _with_unknown_field(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with an unknown field (number 999) in its largest initializer."""
    t = max(model.graph.initializer, key=lambda i: len(i.raw_data))
    odd = onnx.TensorProto.FromString(t.SerializeToString() + b"\xb8\x3e\x05")
    t.CopyFrom(odd)
    return model


DIGEST_CASES = {
    **{name: fn for name, fn in tm.ALL.items()},
    "odd": _odd_model,
    "unknown_field": lambda: _with_unknown_field(tm.cnn()),
    "unknown_field_large": lambda: _with_unknown_field(tm.wide_cnn(width=48)),
    "wide": lambda: tm.wide_cnn(width=48),
}
