"""The PSS gate graph: the model normalised for differentiation, with gates and a loss.

Before differentiation the graph is normalised: Constant-node tensors become
initializers, the opset is raised to 17, every intermediate shape is declared from one
ONNX Runtime run at a fixed batch size. Gates multiply the weight for ordinary convs,
and the conv output (per output channel) for grouped ones, whose weight onnx-ad cannot
differentiate; for a depthwise conv that is the same thing. ``onnx-ad`` then turns the
gated loss graph into its adjoint graph, which ONNX Runtime runs (see ``pss``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.version_converter
from onnx import TensorProto, helper, numpy_helper

from onnx_selenc._onnx.graph import ConvWeight
from onnx_selenc._onnx.metadata import strip_bundle
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.objective import choose_objective
from onnx_selenc.exceptions import UnsupportedModel

OPSET = 17


@dataclass(frozen=True)
class Gate:
    """One gate tensor: which weight it scores, its input name and shape, and its mode."""

    address: str
    name: str
    shape: tuple[int, ...]
    per_kernel: bool
    kernel_shape: tuple[int, int]
    out_channel: tuple[int, ...] = ()

    def to_kernels(self, values: np.ndarray) -> np.ndarray:
        """Spread gate values over the weight's kernels (an output gate covers many)."""
        return values if self.per_kernel else values[np.asarray(self.out_channel)]


@dataclass(frozen=True)
class GateProgram:
    """The gated loss graph, its adjoint, and how to feed them."""

    loss_model: onnx.ModelProto
    adjoint_model: onnx.ModelProto
    gated_model: onnx.ModelProto
    gates: tuple[Gate, ...]
    data_inputs: tuple[str, ...]
    targets: tuple[str, ...]
    batch: int
    objective: str


def build_program(
    model: onnx.ModelProto,
    weights: Sequence[ConvWeight],
    calibration: Calibration,
    *,
    objective: str = "auto",
    batch: int = 8,
) -> GateProgram:
    """Normalise the graph, insert gates and the loss, and differentiate it.

    Raises:
        UnsupportedModel: no gateable conv, or the graph cannot be differentiated.
    """
    try:
        from onnx_ad import reverse
    except ImportError:
        raise ImportError(
            "importance 'pss' needs onnx-ad: pip install 'onnx-selenc[pss]'"
        ) from None

    work = onnx.ModelProto()
    work.CopyFrom(model)
    strip_bundle(work)
    _constants_to_initializers(work.graph)
    work = _to_opset(work)
    sample = calibration.take(slice(0, batch))
    batch = sample.n
    _fix_input_shapes(work, sample)
    plain = _declare_shapes(work, sample)
    obj = choose_objective(plain, objective)

    gates = _insert_gates(
        work,
        [
            w
            for w in weights
            if w.in_main_graph
            and w.dtype in ("float32", "float16", "float64")
            and set(w.op_types) <= {"Conv", "ConvTranspose"}
        ],
    )
    if not gates:
        raise UnsupportedModel("PSS found no main-graph float conv weight to gate")
    gated = onnx.ModelProto()
    gated.CopyFrom(work)  # before the loss: gives the targets, with every gate at 1
    targets, outputs = _add_loss(work, plain, obj)
    del outputs
    try:
        adjoint = reverse(work, inputs=[g.name for g in gates], outputs=["pss_loss"], layout="onnx")
    except Exception as exc:  # onnx-ad refuses an operation it has no rule for
        raise UnsupportedModel(f"PSS cannot differentiate this graph: {exc}") from None
    data_inputs = tuple(sample.feeds)
    return GateProgram(work, adjoint, gated, tuple(gates), data_inputs, tuple(targets), batch, obj)


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    kept = []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if (
            node.op_type == "Constant"
            and value is not None
            and value.type == onnx.AttributeProto.TENSOR
        ):
            t = onnx.TensorProto()
            t.CopyFrom(value.t)
            t.name = node.output[0]
            graph.initializer.append(t)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _to_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if current >= OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, OPSET)
    except Exception as exc:
        raise UnsupportedModel(
            f"PSS needs opset {OPSET}; converting from {current} failed: {exc}"
        ) from None


