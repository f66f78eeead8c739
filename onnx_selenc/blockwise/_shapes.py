"""Concrete shapes of every tensor, for the token-equivariance analysis.

With onnxruntime installed the model runs once on a dummy batch of two (every
intermediate tensor made an output), which gives exact shapes whatever the
Reshape targets are computed from. Without it, ONNX shape inference with data
propagation is used on a copy whose input dims are made concrete.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnx_selenc.blockwise._graph import tensor_shape
from onnx_selenc.exceptions import UnsupportedModel

Shapes = dict[str, tuple[int, ...]]
_DUMMY_BATCH = 2


def _concrete_inputs(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], int]]:
    inits = {t.name for t in model.graph.initializer}
    result: dict[str, tuple[tuple[int, ...], int]] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = tensor_shape(vi)
        if shape is None:
            raise UnsupportedModel(f"input '{vi.name}' has no declared shape")
        dims = []
        for axis, d in enumerate(shape):
            if isinstance(d, int) and d > 0:
                dims.append(d)
            elif axis == 0:
                dims.append(_DUMMY_BATCH)
            else:
                raise UnsupportedModel(
                    f"input '{vi.name}' has a dynamic dimension {axis} ({d!r}): block scrambling"
                    " needs a fixed image size (export the model with static height and width)"
                )
        result[vi.name] = (tuple(dims), vi.type.tensor_type.elem_type)
    return result


def concrete_shapes(model: onnx.ModelProto) -> Shapes:
    """Return the shape of every tensor for a dummy batch of two.

    Args:
        model: The model (not modified).

    Returns:
        Tensor name -> concrete shape (initializers included).

    Raises:
        UnsupportedModel: If an input has a dynamic non-batch dimension.
    """
    inputs = _concrete_inputs(model)
    shapes: Shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    try:
        return shapes | _run(model, inputs)
    except Exception:  # no onnxruntime, or it cannot run the model (custom ops, ...)
        return shapes | _inferred(model, inputs)


def _run(model: onnx.ModelProto, inputs: dict[str, tuple[tuple[int, ...], int]]) -> Shapes:
    import onnxruntime as ort

    shapes: Shapes = {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    declared = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for out in node.output:
            if out and out not in declared:
                probe.graph.output.append(onnx.ValueInfoProto(name=out))
                declared.add(out)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(
        probe.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    feed = {}
    for name, (dims, elem) in inputs.items():
        dtype = helper.tensor_dtype_to_np_dtype(elem)
        if np.issubdtype(dtype, np.floating):
            feed[name] = rng.random(dims).astype(dtype)
        else:
            feed[name] = np.zeros(dims, dtype=dtype)
    names = [o.name for o in session.get_outputs()]
    for name, value in zip(names, session.run(names, feed), strict=True):
        if isinstance(value, np.ndarray):
            shapes[name] = tuple(int(d) for d in value.shape)
    for name, (dims, _) in inputs.items():
        shapes[name] = dims
    return shapes


def _inferred(model: onnx.ModelProto, inputs: dict[str, tuple[tuple[int, ...], int]]) -> Shapes:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for vi in probe.graph.input:
        if vi.name in inputs:
            for d, size in zip(vi.type.tensor_type.shape.dim, inputs[vi.name][0], strict=True):
                d.Clear()
                d.dim_value = size
    inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    shapes: Shapes = {}
    values = list(inferred.graph.value_info) + list(inferred.graph.output)
    values += list(inferred.graph.input)
    for vi in values:
        dims = tensor_shape(vi)
        if dims is not None and all(isinstance(d, int) for d in dims):
            shapes[vi.name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
    return shapes
