"""A stand-in base for the conformance run with ``--base``: the model's own weights moved.

The corpus has no checkpoints its models were fine-tuned from, so each model gets one:
every float and 8-bit integer tensor (initializers and Constant values, subgraphs too)
moved by a little seeded noise, the graph untouched. Its conv weights then differ from
the model's in (nearly) every kernel, as a fine-tuned model's do from its checkpoint,
and the run checks what the contract checks, with level 0 holding the base's kernels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

_INT8 = (np.int8, np.uint8)
_SAVE_EXTERNAL = 1 << 30  # past this many bytes the base is saved with external data


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _tensors(g)


def _moved(a: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    if a.size < 2:
        return None
    if a.dtype in _INT8:
        info = np.iinfo(a.dtype)
        step = rng.integers(-1, 2, size=a.shape)
        return np.clip(a.astype(np.int64) + step, info.min, info.max).astype(a.dtype)
    if not np.issubdtype(a.dtype, np.floating):
        return None
    wide = a.astype(np.float64)
    scale = 0.1 * (float(np.std(wide[np.isfinite(wide)])) if np.isfinite(wide).any() else 0.0)
    return (wide + scale * rng.standard_normal(a.shape)).astype(a.dtype)


def perturbed_base(model_path: Path, folder: Path, seed: int = 0) -> Path:
    """Write the model with its weights moved to ``folder/base.onnx``; return the path."""
    model = onnx.load(str(model_path))  # with external data
    rng = np.random.default_rng(seed)
    for t in _tensors(model.graph):
        if t.data_type == onnx.TensorProto.STRING:
            continue
        moved = _moved(numpy_helper.to_array(t), rng)
        if moved is not None:
            t.CopyFrom(numpy_helper.from_array(moved, t.name))
    out = folder / "base.onnx"
    big = model.ByteSize() > _SAVE_EXTERNAL
    onnx.save(model, str(out), save_as_external_data=big, location="base.onnx.data")
    return out
