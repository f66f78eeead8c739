"""PSS: the paper's learned L0 gates, trained label-free on the ONNX graph itself.

Each kernel ``k`` gets a hard-concrete gate (Louizos et al. 2018) with parameter
``log_alpha_k``; the forward pass uses ``W * z``. The objective is the distance to
the plain model's own outputs (KL for classifiers, normalised MSE otherwise: no
labels) plus ``lambda`` times the expected number of open gates. Kernels whose
gates stay open are the important ones: the score is the learned ``log_alpha``.

Gradients come from ``onnx-ad``, which turns the gated loss graph into its adjoint
graph; ONNX Runtime runs both, so any model ONNX Runtime can run is trainable,
whichever framework exported it. Before differentiation the graph is normalised:
Constant-node tensors become initializers, the opset is raised to 17, every
intermediate shape is declared from one ONNX Runtime run at a fixed batch size.
Gates multiply the weight for ordinary convs, and the conv output (per output
channel) for grouped ones, whose weight onnx-ad cannot differentiate; for a
depthwise conv that is the same thing.

Unlike the paper, all layers' gates are trained jointly (one pass per step instead
of one per layer per step), which keeps this within minutes on a CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.version_converter
from onnx import TensorProto, helper, numpy_helper

from onnx_selenc._onnx.graph import ConvWeight
from onnx_selenc._onnx.metadata import strip_bundle
from onnx_selenc._onnx.progress import progress
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.objective import choose_objective
from onnx_selenc.exceptions import UnsupportedModel

GAMMA, ZETA, BETA = -0.1, 1.1, 2.0 / 3.0
LAMBDA = 1e-4
LOG_ALPHA_RANGE = (float(np.log(0.01)), float(np.log(100.0)))
OPSET = 17


@dataclass(frozen=True)
class Gate:
    """One gate tensor: which weight it scores, its input name and shape, and its mode."""

    key: str
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


class GateTrainer:
    """Runs the gated loss and its gradient with ONNX Runtime."""

    def __init__(self, program: GateProgram, calibration: Calibration) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        cpu = ["CPUExecutionProvider"]
        self.program = program
        self.loss_session = ort.InferenceSession(
            program.loss_model.SerializeToString(), so, providers=cpu
        )
        self.grad_session = ort.InferenceSession(
            program.adjoint_model.SerializeToString(), so, providers=cpu
        )
        self.plain = ort.InferenceSession(
            program.gated_model.SerializeToString(), so, providers=cpu
        )
        self.batches = [
            b
            for b in calibration.batches(program.batch)
            if len(next(iter(b.values()))) == program.batch
        ]
        if not self.batches:
            raise ValueError("fewer calibration samples than one PSS batch")
        self._targets: dict[int, list[np.ndarray]] = {}

    def _feeds(self, index: int, z: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        data = self.batches[index % len(self.batches)]
        if index % len(self.batches) not in self._targets:
            ones = {g.name: np.ones(g.shape, np.float32) for g in self.program.gates}
            self._targets[index % len(self.batches)] = self.plain.run(None, {**data, **ones})
        targets = self._targets[index % len(self.batches)]
        gates = {g.name: z[g.key].reshape(g.shape).astype(np.float32) for g in self.program.gates}
        return {**data, **gates, **dict(zip(self.program.targets, targets, strict=True))}

    def loss(self, index: int, z: Mapping[str, np.ndarray]) -> float:
        return float(self.loss_session.run(["pss_loss"], self._feeds(index, z))[0])

    def gradient(
        self, index: int, z: Mapping[str, np.ndarray]
    ) -> tuple[float, dict[str, np.ndarray]]:
        feeds = {**self._feeds(index, z), "adj_pss_loss": np.ones([1], np.float32)}
        out = self.grad_session.run(None, feeds)
        grads = {g.key: out[1 + i].reshape(-1) for i, g in enumerate(self.program.gates)}
        return float(out[0]), grads


def gate_sizes(program: GateProgram) -> dict[str, int]:
    return {g.key: int(np.prod(g.shape)) for g in program.gates}


def train_gates(
    trainer: GateTrainer,
    *,
    steps: int = 100,
    lr: float = 0.1,
    momentum: float = 0.9,
    lam: float = LAMBDA,
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, np.ndarray]:
    """Learn ``log_alpha`` per gate (SGD, Nesterov momentum; the paper's settings)."""
    rng = np.random.default_rng(seed)
    sizes = gate_sizes(trainer.program)
    log_alpha = {k: rng.normal(1.0, 1e-5, n) for k, n in sizes.items()}
    velocity = {k: np.zeros(n) for k, n in sizes.items()}
    shift = BETA * np.log(-GAMMA / ZETA)
    for step in progress(range(steps), desc="pss", total=steps, enabled=show_progress):
        u = {k: rng.uniform(1e-6, 1 - 1e-6, n) for k, n in sizes.items()}
        s = {k: _sigmoid((np.log(u[k]) - np.log1p(-u[k]) + log_alpha[k]) / BETA) for k in sizes}
        raw = {k: s[k] * (ZETA - GAMMA) + GAMMA for k in sizes}
        z = {k: np.clip(raw[k], 0.0, 1.0) for k in sizes}
        _, grad_z = trainer.gradient(step, z)
        for k in sizes:
            dz = (ZETA - GAMMA) * s[k] * (1 - s[k]) / BETA * ((raw[k] > 0) & (raw[k] < 1))
            p = _sigmoid(log_alpha[k] - shift)
            g = grad_z[k].astype(np.float64) * dz + lam * p * (1 - p)
            velocity[k] = momentum * velocity[k] + g
            log_alpha[k] = np.clip(
                log_alpha[k] - lr * (g + momentum * velocity[k]), *LOG_ALPHA_RANGE
            )
    return log_alpha


def kernel_scores(
    program: GateProgram, log_alpha: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Per-kernel scores; an output-channel gate scores every kernel of its channel."""
    return {g.key: g.to_kernels(log_alpha[g.key]) for g in program.gates}


def check_gradients(
    trainer: GateTrainer,
    *,
    checks: int = 6,
    steps: Sequence[float] = (1e-1, 3e-2, 1e-2, 3e-3),
    seed: int = 0,
) -> float:
    """Largest relative error between onnx-ad gradients and central finite differences.

    Checked at random gate values in (0.3, 0.9), on the gates with the largest
    gradients. float32 differences are noisy at small steps and curved at large ones,
    so each gate keeps the best of a few step sizes, as usual for such checks.
    """
    rng = np.random.default_rng(seed)
    sizes = gate_sizes(trainer.program)
    z = {k: rng.uniform(0.3, 0.9, n) for k, n in sizes.items()}
    _, grads = trainer.gradient(0, z)
    flat = [(abs(float(v)), k, i) for k, g in grads.items() for i, v in enumerate(g)]
    flat.sort(reverse=True)
    worst = 0.0
    for _, key, i in flat[:checks]:
        ad = float(grads[key][i])
        best = np.inf
        for h in steps:
            up = {k: v.copy() for k, v in z.items()}
            down = {k: v.copy() for k, v in z.items()}
            up[key][i] += h
            down[key][i] -= h
            fd = (trainer.loss(0, up) - trainer.loss(0, down)) / (2 * h)
            best = min(best, abs(fd - ad) / max(abs(fd), abs(ad), 1e-12))
        worst = max(worst, best)
    return worst


def pss_scorer(
    calibration: Calibration,
    *,
    objective: str = "auto",
    steps: int = 100,
    batch: int = 8,
    seed: int = 0,
    show_progress: bool = False,
):
    """A ScoreProvider for ``encrypt_model``: PSS where gateable, magnitude elsewhere."""

    def scores(
        model: onnx.ModelProto, chosen: Sequence[ConvWeight], arrays: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        program = build_program(model, chosen, calibration, objective=objective, batch=batch)
        trainer = GateTrainer(program, calibration)
        learned = kernel_scores(
            program, train_gates(trainer, steps=steps, seed=seed, show_progress=show_progress)
        )
        out = {}
        for w in chosen:
            if w.key in learned:
                out[w.key] = learned[w.key]
            else:  # not gateable (subgraph, integer): magnitude keeps it in the ranking
                values = arrays[w.key].reshape(w.n_kernels, -1).astype(np.float64)
                out[w.key] = np.abs(values).mean(axis=1)
        return out

    return scores


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


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
            gates.append(Gate(w.key, name, shape, True, (a, b)))
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
                    w.key,
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
    index = {g.key: i for i, g in enumerate(gates)}
    for node in graph.node:
        w_name = (
            node.input[1]
            if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1
            else None
        )
        cw = wanted.get(w_name) if w_name else None
        if cw is None or cw.key not in index:
            rewritten.append(node)
            continue
        gate = gates[index[cw.key]]
        if gate.per_kernel:
            node.input[1] = f"pss_gated_w_{index[cw.key]}"
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
