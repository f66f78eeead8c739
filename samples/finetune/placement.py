"""Where the masks go (issue 15, hypothesis 2): public files with other mask shapes.

``onnx_selenc.encrypt`` masks scattered kernels; the other placements are not modes of
the tool, so these files are made here, directly on the weights, with the tool's
``masking="empirical"`` idea: a masked value is drawn (with replacement) from the same
layer's own weights, so every layer keeps its value distribution and scale. Only the
public file is made (no keys): the fine-tuning attack needs nothing else.

Placements:

* ``filters``: whole output filters, the largest-norm ones, the same share of every
  conv layer (like the tool's balanced allocation, at filter granularity).
* ``early``: every weight of the first ``k`` convs.
* ``first-last``: every weight of the first and of the last conv of each stage (the
  convs between two poolings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def _conv_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    inits = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits]


def stage_ends(model: onnx.ModelProto) -> list[int]:
    """Indices (among the convs) of each stage's first and last conv."""
    chosen: list[int] = []
    stage: list[int] = []
    i = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            stage.append(i)
            i += 1
        elif node.op_type in ("MaxPool", "AveragePool") and stage:
            chosen += sorted({stage[0], stage[-1]})
            stage = []
    if stage:
        chosen += sorted({stage[0], stage[-1]})
    return chosen


def masked_file(plain: Path, out: Path, placement: str, amount: float, seed: int = 0) -> Path:
    """Write a public file with the given placement; see the module notes.

    Args:
        plain: the plain ONNX model.
        out: where the public file goes (left as is if it exists).
        placement: ``filters``, ``early`` or ``first-last``.
        amount: the share of each layer's filters (``filters``) or the number of
            leading convs (``early``); ignored for ``first-last``.
        seed: draws the replacement values.

    Returns:
        ``out``.
    """
    if out.exists():
        return out
    model = onnx.load(str(plain))
    inits = {t.name: t for t in model.graph.initializer}
    convs = _conv_nodes(model)
    rng = np.random.default_rng(seed)
    if placement == "early":
        whole = set(range(int(amount)))
    elif placement == "first-last":
        whole = set(stage_ends(model))
    elif placement == "filters":
        whole = set()
    else:
        raise ValueError(f"unknown placement {placement!r}")
    for i, node in enumerate(convs):
        w = numpy_helper.to_array(inits[node.input[1]]).copy()
        if placement == "filters":
            norms = np.linalg.norm(w.reshape(len(w), -1), axis=1)
            # At least one filter per layer, like the tool's floor(n*r)+1 kernels.
            k = min(len(w), int(len(w) * amount) + 1)
            rows = np.argsort(-norms, kind="stable")[:k]
        elif i in whole:
            rows = np.arange(len(w))
        else:
            continue
        pool = w.ravel().copy()
        w[rows] = rng.choice(pool, size=w[rows].shape)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(w, node.input[1]))
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out)
    return out