def _fix_input_shapes(model: onnx.ModelProto, sample: Calibration) -> None:
    for inp in model.graph.input:
        if inp.name in sample.feeds:
            shape = sample.feeds[inp.name].shape
            dims = inp.type.tensor_type.shape.dim
            del dims[:]
            for d in shape:
                dims.add().dim_value = int(d)


def _declare_shapes(model: onnx.ModelProto, sample: Calibration) -> list[np.ndarray]:
    """Run once with every intermediate exposed; declare their types and shapes."""
    import onnxruntime as ort

    graph = model.graph
    declared = {v.name for v in (*graph.input, *graph.output, *graph.initializer)}
    names = [o for n in graph.node for o in n.output if o and o not in declared]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    n_out = len(probe.graph.output)
    for name in names:
        probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        probe.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    values = session.run(None, dict(sample.feeds))
    del graph.value_info[:]
    for name, value in zip(names, values[n_out:], strict=True):
        arr = np.asarray(value)
        if arr.dtype == object:
            continue
        graph.value_info.append(
            helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)
            )
        )
    for out, value in zip(graph.output, values[:n_out], strict=True):
        arr = np.asarray(value)
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        for d in arr.shape:
            dims.add().dim_value = int(d)
    return [np.asarray(v) for v in values[:n_out]]


