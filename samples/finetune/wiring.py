"""Keyed wiring (issue 15, hypothesis 3) and a permutation-recovery attack on it.

The public file permutes each conv layer's output channels (its filters and biases)
with a secret permutation and leaves the next layer's input channels as they were, so
every kernel keeps its true values (no statistical fingerprint) but the layers are
wired wrongly; the key is one permutation per layer. A tier that restores the first
``k`` layers un-permutes their filters.

The recovery attack works layer by layer from the input: with the layers before
``l`` already un-permuted (by the attacker's own estimate), it measures the mean ReLU
activation of each of layer ``l``'s output channels on the attacker's digits and
matches channels to the next layer's input slots by rank of the slot's incoming weight
norm (the Hungarian solution of a one-dimensional matching). Real channels with large
activations tend to feed large next-layer weights only if training made them so; the
measured agreement says how much signal that leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from samples.finetune.graph import OnnxModule


def _convs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    inits = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits]


def wired_file(
    plain: Path, out_dir: Path, seed: int, name: str | None = None
) -> tuple[Path, list[list[int]]]:
    """Write the keyed-wiring public file; return it and the secret permutations.

    ``perm[j] = i``: public output channel ``j`` holds true channel ``i``. Every conv is
    permuted on its own, also where outputs meet at a residual add (the add then sums
    mismatched channels, which only the key's un-permutation puts right). ``plain`` may
    itself be a masked public file (hypothesis 5); ``name`` names the output file.
    """
    out = out_dir / (name or f"wired-{seed}.onnx")
    model = onnx.load(str(plain))
    inits = {t.name: t for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    perms = []
    for node in _convs(model):
        names = [node.input[1]] + ([node.input[2]] if len(node.input) > 2 else [])
        w = numpy_helper.to_array(inits[names[0]])
        perm = rng.permutation(w.shape[0])
        perms.append(perm.tolist())
        for name in names:
            arr = numpy_helper.to_array(inits[name])
            inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr[perm]), name))
    if not out.exists():
        onnx.save(model, str(out))
    return out, perms


def _conv_keys(model: OnnxModule) -> list[tuple[str, str | None]]:
    """(weight key, bias key) per conv, in graph order (convs come first in these CNNs)."""
    convs = model.conv_weight_names()
    return list(zip(convs, model.biases[: len(convs)], strict=True))


def apply(perms: list[list[int]], upto: int | None = None) -> Callable[[OnnxModule, int], None]:
    """A mutation that un-permutes the first ``upto`` convs with the given permutations."""

    def mutate(model: OnnxModule, _seed: int = 0) -> None:
        with torch.no_grad():
            for (wk, bk), perm in list(zip(_conv_keys(model), perms, strict=True))[:upto]:
                inv = torch.from_numpy(np.argsort(np.asarray(perm)))
                for key in (wk, bk):
                    if key is not None:
                        model.params[key].copy_(model.params[key][inv])

    return mutate


def tier_table(
    plain: Path, perms: list[list[int]], x: np.ndarray, y: np.ndarray, seed: int = 0
) -> list[dict[str, Any]]:
    """Accuracy when the first ``k`` layers' permutations are undone, k = 0..L."""
    from samples.finetune.harness import accuracy

    wired, _ = wired_file(plain, plain.parent, seed)
    rows = []
    for k in range(len(perms) + 1):
        model = OnnxModule(wired)
        apply(perms, k)(model)
        rows.append({"layers_restored": k, "accuracy": accuracy(model, x, y)})
    return rows


def _consumer_norms(model: OnnxModule, index: int, slots: int) -> np.ndarray:
    """Norm of the weights reading each input slot of the layer after conv ``index``."""
    keys = list(model.weights)
    w = model.params[keys[index + 1]].detach()
    op = model.weights[keys[index + 1]][0]
    if op == "Conv":
        return w.transpose(0, 1).flatten(1).norm(dim=1).numpy()
    # Gemm with transB=1 (torch Linear layout) reads slot i through column i, else row i.
    return (w.norm(dim=0) if w.shape[1] == slots else w.norm(dim=1)).numpy()


def recover(wired: Path, x: np.ndarray, _y: np.ndarray) -> list[list[int]]:
    """Estimate every layer's permutation from activations and next-layer weights."""
    model = OnnxModule(wired)
    convs = [n for n in model.nodes if n.op_type == "Conv"]
    relu_of = {n.input[0]: n.output[0] for n in model.nodes if n.op_type == "Relu"}
    xt = torch.from_numpy(x)
    est: list[list[int]] = []
    for i, node in enumerate(convs):
        with torch.no_grad():
            act = model.forward_all(xt)[relu_of.get(node.output[0], node.output[0])]
        mean_act = act.mean(dim=(0, 2, 3)).numpy()
        norms = _consumer_norms(model, i, len(mean_act))
        perm = np.empty(len(mean_act), dtype=np.int64)
        perm[np.argsort(-mean_act, kind="stable")] = np.argsort(-norms, kind="stable")
        est.append(perm.tolist())
        apply([perm.tolist()], 1)(_Only(model, i))
    return est


class _Only:
    """View of a model that exposes one conv (so :func:`apply` touches only it)."""

    def __init__(self, model: OnnxModule, index: int) -> None:
        self.params = model.params
        self.biases = [model.biases[index]]
        self._w = model.conv_weight_names()[index]

    def conv_weight_names(self) -> list[str]:
        return [self._w]


def agreement(est: list[list[int]], perms: list[list[int]]) -> float:
    """Share of channels whose permutation the attack recovered."""
    hits = sum(int(np.sum(np.asarray(e) == np.asarray(p))) for e, p in zip(est, perms, strict=True))
    return hits / sum(len(p) for p in perms)


def recover_gradient(
    wired: Path, x: np.ndarray, y: np.ndarray, rounds: int = 4, batch: int = 400
) -> tuple[list[list[int]], list[float]]:
    """Estimate the permutations by linearised loss matching (see the module notes).

    Args:
        wired: the keyed-wiring public file.
        x: the attacker's labelled examples; ``y`` their labels.
        rounds: passes over the layers.
        batch: examples per loss/gradient evaluation (the first ``batch`` of ``x``).

    Returns:
        The estimated permutations (same convention as :func:`wired_file`) and the
        attacker's loss after each round.
    """
    from scipy.optimize import linear_sum_assignment
    from torch.nn import functional as F

    model = OnnxModule(wired)
    keys = _conv_keys(model)
    xt, yt = torch.from_numpy(x[:batch]), torch.from_numpy(y[:batch])
    # order[l]: current filters of conv l = public filters [order[l]].
    order = [np.arange(model.params[wk].shape[0]) for wk, _ in keys]

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(xt), yt)

    def permute(layer: int, sigma: np.ndarray) -> None:
        idx = torch.from_numpy(sigma)
        with torch.no_grad():
            for key in keys[layer]:
                if key is not None:
                    model.params[key].copy_(model.params[key][idx])
        order[layer] = order[layer][sigma]

    history = []
    model.eval()
    for _ in range(rounds):
        for layer, (wk, bk) in enumerate(keys):
            model.zero_grad(set_to_none=True)
            current = loss()
            current.backward()
            w, gw = model.params[wk].detach().flatten(1), model.params[wk].grad.flatten(1)
            g = gw @ w.T
            if bk is not None:
                g = g + torch.outer(model.params[bk].grad, model.params[bk].detach())
            _, sigma = linear_sum_assignment(g.numpy())
            if np.array_equal(sigma, np.arange(len(sigma))):
                continue
            permute(layer, sigma)
            with torch.no_grad():
                if float(loss()) >= float(current):  # keep only improvements
                    permute(layer, np.argsort(sigma))
        with torch.no_grad():
            history.append(float(loss()))
    model.zero_grad(set_to_none=True)
    return [np.argsort(o).tolist() for o in order], history
