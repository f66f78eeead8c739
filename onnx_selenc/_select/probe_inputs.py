"""Probe inputs without calibration data: integer inputs get the values the graph reads.

Zeros are a valid integer input for almost any model, and often a useless one: token
id 0 is padding (its embedding row is zero), a length or width of 0 masks every
position, so no conv kernel changes the outputs and every level looks dead. The graph
says what an integer input means: the indices of a ``Gather`` or ``OneHot`` range over
the table's first dimension or the depth, and a ``Range`` limit, a ``Slice`` end, a
``TopK`` k or one side of a comparison is a length, drawn up to the probe's longest
dimension. Inputs the graph does not explain keep the old values (zeros).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_selenc._onnx.ort_types import FLOAT_TYPES, ort_dtype

# Ops whose output holds the values of the input at these positions (None: any), so an
# integer flows through them unchanged in meaning (a length divided by a stride is
# still a length; ids reshaped are still ids).
_CARRIES: Mapping[str, tuple[int, ...] | None] = {
    **dict.fromkeys(
        ("Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose"), (0,)
    ),
    **dict.fromkeys(("Expand", "Tile", "Split", "Slice", "Gather", "Clip"), (0,)),
    **dict.fromkeys(
        ("Concat", "Add", "Sub", "Mul", "Div", "Min", "Max", "Neg", "Abs", "Floor", "Ceil"), None
    ),
}
# (op, input position) where the value is a length or count.
_LENGTHS = {("Range", 1), ("Slice", 2), ("TopK", 1)}
_COMPARISONS = ("Less", "LessOrEqual", "Greater", "GreaterOrEqual")
_PASS_SHAPE = ("Cast", "Identity", "DequantizeLinear")  # shape of input 0 kept


@dataclass(frozen=True)
class IntegerRange:
    """Values ``low <= v < high`` for one integer input; ``high`` None: a length, up to
    the longest dimension of the probe inputs (inclusive)."""

    low: int
    high: int | None


def integer_ranges(model: onnx.ModelProto) -> dict[str, IntegerRange]:
    """What the main graph does with each integer input, as a range to draw from.

    An input used as indices with a table whose size is not static gets no range (any
    guess could run past the table); neither does one the graph does not explain.
    """
    graph = model.graph
    known = {i.name for i in graph.initializer}
    uses = _Uses(graph)
    out = {}
    for inp in graph.input:
        elem = inp.type.tensor_type.elem_type
        if inp.name in known or not _is_integer(elem):
            continue
        bounds, length = [], False
        for kind, bound in uses.of(inp.name):
            if kind == "index":
                bounds.append(bound)
            else:
                length = True
        if bounds:
            if all(b is not None and b > 0 for b in bounds):
                high = min(b for b in bounds if b is not None)
                # Id 0 is the padding of many vocabularies: a probe of one token must
                # not land on it.
                out[inp.name] = IntegerRange(1 if high > 1 else 0, high)
        elif length:
            out[inp.name] = IntegerRange(1, None)
    return out


def probe_feeds(
    inputs: Sequence[tuple[str, str, list[int]]],
    ranges: Mapping[str, IntegerRange] | None,
    rng: np.random.Generator,
) -> dict[str, np.ndarray] | None:
    """One batch for ``inputs`` (name, ONNX Runtime type, shape): floats standard
    normal, integers as ``ranges`` say and bools mixed (``ranges`` None: zeros and all
    False, the values any model takes), unexplained ``uint8`` uniform (images); None
    if a type cannot be made up."""
    longest = max((d for _, _, shape in inputs for d in shape[1:]), default=1)
    ints = np.random.default_rng(1)  # its own stream: the floats stay as they were
    feeds = {}
    for name, kind, shape in inputs:
        dtype = ort_dtype(kind)
        if dtype is None:
            return None
        if kind in FLOAT_TYPES:
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif kind == "tensor(bool)":
            feeds[name] = np.zeros(shape, bool) if ranges is None else _bools(shape, ints)
        elif ranges is not None and name in ranges:
            r = ranges[name]
            high = min(longest + 1 if r.high is None else r.high, int(np.iinfo(dtype).max) + 1)
            feeds[name] = ints.integers(r.low, max(high, r.low + 1), size=shape).astype(dtype)
        elif kind == "tensor(uint8)":
            feeds[name] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        else:
            feeds[name] = np.zeros(shape, dtype=dtype)
    return feeds


def _bools(shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """Half true, the first true and (with two or more) the last false: a mask that
    keeps something and drops something, whichever way round the model reads it."""
    values = rng.random(shape) < 0.5
    flat = values.reshape(-1)
    if flat.size:
        flat[0] = True
    if flat.size > 1:
        flat[-1] = False
    return values


def _is_integer(elem: int) -> bool:
    if elem == onnx.TensorProto.BOOL:
        return False
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else None
    return dtype is not None and np.issubdtype(dtype, np.integer)


class _Uses:
    """Where the values of a main-graph tensor end up: indices (with the size of what
    they index, None if not static) or lengths."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for pos, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, pos))
            for name in node.output:
                self.producer[name] = node
        self.tensors = {t.name: t for t in graph.initializer}
        self.infos = {v.name: v for v in (*graph.value_info, *graph.input, *graph.output)}

    def of(self, name: str) -> Iterator[tuple[str, int | None]]:
        seen, todo = {name}, [name]
        while todo:
            for node, pos in self.consumers.get(todo.pop(), []):
                use = self._use(node, pos)
                if use is not None:
                    yield use
                carried = _CARRIES.get(node.op_type, ())
                if carried is None or pos in carried:
                    for out in node.output:
                        if out and out not in seen:
                            seen.add(out)
                            todo.append(out)

    def _use(self, node: onnx.NodeProto, pos: int) -> tuple[str, int | None] | None:
        op = node.op_type
        if op in ("Gather", "GatherElements") and pos == 1:
            dims = self._dims(node.input[0])
            axis = _attribute(node, "axis", 0)
            if dims is None or not -len(dims) <= axis < len(dims):
                return ("index", None)
            return ("index", dims[axis])
        if op == "OneHot" and pos == 0:
            return ("index", self._scalar(node.input[1]))
        if (op, pos) in _LENGTHS or op in _COMPARISONS:
            return ("length", None)
        return None

    def _dims(self, name: str) -> list[int] | None:
        """The static shape of a tensor, if the graph states it."""
        if name in self.tensors:
            return list(self.tensors[name].dims)
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            return None if value is None else list(value.dims)
        if node is not None and node.op_type in _PASS_SHAPE:
            return self._dims(node.input[0])
        info = self.infos.get(name)
        if info is None or not info.type.tensor_type.HasField("shape"):
            return None
        dims = [
            d.dim_value if d.HasField("dim_value") else 0 for d in info.type.tensor_type.shape.dim
        ]
        return dims if all(d > 0 for d in dims) else None

    def _scalar(self, name: str) -> int | None:
        """The value of a one-element integer constant, if it is one."""
        tensor = self.tensors.get(name)
        node = self.producer.get(name)
        if tensor is None and node is not None and node.op_type == "Constant":
            tensor = next((a.t for a in node.attribute if a.name == "value"), None)
        if tensor is None or int(np.prod(tensor.dims)) != 1:
            return None
        try:
            value = numpy_helper.to_array(tensor).reshape(-1)[0]
        except Exception:  # external or malformed: not worth a guess
            return None
        return int(value) if np.issubdtype(type(value), np.number) else None


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default
