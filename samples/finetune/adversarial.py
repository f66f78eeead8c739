"""Adversarial replacement values (issue 15, hypothesis 4), AdvParams-style.

Starts from a public file of today's method (the tool chose the masked kernels and drew
their values from the layer's distribution) and moves only the masked values, by signed
gradient ascent on the owner's own training loss, inside the layer's plain value range.
Then the values are put back onto the tool's own draws by rank (the largest optimised
value gets the largest draw, and so on), so each layer's masked values are exactly the
multiset the tool drew: the statistics a detector sees are today's, only the assignment
of values to positions is chosen adversarially.

What this cannot change: an attacker who knows the masked positions and re-initialises
them throws the chosen values away, so against that attacker this file is the same start
as today's (see the curve's re-initialised column). A shipped mode would also have to
place the values before the tool seals its manifest; here only the public file is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch.nn import functional as F

from samples.finetune.graph import OnnxModule


def _masks(model: OnnxModule, ref: OnnxModule) -> dict[str, torch.Tensor]:
    """Per conv weight key: boolean mask (weight shape) of the kernels the tool masked."""
    out = {}
    for key in model.conv_weight_names():
        w, p = model.params[key].detach(), ref.params[key].detach()
        kernels = (w != p).flatten(2).any(dim=2)
        out[key] = kernels[(...,) + (None,) * (w.dim() - 2)].expand_as(w).clone()
    return out


def _loss(model: OnnxModule, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def adversarial_file(
    plain: Path,
    public: Path,
    out: Path,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int = 300,
    batch: int = 128,
    step_share: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the public file with adversarially placed masked values; return its stats.

    Args:
        plain: the plain model (to find which kernels the public file masked).
        public: today's public file at some budget.
        out: where the adversarial public file goes (left as is if it exists, but the
            stats are recomputed from it).
        x: the owner's training examples; ``y`` their labels.
        steps: signed-gradient ascent steps.
        batch: examples per step.
        step_share: step size as a share of each layer's plain weight standard deviation.
        seed: batch order.

    Returns:
        Owner-data loss of today's file, after ascent (before the rank mapping) and of
        the written file; accuracy on the last 1,000 of ``x`` of today's and the
        written file.
    """
    ref, model = OnnxModule(plain), OnnxModule(public)
    masks = _masks(model, ref)
    xe, ye = torch.from_numpy(x[-1000:]), torch.from_numpy(y[-1000:])

    def acc(m: OnnxModule) -> float:
        with torch.no_grad():
            return float((m(xe).argmax(1) == ye).float().mean())

    stats: dict[str, Any] = {"loss_today": _loss(model, xe, ye), "accuracy_today": acc(model)}
    draws = {k: model.params[k].detach()[m].clone() for k, m in masks.items()}
    if not out.exists():
        bounds = {
            k: (float(ref.params[k].min()), float(ref.params[k].max()), float(ref.params[k].std()))
            for k in masks
        }
        for p in model.parameters():
            p.requires_grad_(False)
        for k in masks:
            model.params[k].requires_grad_(True)
        rng = np.random.default_rng(seed)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        model.eval()
        for _ in range(steps):
            idx = torch.from_numpy(rng.choice(len(xt), size=batch, replace=False))
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            with torch.no_grad():
                for k, m in masks.items():
                    w, (lo, hi, std) = model.params[k], bounds[k]
                    moved = w[m] + step_share * std * torch.sign(w.grad[m])  # type: ignore[index]
                    w[m] = moved.clamp(lo, hi)
        stats["loss_ascent"] = _loss(model, xe, ye)
        with torch.no_grad():
            for k, m in masks.items():
                w = model.params[k]
                order = torch.argsort(w[m])
                placed = torch.empty_like(draws[k])
                placed[order] = torch.sort(draws[k]).values
                w[m] = placed
        _write(public, out, model)
    written = OnnxModule(out)
    stats.update(loss_written=_loss(written, xe, ye), accuracy_written=acc(written))
    same = all(
        torch.equal(torch.sort(written.params[k].detach()[m]).values, torch.sort(d).values)
        for (k, m), d in zip(masks.items(), draws.values(), strict=True)
    )
    if not same:
        raise RuntimeError("adversarial values are not the tool's draws rearranged")
    return stats


def _write(public: Path, out: Path, model: OnnxModule) -> None:
    """The public file with the model's conv weights, written atomically."""
    proto = onnx.load(str(public))
    by_key = {v: k for k, v in model._key.items()}
    convs = {by_key[k]: model.params[k].detach().numpy() for k in model.conv_weight_names()}
    for t in proto.graph.initializer:
        if t.name in convs:
            arr = convs[t.name].astype(numpy_helper.to_array(t).dtype)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(out)
