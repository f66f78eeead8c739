"""An ONNX graph as a trainable PyTorch module: what the attacker fine-tunes.

The attacker holds only ONNX files, so the harness interprets the graph itself instead
of needing the model's PyTorch source: the weights (and biases) of every Conv, Gemm and
MatMul node become ``nn.Parameter`` s, every other initializer a frozen buffer. Only
the operators common in exported CNN classifiers are supported; anything else raises
``NotImplementedError`` naming the operator.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn
from torch.nn import functional as F

WEIGHTED = ("Conv", "Gemm", "MatMul")


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pad_args(attrs: dict[str, Any], dims: int) -> tuple[list[int] | None, list[int]]:
    """(explicit F.pad list or None, symmetric padding) from ONNX ``pads``."""
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise NotImplementedError(f"auto_pad={attrs['auto_pad']!r}")
    pads = list(attrs.get("pads", [0] * (2 * dims)))
    begin, end = pads[:dims], pads[dims:]
    if begin == end:
        return None, begin
    # F.pad takes the last axis first: (left, right, top, bottom).
    flat = [p for b, e in zip(reversed(begin), reversed(end), strict=True) for p in (b, e)]
    return flat, [0] * dims


class OnnxModule(nn.Module):
    """Runs one ONNX graph (single input, first output) with trainable weights.

    Attributes:
        weights: parameter name -> (ONNX op type, fan-in), for every Conv/Gemm/MatMul
            weight, in graph order; biases are listed in ``biases``.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        model = onnx.load(str(path))
        graph = model.graph
        inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.nodes = list(graph.node)
        self.input_name = next(i.name for i in graph.input if i.name not in inits)
        self.output_name = graph.output[0].name
        self.params = nn.ParameterDict()
        self.weights: dict[str, tuple[str, int]] = {}
        self.biases: list[str] = []
        self._key: dict[str, str] = {}
        trainable: set[str] = set()
        for node in self.nodes:
            if node.op_type in WEIGHTED and len(node.input) > 1 and node.input[1] in inits:
                trainable.add(node.input[1])
                w = inits[node.input[1]]
                attrs = _attrs(node)
                if node.op_type == "Conv":
                    fan_in = int(np.prod(w.shape[1:]))
                elif node.op_type == "Gemm" and attrs.get("transB", 0):
                    fan_in = int(w.shape[1])
                else:
                    fan_in = int(w.shape[0])
                self.weights[self._name(node.input[1])] = (node.op_type, fan_in)
                if len(node.input) > 2 and node.input[2] in inits:
                    trainable.add(node.input[2])
                    self.biases.append(self._name(node.input[2]))
            if node.op_type == "BatchNormalization":
                trainable.update(n for n in node.input[1:3] if n in inits)
        for name, arr in inits.items():
            t = torch.from_numpy(np.array(arr))
            if name in trainable:
                self.params[self._name(name)] = nn.Parameter(t.float())
            else:
                self.register_buffer(self._name(name), t, persistent=False)

    def _name(self, onnx_name: str) -> str:
        # ParameterDict keys may not hold dots; keep a reversible map.
        key = "p" + "".join(c if c.isalnum() else "_" for c in onnx_name) + f"_{len(self._key)}"
        return self._key.setdefault(onnx_name, key)

    def tensor(self, onnx_name: str) -> torch.Tensor:
        """An initializer by its ONNX name (parameter or buffer)."""
        key = self._key[onnx_name]
        return self.params[key] if key in self.params else getattr(self, key)

    def conv_weight_names(self) -> list[str]:
        """Parameter keys of the Conv weights, in graph order."""
        return [k for k, (op, _) in self.weights.items() if op == "Conv"]

    def reinitialise(self, generator: torch.Generator | None = None) -> None:
        """Fresh Kaiming-normal (fan-in, ReLU gain) weights and zero biases: the scratch arm."""
        with torch.no_grad():
            for key, (_, fan_in) in self.weights.items():
                p = self.params[key]
                p.copy_(torch.randn(p.shape, generator=generator) * math.sqrt(2.0 / fan_in))
            for key in self.biases:
                self.params[key].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[self.output_name]

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate value, by ONNX name (for activation statistics)."""
        env: dict[str, torch.Tensor] = {self.input_name: x}

        def get(name: str) -> torch.Tensor:
            return env[name] if name in env else self.tensor(name)

        for node in self.nodes:
            args = [get(n) if n else None for n in node.input]
            outs = _run(node, args, _attrs(node))
            for name, value in zip(node.output, outs, strict=False):
                env[name] = value
        return env


def _run(node: onnx.NodeProto, a: list[Any], at: dict[str, Any]) -> list[torch.Tensor]:
    """One ONNX operator in torch (the subset exported CNN classifiers use)."""
    op = node.op_type
    if op == "Conv":
        dims = a[1].dim() - 2
        flat, sym = _pad_args(at, dims)
        x = F.pad(a[0], flat) if flat else a[0]
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
        bias = a[2] if len(a) > 2 else None
        stride, dil = at.get("strides", [1] * dims), at.get("dilations", [1] * dims)
        return [conv(x, a[1], bias, stride, sym, dil, at.get("group", 1))]
    if op in ("MaxPool", "AveragePool"):
        k = list(at["kernel_shape"])
        flat, sym = _pad_args(at, len(k))
        x = F.pad(a[0], flat, value=-math.inf if op == "MaxPool" else 0.0) if flat else a[0]
        stride, ceil = at.get("strides", k), bool(at.get("ceil_mode", 0))
        if op == "MaxPool":
            return [F.max_pool2d(x, k, stride, sym, ceil_mode=ceil)]
        return [F.avg_pool2d(x, k, stride, sym, ceil, not at.get("count_include_pad", 0))]
    if op == "GlobalAveragePool":
        return [a[0].mean(dim=tuple(range(2, a[0].dim())), keepdim=True)]
    if op == "Gemm":
        x = a[0].t() if at.get("transA", 0) else a[0]
        w = a[1].t() if at.get("transB", 0) else a[1]
        y = at.get("alpha", 1.0) * (x @ w)
        return [y + at.get("beta", 1.0) * a[2] if len(a) > 2 and a[2] is not None else y]
    simple = {
        "Relu": lambda: F.relu(a[0]),
        "HardSwish": lambda: F.hardswish(a[0]),
        "HardSigmoid": lambda: torch.clamp(at.get("alpha", 0.2) * a[0] + at.get("beta", 0.5), 0, 1),
        "Sigmoid": lambda: torch.sigmoid(a[0]),
        "Identity": lambda: a[0],
        "Dropout": lambda: a[0],
        "MatMul": lambda: a[0] @ a[1],
        "Add": lambda: a[0] + a[1],
        "Sub": lambda: a[0] - a[1],
        "Mul": lambda: a[0] * a[1],
        "Div": lambda: a[0] / a[1],
        "Flatten": lambda: a[0].flatten(at.get("axis", 1)) if at.get("axis", 1) else a[0].flatten(),
        "Concat": lambda: torch.cat(a, dim=at["axis"]),
        "Softmax": lambda: torch.softmax(a[0], dim=at.get("axis", -1)),
    }
    if op in simple:
        return [simple[op]()]
    if op == "Reshape":
        shape = [int(s) for s in a[1].tolist()]
        shape = [a[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return [a[0].reshape(shape)]
    if op == "Shape":
        # Opset 15 adds start/end; the shape is data (int64), not a trainable value.
        dims = list(a[0].shape)[at.get("start", 0) : at.get("end")]
        return [torch.tensor(dims, dtype=torch.int64)]
    if op == "Slice":
        return [_slice(a)]
    if op == "ReduceMean":
        # Axes: an attribute up to opset 17, an optional second input from opset 18.
        axes = at.get("axes") if len(a) < 2 or a[1] is None else [int(v) for v in a[1].tolist()]
        dims = tuple(axes) if axes else tuple(range(a[0].dim()))
        return [a[0].mean(dim=dims, keepdim=bool(at.get("keepdims", 1)))]
    if op == "BatchNormalization":
        return [F.batch_norm(a[0], a[3], a[4], a[1], a[2], False, 0.0, at.get("epsilon", 1e-5))]
    raise NotImplementedError(f"ONNX operator {op} ({node.name}) is not supported by the harness")


def _slice(a: list[Any]) -> torch.Tensor:
    """ONNX Slice (opset 10+: starts, ends, optional axes and steps as inputs)."""
    data, starts, ends = a[0], a[1].tolist(), a[2].tolist()
    axes = a[3].tolist() if len(a) > 3 and a[3] is not None else list(range(len(starts)))
    steps = a[4].tolist() if len(a) > 4 and a[4] is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * data.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step < 0:
            raise NotImplementedError("Slice with a negative step")
        # Python slicing clamps out-of-range bounds (ONNX's INT64_MAX 'to the end') itself.
        index[axis % data.dim()] = slice(int(start), int(end), int(step))
    return data[tuple(index)]


def conv_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Conv weight arrays of an ONNX file, keyed like :class:`OnnxModule` parameters."""
    module = OnnxModule(path)
    return {k: module.params[k].detach().numpy().copy() for k in module.conv_weight_names()}
