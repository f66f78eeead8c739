"""Recovery of keyed wiring from a reference the weights descend from (issue 23).

Wiring permutes each conv's output channels (filters and biases) and leaves the next
layer's input side as it was, so every public filter still reads its inputs in the true
order. Any weights that correlate with the victim's filter by filter undo it: per conv
layer, in graph order, each public filter is matched to one reference filter by cosine
similarity with the Hungarian method (``scipy.optimize.linear_sum_assignment``).

A reference "the weights descend from" is, for example, the initial weights of a model
trained from a known seed (every sample here trains from ``torch.manual_seed(0)``), or a
public pretrained checkpoint the victim was fine-tuned from. The reference's channels
must be in the victim's true order, which holds for a descent (training never reorders
channels); a reference trained separately needs weight matching on both sides instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from samples.finetune.graph import OnnxModule


@dataclass(frozen=True)
class Match:
    """The estimated wiring and how well it fits.

    Attributes:
        perms: per conv in graph order, ``perms[l][j] = i``: public channel ``j`` holds
            true channel ``i`` (the convention of :func:`samples.finetune.wiring.wired_file`).
        similarity: per conv, the mean cosine similarity of the matched filter pairs.
    """

    perms: list[list[int]]
    similarity: list[float]

    @property
    def mean_similarity(self) -> float:
        """Mean matched cosine over every layer (how an attacker ranks candidate references)."""
        return float(np.mean(self.similarity))


def _filters(model: OnnxModule, weight: str, bias: str | None) -> np.ndarray:
    """One row per output channel: its kernel weights, then its bias."""
    w = model.params[weight].detach().flatten(1)
    if bias is not None:
        w = torch.cat([w, model.params[bias].detach()[:, None]], dim=1)
    return w.numpy().astype(np.float64)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b``."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def conv_layers(model: OnnxModule) -> list[tuple[str, str | None]]:
    """(weight key, bias key or None) per Conv, in graph order, read from the nodes."""
    out = []
    for node in model.nodes:
        if node.op_type == "Conv" and node.input[1] in model._key:
            key = model._key[node.input[1]]
            if key in model.params:
                bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
                out.append((key, model._key[bias] if bias else None))
    return out


def match(public: str | Path | OnnxModule, reference: str | Path | OnnxModule) -> Match:
    """Match every conv's public filters to the reference's, layer by layer.

    Args:
        public: the wired (and possibly masked) public file, or its module.
        reference: weights the victim descends from, same architecture.

    Returns:
        The estimated permutations and the matched similarity per layer.

    Raises:
        ValueError: the two graphs' convs differ in number or shape.
    """
    from scipy.optimize import linear_sum_assignment

    pub = public if isinstance(public, OnnxModule) else OnnxModule(public)
    ref = reference if isinstance(reference, OnnxModule) else OnnxModule(reference)
    layers, ref_layers = conv_layers(pub), conv_layers(ref)
    if len(layers) != len(ref_layers):
        raise ValueError(
            f"{len(layers)} convs in the public file, {len(ref_layers)} in the reference"
        )
    perms, sims = [], []
    for (wk, bk), (rk, rb) in zip(layers, ref_layers, strict=True):
        a = _filters(pub, wk, bk if rb is not None else None)
        b = _filters(ref, rk, rb if bk is not None else None)
        if a.shape != b.shape:
            raise ValueError(f"conv {wk}: public filters {a.shape}, reference {b.shape}")
        sim = _cosine(a, b)
        rows, cols = linear_sum_assignment(-sim)  # rows are 0..n-1 in order
        perms.append(cols.tolist())
        sims.append(float(sim[rows, cols].mean()))
    return Match(perms, sims)


def reference_from_torch(model: torch.nn.Module, example: np.ndarray, path: Path) -> Path:
    """Export a torch model as the attacker's reference ONNX file (once; kept if present)."""
    from samples.paper import _common

    if not path.exists():
        _common.export_onnx(model.eval(), torch.from_numpy(example), path, external_data=False)
    return path


def restore_from_reference(
    reference: str | Path, threshold: float = 0.5
) -> Callable[[OnnxModule, int], None]:
    """After matching: replace every kernel unlike the reference's with the reference's.

    A masked kernel holds values drawn from the layer's distribution, unrelated to the
    kernel it replaces, while fine-tuning leaves real kernels close to where they started;
    a kernel whose cosine with its reference kernel is under ``threshold`` is taken for
    masked. Needs only the public file and the reference (no key, no data).
    """
    ref = OnnxModule(reference)

    def mutate(model: OnnxModule, _seed: int = 0) -> None:
        with torch.no_grad():
            for (wk, _), (rk, _) in zip(conv_layers(model), conv_layers(ref), strict=True):
                w, r = model.params[wk], ref.params[rk]
                cos = torch.nn.functional.cosine_similarity(w.flatten(2), r.flatten(2), dim=2)
                w[cos < threshold] = r[cos < threshold]

    return mutate


def flagged_kernels(
    matched: OnnxModule, reference: str | Path, masked: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """How :func:`restore_from_reference` finds the masked kernels: the share of kernels
    it replaces, and of those the share truly masked (``masked``: one flag per kernel,
    every conv's kernels flattened in graph order)."""
    ref = OnnxModule(reference)
    flags = []
    for (wk, _), (rk, _) in zip(conv_layers(matched), conv_layers(ref), strict=True):
        w, r = matched.params[wk].detach(), ref.params[rk].detach()
        cos = torch.nn.functional.cosine_similarity(w.flatten(2), r.flatten(2), dim=2)
        flags.append((cos < threshold).flatten().numpy())
    got = np.concatenate(flags)
    return {
        "replaced_kernels": float(got.mean()),
        "replaced_truly_masked": float(masked[got].mean()) if got.any() else float("nan"),
        "masked_found": float(got[masked].mean()) if masked.any() else float("nan"),
    }
