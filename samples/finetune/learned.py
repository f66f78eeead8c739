"""Recoveries of keyed wiring without a descent reference (issue 23).

- :func:`sinkhorn`: learned permutations. Per conv a matrix of logits, Sinkhorn-
  normalised into a soft permutation at an annealed temperature, reorders the public
  filters; every weight stays frozen, only the logits train, on the attacker's labelled
  data; each soft permutation is then rounded with the Hungarian method.
- :func:`weight_match`: the weight-matching step of Git Re-Basin (Ainsworth et al.
  2023) against a model the attacker trained from scratch on their own data. The
  reference's channels are in its own order, so both sides are unknown: per conv ``l``
  the public rows map to the reference's rows (``tau``) and the public file's true input
  order of the next layer maps to the reference's (``pi``); coordinate descent solves
  one linear assignment at a time; the wiring estimate is ``pi^-1 o tau``.

Both return permutations in the convention of :func:`samples.finetune.wiring.wired_file`
(``perm[j] = i``: public channel ``j`` holds true channel ``i``). Chains of convs only
(each conv read by the next conv, the last by a Gemm), like the VGG.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from samples.finetune.graph import OnnxModule
from samples.finetune.reference_match import conv_layers


def _sinkhorn(logits: torch.Tensor, temperature: float, iters: int = 20) -> torch.Tensor:
    """Doubly-stochastic matrix from logits (log-space Sinkhorn)."""
    z = logits / temperature
    for _ in range(iters):
        z = z - torch.logsumexp(z, dim=1, keepdim=True)
        z = z - torch.logsumexp(z, dim=0, keepdim=True)
    return z.exp()


def _hungarian(score: np.ndarray) -> list[int]:
    """perm[j] = i maximising sum score[i, j] (rows: true positions, columns: public)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-score)
    perm = np.empty(score.shape[1], dtype=np.int64)
    perm[cols] = rows
    return perm.tolist()


def sinkhorn(
    wired: str | Path,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int = 300,
    lr: float = 0.1,
    batch: int = 64,
    t_start: float = 1.0,
    t_end: float = 0.05,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[list[list[int]], list[float]]:
    """Learn one soft permutation per conv on ``(x, y)`` with every weight frozen.

    Returns:
        The rounded permutations and the training loss every 50 steps.
    """
    model = OnnxModule(wired).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    layers = conv_layers(model)
    gen = torch.Generator().manual_seed(seed)
    logits = [
        (0.01 * torch.randn(n, n, generator=gen)).requires_grad_()
        for n in (model.params[w].shape[0] for w, _ in layers)
    ]
    opt = torch.optim.Adam(logits, lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.default_rng(seed)
    history = []
    for step in range(steps):
        # Geometric annealing: soft early (gradients reach every entry), near-hard late.
        t = t_start * (t_end / t_start) ** (step / max(1, steps - 1))
        idx = torch.from_numpy(rng.choice(len(xt), size=min(batch, len(xt)), replace=False))
        swap = {}
        for (wk, bk), z in zip(layers, logits, strict=True):
            p = _sinkhorn(z, t)  # p[i, j]: weight of public filter j at true position i
            w = model.params[wk]
            swap[f"params.{wk}"] = (p @ w.flatten(1)).view_as(w)
            if bk is not None:
                swap[f"params.{bk}"] = p @ model.params[bk]
        out = torch.func.functional_call(model, swap, (xt[idx],))
        loss = F.cross_entropy(out, yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            history.append(float(loss.detach()))
            if log is not None:
                log(f"    sinkhorn step {step} t {t:.3f} loss {history[-1]:.3f}")
    with torch.no_grad():
        perms = [_hungarian(_sinkhorn(z, t_end).numpy()) for z in logits]
    return perms, history


def _chain(model: OnnxModule) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[bool]]:
    """Every weighted layer as (out, in_channels, rest), its bias, and whether it is a conv.

    Raises:
        ValueError: a layer whose inputs are not the previous layer's outputs (not a chain).
    """
    bias_of = {w: b for w, b in _bias_pairs(model)}
    weights, biases, convs = [], [], []
    prev = None
    for key, (op, _) in model.weights.items():
        w = model.params[key].detach().double()
        if prev is not None and w.shape[1] % prev:
            raise ValueError(f"{key}: {w.shape[1]} inputs do not group into {prev} channels")
        weights.append(w.reshape(w.shape[0], prev or w.shape[1], -1))
        b = bias_of.get(key)
        biases.append(model.params[b].detach().double() if b else None)
        convs.append(op == "Conv")
        prev = w.shape[0]
    return weights, biases, convs


def _bias_pairs(model: OnnxModule) -> list[tuple[str, str | None]]:
    out = []
    for node in model.nodes:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in model._key:
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            out.append((model._key[node.input[1]], model._key[bias] if bias else None))
    return out


def weight_match(
    wired: str | Path, reference: str | Path | OnnxModule, rounds: int = 30
) -> list[list[int]]:
    """Git Re-Basin weight matching of the wired file to an independently trained model.

    Every layer but the output one has unknowns: ``tau[t][j]``, the reference row of
    public row ``j``, and ``pi[t][i]``, the reference channel of true channel ``i``
    (the next layer's input slot ``i``). A conv is wired, so the two differ; an
    unwired hidden Gemm has ``tau == pi`` and is solved from both sides at once.
    """
    from scipy.optimize import linear_sum_assignment

    pub = OnnxModule(wired)
    ref = reference if isinstance(reference, OnnxModule) else OnnxModule(reference)
    a, a_bias, wired_layer = _chain(pub)
    b, b_bias, _ = _chain(ref)
    if [x.shape for x in a] != [x.shape for x in b]:
        raise ValueError("the reference's layers differ from the public file's")
    last = len(a) - 1  # the output layer: its rows are the classes, never permuted
    tau = [np.arange(a[t].shape[0]) for t in range(last)]
    pi = [np.arange(a[t].shape[0]) for t in range(last)]

    def solve(score: torch.Tensor) -> np.ndarray:
        return linear_sum_assignment(-score.numpy())[1]

    for _ in range(rounds):
        changed = False
        for t in range(last):
            # Rows: public row j vs reference row m, the public inputs in reference order.
            rows = a[t] if t == 0 else a[t][:, np.argsort(pi[t - 1])]
            row_score = torch.einsum("jck,mck->jm", rows, b[t])
            if a_bias[t] is not None and b_bias[t] is not None:
                row_score = row_score + torch.outer(a_bias[t], b_bias[t])
            # Columns: input slot i of the next layer vs the reference's slot m, the next
            # layer's rows put in reference order.
            nxt = a[t + 1] if t + 1 == last else a[t + 1][np.argsort(tau[t + 1])]
            col_score = torch.einsum("oik,omk->im", nxt, b[t + 1])
            if wired_layer[t]:
                new_tau, new_pi = solve(row_score), solve(col_score)
            else:
                new_tau = new_pi = solve(row_score + col_score)
            changed |= not (np.array_equal(new_tau, tau[t]) and np.array_equal(new_pi, pi[t]))
            tau[t], pi[t] = new_tau, new_pi
        if not changed:
            break
    # public j -> reference tau[j] -> true i with pi[i] = tau[j].
    return [np.argsort(pi[t])[tau[t]].tolist() for t in range(last) if wired_layer[t]]
