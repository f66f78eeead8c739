"""The MLflow signature of an encrypted model, read from its public graph."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema, TensorSpec
from mlflow.types.schema import Array


def graph_signature(model: onnx.ModelProto) -> ModelSignature | None:
    """A signature from the graph's inputs and outputs (public, unencrypted).

    Inputs are named tensors (free dimensions ``-1``), as MLflow checks them. Outputs
    are one column per output holding one sample each: a scalar when a sample is one
    value (shape ``[N]``), else an array nested once per dimension after the batch
    dimension. That is what ``mlflow.pyfunc.spark_udf`` derives its default result
    type from; a tensor output spec of shape ``(-1, 10)`` would make it expect a 2-D
    array per row. Outputs of a type MLflow columns cannot hold (float16, int8, ...)
    keep the tensor form.

    Returns:
        The signature, or ``None`` if an input or output is not a tensor.
    """
    inputs = _tensors(_graph_inputs(model))
    outputs = _tensors(list(model.graph.output))
    if inputs is None or outputs is None:
        return None
    columns = _columns(outputs)
    return ModelSignature(
        Schema(inputs),  # type: ignore[arg-type]
        Schema(columns if columns is not None else outputs),  # type: ignore[arg-type]
    )


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _tensors(values: Sequence[onnx.ValueInfoProto]) -> list[TensorSpec] | None:
    out = []
    for v in values:
        if not v.type.HasField("tensor_type"):
            return None
        t = v.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
        shape = tuple(d.dim_value if d.dim_value > 0 else -1 for d in t.shape.dim)
        out.append(TensorSpec(dtype, shape, v.name))
    return out


def _columns(outputs: Sequence[TensorSpec]) -> list[ColSpec] | None:
    cols = []
    for spec in outputs:
        # ONNX strings come back from ONNX Runtime as numpy object arrays.
        base = DataType.string if spec.type == np.dtype(object) else None
        base = base or DataType.from_numpy_type(spec.type)
        if base is None:
            return None
        col: Any = base
        for _ in spec.shape[1:]:
            col = Array(col)
        cols.append(ColSpec(col, spec.name))
    return cols
