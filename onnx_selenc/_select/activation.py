"""The ``activation`` scorer: weight magnitude times the RMS of the input it convolves.

A kernel ``W[o, i]`` only matters as much as the input channel it reads is active:
score = mean |W[o, i]| * RMS(input channel of that kernel) over the calibration set.
Forward passes only; the intermediate tensors are read as extra graph outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnx_selenc._onnx.graph import TRANSPOSED_OPS, ConvWeight
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.masking import kernel_matrix
from onnx_selenc._select.probe import Probe


def channel_rms(
    model: onnx.ModelProto, weights: Sequence[ConvWeight], calibration: Calibration
) -> dict[str, np.ndarray]:
    """RMS per channel of every main-graph conv input feeding ``weights``."""
    graph_inputs = {i.name for i in model.graph.input}
    names = sorted(
        {
            name
            for w in weights
            if w.in_main_graph
            for name in w.data_inputs
            if name not in graph_inputs
        }
    )
    probe = Probe(model, [], extra_outputs=names)
    sums: dict[str, np.ndarray] = {}
    count: dict[str, int] = {}

    def add(name: str, x: np.ndarray) -> None:
        if x.ndim < 2:
            return
        x64 = x.astype(np.float64)
        axes = (0, *range(2, x.ndim))
        sums[name] = sums.get(name, 0) + np.square(x64).sum(axis=axes)
        count[name] = count.get(name, 0) + int(np.prod([x.shape[a] for a in axes]))

    for batch in calibration.batches(probe.batch):
        outputs = probe.run(batch)
        for name, value in zip(names, outputs[probe.n_outputs :], strict=True):
            add(name, value)
        for name in graph_inputs & {n for w in weights for n in w.data_inputs}:
            if name in batch:
                add(name, batch[name])
    return {name: np.sqrt(sums[name] / count[name]) for name in sums}


def activation_scores(
    weight: ConvWeight, values: np.ndarray, rms: Mapping[str, np.ndarray]
) -> np.ndarray:
    """Score every kernel of one weight (magnitude alone where no activation is known)."""
    kernels = kernel_matrix(values).astype(np.float64)
    magnitude = np.abs(kernels).mean(axis=1)
    a, b = values.shape[0], values.shape[1]
    energy = np.zeros(a * b)
    seen = False
    for name, group, op in zip(weight.data_inputs, weight.groups, weight.op_types, strict=False):
        r = rms.get(name)
        if r is None:
            continue
        if op in TRANSPOSED_OPS:
            channel = np.repeat(np.arange(a), b)  # W[i, o] reads input channel i
        else:
            per_group_out = max(1, a // max(1, group))
            o, i = np.divmod(np.arange(a * b), b)
            channel = (o // per_group_out) * b + i
        if channel.max() >= len(r):
            continue
        energy += r[channel] ** 2
        seen = True
    return magnitude * np.sqrt(energy) if seen else magnitude


def activation_scorer(calibration: Calibration):
    """A ScoreProvider for ``encrypt_model``."""

    def scores(
        model: onnx.ModelProto, chosen: Sequence[ConvWeight], arrays: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        rms = channel_rms(model, chosen, calibration)
        return {w.address: activation_scores(w, arrays[w.address], rms) for w in chosen}

    return scores
