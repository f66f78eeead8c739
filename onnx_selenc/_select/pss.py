"""PSS: the paper's learned L0 gates, trained label-free on the ONNX graph itself.

Each kernel ``k`` gets a hard-concrete gate (Louizos et al. 2018) with parameter
``log_alpha_k``; the forward pass uses ``W * z``. The objective is the distance to
the plain model's own outputs (KL for classifiers, normalised MSE otherwise: no
labels) plus ``lambda`` times the expected number of open gates. Kernels whose
gates stay open are the important ones: the score is the learned ``log_alpha``.

Gradients come from ``onnx-ad``, which turns the gated loss graph into its adjoint
graph; ONNX Runtime runs both, so any model ONNX Runtime can run is trainable,
whichever framework exported it. The gate graph and its
normalisation live in ``gate_graph``; this module trains the gates and scores kernels.

Unlike the paper, all layers' gates are trained jointly (one pass per step instead
of one per layer per step), which keeps this within minutes on a CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnx_selenc._onnx.graph import ConvWeight
from onnx_selenc._onnx.progress import progress
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.gate_graph import Gate, GateProgram, build_program

__all__ = [
    "Gate",
    "GateProgram",
    "GateTrainer",
    "build_program",
    "check_gradients",
    "gate_sizes",
    "kernel_scores",
    "pss_scorer",
    "train_gates",
]

GAMMA, ZETA, BETA = -0.1, 1.1, 2.0 / 3.0
LAMBDA = 1e-4
LOG_ALPHA_RANGE = (float(np.log(0.01)), float(np.log(100.0)))


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
        gates = {
            g.name: z[g.address].reshape(g.shape).astype(np.float32) for g in self.program.gates
        }
        return {**data, **gates, **dict(zip(self.program.targets, targets, strict=True))}

    def loss(self, index: int, z: Mapping[str, np.ndarray]) -> float:
        return float(self.loss_session.run(["pss_loss"], self._feeds(index, z))[0])

    def gradient(
        self, index: int, z: Mapping[str, np.ndarray]
    ) -> tuple[float, dict[str, np.ndarray]]:
        feeds = {**self._feeds(index, z), "adj_pss_loss": np.ones([1], np.float32)}
        out = self.grad_session.run(None, feeds)
        grads = {g.address: out[1 + i].reshape(-1) for i, g in enumerate(self.program.gates)}
        return float(out[0]), grads


def gate_sizes(program: GateProgram) -> dict[str, int]:
    return {g.address: int(np.prod(g.shape)) for g in program.gates}


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
    return {g.address: g.to_kernels(log_alpha[g.address]) for g in program.gates}


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
    for _, address, i in flat[:checks]:
        ad = float(grads[address][i])
        best = np.inf
        for h in steps:
            up = {k: v.copy() for k, v in z.items()}
            down = {k: v.copy() for k, v in z.items()}
            up[address][i] += h
            down[address][i] -= h
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
            if w.address in learned:
                out[w.address] = learned[w.address]
            else:  # not gateable (subgraph, integer): magnitude keeps it in the ranking
                values = arrays[w.address].reshape(w.n_kernels, -1).astype(np.float64)
                out[w.address] = np.abs(values).mean(axis=1)
        return out

    return scores


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))