def _insert_gates(model: onnx.ModelProto, weights: Sequence[ConvWeight]) -> list[Gate]:
    graph = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info}
    gates = []
    new_nodes: list[onnx.NodeProto] = []
    wanted = {w.name: w for w in weights}
    for i, w in enumerate(weights):
        a, b = w.shape[0], w.shape[1]
        # onnx-ad differentiates Conv weights, but not grouped ones nor ConvTranspose
        # weights: those are gated on their output channels instead.
        on_output = any(g > 1 for g in w.groups) or "ConvTranspose" in w.op_types
        if not on_output:
            name = f"pss_gate_{i}"
            shape = (a, b) + (1,) * (len(w.shape) - 2)
            gates.append(Gate(w.address, name, shape, True, (a, b)))
            gated = f"pss_gated_w_{i}"
            new_nodes.append(helper.make_node("Mul", [w.name, name], [gated]))
        else:
            group = w.groups[0] if w.groups else 1
            k = np.arange(a * b)
            if "ConvTranspose" in w.op_types:  # W[i, o]: output channel g * b + o
                out = (k // b) // max(1, a // group) * b + k % b
                channels = b * group
            else:  # W[o, i]: output channel o
                out, channels = k // b, a
            gates.append(
                Gate(
                    w.address,
                    f"pss_gate_{i}",
                    (int(channels),),
                    False,
                    (a, b),
                    tuple(int(c) for c in out),
                )
            )
    for g in gates:
        elem = TensorProto.FLOAT
        graph.input.append(helper.make_tensor_value_info(g.name, elem, list(g.shape)))
    rewritten: list[onnx.NodeProto] = []
    index = {g.address: i for i, g in enumerate(gates)}
    for node in graph.node:
        w_name = (
            node.input[1]
            if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1
            else None
        )
        cw = wanted.get(w_name) if w_name else None
        if cw is None or cw.address not in index:
            rewritten.append(node)
            continue
        gate = gates[index[cw.address]]
        if gate.per_kernel:
            node.input[1] = f"pss_gated_w_{index[cw.address]}"
            rewritten.append(node)
            continue
        # Grouped conv: Conv(x, W) * g + b, so the gate scales the weight's contribution.
        out = node.output[0]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        raw, gated_out = f"{out}_pss_raw", f"{out}_pss_gated"
        del node.input[2:]
        node.output[0] = raw
        rank = len(shapes.get(out, [])) or (len(cw.shape))
        g4 = f"{gate.name}_nd"
        axes = helper.make_tensor(
            f"{g4}_shape", TensorProto.INT64, [rank], [1, gate.shape[0]] + [1] * (rank - 2)
        )
        graph.initializer.append(axes)
        rewritten += [
            node,
            helper.make_node("Reshape", [gate.name, axes.name], [g4]),
            helper.make_node("Mul", [raw, g4], [gated_out if bias else out]),
        ]
        if bias:
            b_shape = helper.make_tensor(
                f"{g4}_bshape", TensorProto.INT64, [rank], [1, gate.shape[0]] + [1] * (rank - 2)
            )
            graph.initializer.append(b_shape)
            rewritten += [
                helper.make_node("Reshape", [bias, b_shape.name], [f"{g4}_b"]),
                helper.make_node("Add", [gated_out, f"{g4}_b"], [out]),
            ]
        if out in shapes:
            for name in (raw, gated_out):
                graph.value_info.append(
                    helper.make_tensor_value_info(name, TensorProto.FLOAT, shapes[out])
                )
    del graph.node[:]
    graph.node.extend(new_nodes + rewritten)
    return gates


def _add_loss(
    model: onnx.ModelProto, plain: Sequence[np.ndarray], objective: str
) -> tuple[list[str], list[str]]:
    """Append the loss; returns the target input names and the outputs they match."""
    graph = model.graph
    outputs = list(graph.output)
    targets, terms, nodes, used = [], [], [], []
    for i, (out, value) in enumerate(zip(outputs, plain, strict=True)):
        if not np.issubdtype(value.dtype, np.floating):
            continue
        t = f"pss_target_{i}"
        targets.append(t)
        used.append(out.name)
        graph.input.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, list(value.shape)))
        term = f"pss_term_{i}"
        if objective == "kl":
            is_prob = bool(np.all(value >= 0) and np.allclose(value.sum(axis=1), 1, atol=1e-3))
            logp = f"pss_logp_{i}"
            if is_prob:
                eps = numpy_helper.from_array(np.array(1e-8, np.float32), f"pss_eps_{i}")
                graph.initializer.append(eps)
                nodes += [
                    helper.make_node("Add", [out.name, eps.name], [f"{logp}_in"]),
                    helper.make_node("Log", [f"{logp}_in"], [logp]),
                ]
            else:
                nodes.append(helper.make_node("LogSoftmax", [out.name], [logp], axis=1))
            # Cross-entropy against the plain distribution = KL + a constant.
            scale = numpy_helper.from_array(
                np.array(-1.0 / value.shape[0], np.float32), f"pss_scale_{i}"
            )
            graph.initializer.append(scale)
            nodes += [
                helper.make_node("Mul", [t, logp], [f"{term}_pl"]),
                helper.make_node("ReduceSum", [f"{term}_pl"], [f"{term}_sum"], keepdims=0),
                helper.make_node("Mul", [f"{term}_sum", scale.name], [term]),
            ]
        else:
            inv = numpy_helper.from_array(
                np.array(1.0 / (float(np.var(value)) + 1e-12), np.float32), f"pss_inv_{i}"
            )
            graph.initializer.append(inv)
            nodes += [
                helper.make_node("Sub", [out.name, t], [f"{term}_d"]),
                helper.make_node("Mul", [f"{term}_d", f"{term}_d"], [f"{term}_d2"]),
                helper.make_node("ReduceMean", [f"{term}_d2"], [f"{term}_m"], keepdims=0),
                helper.make_node("Mul", [f"{term}_m", inv.name], [term]),
            ]
        terms.append(term)
    if not terms:
        raise UnsupportedModel("PSS needs a floating-point model output")
    nodes.append(
        helper.make_node("Sum", terms, ["pss_loss"])
        if len(terms) > 1
        else helper.make_node("Identity", terms, ["pss_loss"])
    )
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("pss_loss", TensorProto.FLOAT, []))
    return targets, used
