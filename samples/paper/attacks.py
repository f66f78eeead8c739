"""Attacks on the encrypted sample models: fine-tuning and statistical detection of kernels.

Everything starts from ONNX files written by :func:`onnx_selenc.encrypt` (the attacker's
view); PyTorch is used only where the attack itself trains.

* **Service levels** (context): VGG19 accuracy / DnCNN PSNR of the encrypted file at
  each key level, level 0 being the file as distributed.
* **Fine-tuning attack**: an attacker loads the level-0 VGG19 (masked kernels and all)
  into PyTorch and fine-tunes it on 1% / 10% of the training digits; compared with
  training the same architecture from scratch and fine-tuning the plain model on the
  same digits, with the same optimizer and number of steps for every arm.
* **Detection**: can the masked kernels be told apart from untouched ones in the file?
  (a) per-kernel statistics and neighbourhood context -> logistic regression (and a
  gradient-boosted trees detector), 5-fold cross-validated ROC AUC; the labels come
  from comparing the encrypted weights to the plain ones. A real attacker can make
  such labels by encrypting models of their own, so this is a realistic detector.
  (b) per-layer two-sample Kolmogorov-Smirnov test between the masked kernels' values
  and the untouched ones'. Done for ``masking="gaussian"`` (the paper's DPRM) and
  ``masking="empirical"``.

Command line (results go to the cache as JSON and into BENCHMARKS.md)::

    python -m samples.paper.attacks [--smoke] [--steps N] [--no-benchmarks] [--encryption JSON]

The VGG19 numbers use MNIST as a CIFAR-10 stand-in (see :data:`samples.paper.vgg19.DATA_NOTE`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from samples._cache import cache_dir
from samples._report import update_section
from samples.paper import _common, dncnn, vgg19

if TYPE_CHECKING:
    import torch

# Today's data-free default; data-driven options (importance="activation"/"pss",
# allocation="sensitivity") go through the same dict once encrypt() accepts them.
DEFAULT_ENCRYPTION: dict[str, Any] = {
    "levels": 5,
    "budget": 0.01,
    "allocation": "balanced",
    "importance": "magnitude",
    "masking": "empirical",
    "seed": 0,
}
DETECTION_MASKINGS = ("gaussian", "empirical")
BEGIN, END = "<!-- attacks:begin -->", "<!-- attacks:end -->"
BENCHMARKS = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning attack's budget (identical for every arm).

    Attributes:
        fractions: shares of the 8,000 training digits the attacker holds.
        steps: Adam steps per arm.
        batch: digits per step.
        lr: Adam learning rate (the one the model was trained with).
        seed: subset choice, initialisation of the scratch arm and shuffling.
    """

    fractions: tuple[float, ...] = (0.01, 0.10)
    steps: int = 150
    batch: int = 32
    lr: float = 1e-4
    seed: int = 0


def smoke_finetune() -> FinetuneConfig:
    """Two steps per arm, 1% of the digits only: exercises the attack code on the smoke model."""
    return FinetuneConfig(fractions=(0.01,), steps=2)


# ------------------------------------------------------------------ encryption


@contextlib.contextmanager
def encrypted_copy(plain: Path, **encryption: Any) -> Iterator[tuple[Path, Path]]:
    """Encrypt ``plain`` into a fresh temporary folder; yield (encrypted model, owner key).

    The folder (and the key in it) is removed afterwards: only measurements are kept.

    Args:
        plain: the plain ONNX model.
        **encryption: keyword arguments for :func:`onnx_selenc.encrypt`, over
            :data:`DEFAULT_ENCRYPTION`.
    """
    from onnx_selenc import encrypt

    kwargs = {**DEFAULT_ENCRYPTION, **encryption}
    with tempfile.TemporaryDirectory(prefix="selenc-attack-") as tmp:
        out, key = Path(tmp) / f"{plain.stem}.enc.onnx", Path(tmp) / "owner.key"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encrypt(plain, out, key_file=key, **kwargs)
        yield out, key


def conv_weights(path: Path) -> dict[str, np.ndarray]:
    """The conv weight tensors of an ONNX model, by initializer name, in graph order."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    return {
        node.input[1]: numpy_helper.to_array(inits[node.input[1]])
        for node in model.graph.node
        if node.op_type == "Conv" and node.input[1] in inits
    }


# --------------------------------------------------------------- service levels


def level_table(enc: Path, key: Path, levels: int, evaluate: Any) -> list[dict[str, Any]]:
    """Evaluate an encrypted model at every level (level 0: the file as distributed)."""
    from onnx_selenc import load_session

    rows = []
    for level in range(levels + 1):
        sess = (
            _common.ort_session(enc)
            if level == 0
            else load_session(enc, key=key, level=level, providers=["CPUExecutionProvider"])
        )
        rows.append({"level": level, **evaluate(sess)})
    return rows


# ------------------------------------------------------------ fine-tuning attack


def onnx_to_state_dict(path: Path, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map an ONNX file's weights onto a PyTorch module by graph order and shape.

    Conv nodes are matched with ``nn.Conv2d`` modules and Gemm/MatMul nodes with
    ``nn.Linear`` modules, in order; initializer names are not trusted (an encrypted or
    re-exported file may rename them). Gemm weights are transposed unless ``transB=1``.

    Args:
        path: the ONNX model (e.g. an encrypted file: its masked weights are read as is).
        module: the architecture to fill.

    Returns:
        A state dict for ``module.load_state_dict``.

    Raises:
        ValueError: the graph and the module do not line up.
    """
    import onnx
    import torch
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    onnx_layers: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        bias = inits.get(node.input[2]) if len(node.input) > 2 else None
        if node.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            w = w if attrs.get("transB", 0) else w.T
        elif node.op_type == "MatMul":
            w = w.T  # x @ W with W (in, out); torch stores (out, in)
        onnx_layers.append(("conv" if node.op_type == "Conv" else "linear", w, bias))
    torch_layers = [
        (name, "conv" if isinstance(m, torch.nn.Conv2d) else "linear", m)
        for name, m in module.named_modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    if len(onnx_layers) != len(torch_layers):
        raise ValueError(f"{len(onnx_layers)} weighted ONNX nodes vs {len(torch_layers)} modules")
    state: dict[str, torch.Tensor] = {}
    for (kind, w, b), (name, tkind, m) in zip(onnx_layers, torch_layers, strict=True):
        if kind != tkind or tuple(w.shape) != tuple(m.weight.shape):
            raise ValueError(
                f"{name}: ONNX {kind} {w.shape} vs torch {tkind} {tuple(m.weight.shape)}"
            )
        state[f"{name}.weight"] = torch.from_numpy(np.array(w, dtype=np.float32))
        if m.bias is not None:
            if b is None or b.shape != tuple(m.bias.shape):
                raise ValueError(f"{name}: bias missing or mis-shaped in the ONNX graph")
            state[f"{name}.bias"] = torch.from_numpy(np.array(b, dtype=np.float32))
    return state


def vgg_from_onnx(path: Path) -> torch.nn.Module:
    """A PyTorch VGG19 holding an ONNX file's weights (eval mode)."""
    model = vgg19.build_model()
    model.load_state_dict(onnx_to_state_dict(path, model))
    return model.eval()


def finetune_attack(
    plain: Path,
    encrypted: Path,
    data: vgg19.Data,
    config: FinetuneConfig,
    *,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the level-0 VGG19 on a few digits; compare with scratch and plain arms.

    Args:
        plain: the plain VGG19 ONNX file.
        encrypted: its encrypted twin (level 0, as an attacker holds it).
        data: training digits (the attacker draws its subsets here) and held-out digits.
        config: the identical budget of every arm.
        show_progress: progress bars on stderr.

    Returns:
        ``mapping_check`` (the plain file mapped into PyTorch vs ONNX Runtime) and one
        row per (fraction, arm) with the held-out accuracy before and after.
    """
    xs, ys = data.x_test, data.y_test
    plain_onnx_acc = vgg19.accuracy_onnx(plain, xs, ys)
    mapped = vgg_from_onnx(plain)
    check_x = xs[: vgg19.CHECK_DIGITS]
    diff = np.max(
        np.abs(
            _common.torch_forward(mapped, check_x)
            - _common.run_session(_common.ort_session(plain), check_x)
        )
    )
    mapped_acc = vgg19.accuracy_torch(mapped, xs, ys)
    check = {
        "plain_onnx_accuracy": plain_onnx_acc,
        "plain_mapped_torch_accuracy": mapped_acc,
        "max_abs_logit_diff": float(diff),
        "digits": len(check_x),
    }
    if abs(mapped_acc - plain_onnx_acc) > 1e-3:
        raise RuntimeError(f"ONNX -> PyTorch weight mapping is wrong: {check}")

    starts = {
        "from scratch": vgg19.build_model,
        "fine-tune plain": lambda: vgg_from_onnx(plain),
        "fine-tune encrypted (level 0)": lambda: vgg_from_onnx(encrypted),
    }
    order = np.random.default_rng(config.seed).permutation(len(data.x_train))
    rows = []
    before: dict[str, float] = {}
    for fraction in config.fractions:
        idx = np.sort(order[: round(fraction * len(data.x_train))])
        for arm, make in starts.items():
            _common.setup_torch(None, config.seed)  # same init for the scratch arm every time
            model = make()
            if arm not in before:
                before[arm] = vgg19.accuracy_torch(model, xs, ys)
            stats = vgg19.fit(
                model,
                data.x_train[idx],
                data.y_train[idx],
                steps=config.steps,
                batch=config.batch,
                lr=config.lr,
                seed=config.seed,
                desc=f"{arm} {len(idx)}",
                show_progress=show_progress,
            )
            rows.append(
                {
                    "fraction": fraction,
                    "n_digits": len(idx),
                    "arm": arm,
                    "accuracy_before": before[arm],
                    "accuracy_after": vgg19.accuracy_torch(model, xs, ys),
                    **stats,
                }
            )
    return {"mapping_check": check, "config": dataclasses.asdict(config), "rows": rows}


# ------------------------------------------------------------------- detection


def kernel_features(weight: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per-kernel statistics an attacker can compute from the encrypted file alone.

    Each feature is z-scored within the layer, so layers of different scale pool into one
    detector. Context features compare a kernel with the other kernels of its output
    filter and of its input channel: DPRM draws each position independently, which may
    break the structure real kernels share with their neighbours.

    Args:
        weight: a conv weight ``(out, in, kh, kw)``.

    Returns:
        ``(features [out*in, F], names)``.
    """
    o, i, kh, kw = weight.shape
    w = weight.astype(np.float64)
    k = w.reshape(o * i, kh * kw)
    mean = k.mean(axis=1, keepdims=True)
    c = k - mean
    var = (c**2).mean(axis=1)
    std = np.sqrt(var)
    safe = np.where(var > 0, var, 1.0)
    grid = c.reshape(-1, kh, kw)
    # Lag-1 spatial autocorrelation: real kernels are smooth, independent draws are not.
    pairs = (grid[:, :, 1:] * grid[:, :, :-1]).sum(axis=(1, 2)) + (
        grid[:, 1:, :] * grid[:, :-1, :]
    ).sum(axis=(1, 2))
    n_pairs = kh * (kw - 1) + kw * (kh - 1)
    autocorr = (pairs / max(n_pairs, 1)) / safe
    center = np.abs(grid[:, kh // 2, kw // 2]) / (np.abs(c).mean(axis=1) + 1e-12)

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(axis=-1) / (
            np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12
        )

    k4 = w.reshape(o, i, kh * kw)
    # Mean of the *other* kernels in the same output filter / the same input channel.
    filt = (k4.sum(axis=1, keepdims=True) - k4) / max(i - 1, 1)
    chan = (k4.sum(axis=0, keepdims=True) - k4) / max(o - 1, 1)
    feats = {
        "mean": mean[:, 0],
        "std": std,
        "abs_mean": np.abs(k).mean(axis=1),
        "max_abs": np.abs(k).max(axis=1),
        "skew": (c**3).mean(axis=1) / safe**1.5,
        "kurtosis": (c**4).mean(axis=1) / safe**2 - 3.0,
        "spatial_autocorr": autocorr,
        "center_ratio": center,
        "cos_filter_mates": cosine(k4, filt).ravel(),
        "cos_channel_mates": cosine(k4, chan).ravel(),
    }
    x = np.stack(list(feats.values()), axis=1)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-12)
    return x, list(feats)


STAT_FEATURES = (
    "mean",
    "std",
    "abs_mean",
    "max_abs",
    "skew",
    "kurtosis",
    "spatial_autocorr",
    "center_ratio",
)


def detection(
    plain: Path, encrypted: Path, *, max_negatives: int = 200_000, seed: int = 0
) -> dict[str, Any]:
    """Try to tell masked kernels from untouched ones in the encrypted file.

    Args:
        plain: the plain model (ground truth only).
        encrypted: the encrypted model (the detector's input).
        max_negatives: untouched kernels kept for the classifiers (uniform sample; ROC
            AUC does not depend on the class ratio).
        seed: cross-validation split and negative sampling.

    Returns:
        ROC AUCs of the detectors and the per-layer Kolmogorov-Smirnov tests.
    """
    from scipy.stats import ks_2samp
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    plain_w, enc_w = conv_weights(plain), conv_weights(encrypted)
    xs, ys, layer_ids, ks_rows = [], [], [], []
    names: list[str] = []
    for li, (name, w_enc) in enumerate(enc_w.items()):
        kh_kw = int(np.prod(w_enc.shape[2:]))
        k_enc = w_enc.reshape(-1, kh_kw)
        label = np.any(k_enc != plain_w[name].reshape(-1, kh_kw), axis=1)
        if not label.any() or kh_kw < 4:
            continue
        feats, names = kernel_features(w_enc)
        xs.append(feats)
        ys.append(label)
        layer_ids.append(np.full(len(label), li))
        row: dict[str, Any] = {"layer": name, "kernels": len(label), "encrypted": int(label.sum())}
        if (~label).any():
            ks = ks_2samp(k_enc[label].ravel(), k_enc[~label].ravel())
            row |= {"ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue)}
        else:
            row |= {"ks_statistic": None, "ks_pvalue": None}  # no untouched kernel left
        ks_rows.append(row)
    x, y, lid = np.concatenate(xs), np.concatenate(ys), np.concatenate(layer_ids)
    rng = np.random.default_rng(seed)
    neg = np.flatnonzero(~y)
    if len(neg) > max_negatives:
        keep = np.sort(
            np.concatenate([np.flatnonzero(y), rng.choice(neg, max_negatives, replace=False)])
        )
        x, y, lid = x[keep], y[keep], lid[keep]

    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    stat_cols = [names.index(f) for f in STAT_FEATURES]
    detectors = {
        "logreg_stats": (
            make_pipeline(
                StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced")
            ),
            stat_cols,
        ),
        "logreg_stats_context": (
            make_pipeline(
                StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced")
            ),
            list(range(len(names))),
        ),
        "gbt_stats_context": (
            HistGradientBoostingClassifier(max_iter=200, random_state=seed),
            list(range(len(names))),
        ),
    }
    results: dict[str, Any] = {}
    for label_name, (clf, cols) in detectors.items():
        score = cross_val_predict(clf, x[:, cols], y, cv=cv, method="predict_proba")[:, 1]
        per_layer = [
            roc_auc_score(y[lid == li], score[lid == li])
            for li in np.unique(lid)
            if 0 < y[lid == li].mean() < 1
        ]
        top = np.argsort(-score)[: int(y.sum())]
        results[label_name] = {
            "roc_auc": float(roc_auc_score(y, score)),
            "mean_per_layer_auc": float(np.mean(per_layer)) if per_layer else None,
            "r_precision": float(y[top].mean()),  # precision among the top-|positives|
        }
    # Which single statistic separates best (direction-free AUC), for the write-up.
    single = {
        n: float(max(a, 1 - a))
        for n, a in ((n, roc_auc_score(y, x[:, j])) for j, n in enumerate(names))
    }
    tested = [r for r in ks_rows if r["ks_pvalue"] is not None]
    pvals = np.array([r["ks_pvalue"] for r in tested])
    return {
        "kernels_used": len(y),
        "positives": int(y.sum()),
        "base_rate": float(y.mean()),
        "detectors": results,
        "single_feature_auc": single,
        "ks": {
            "layers": ks_rows,
            "layers_tested": len(tested),
            "layers_p_below_0.01": int(np.sum(pvals < 0.01)),
            "layers_p_below_0.01_bonferroni": int(np.sum(pvals < 0.01 / max(len(tested), 1))),
            "median_pvalue": float(np.median(pvals)) if len(pvals) else None,
            "min_pvalue": float(np.min(pvals)) if len(pvals) else None,
            "max_statistic": float(max(r["ks_statistic"] for r in tested)) if tested else None,
        },
    }


# ------------------------------------------------------------ value fingerprints

VALUE_VARIANTS = ("bf16", "fp16", "pruned")
FINGERPRINTS = ("zeros", "bf16", "fp16", "mantissa_bits", "copies", "tiny")


def to_bf16(weight: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even), kept as float32."""
    bits = np.ascontiguousarray(weight, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def to_fp16(weight: np.ndarray) -> np.ndarray:
    """Round float32 values to float16, kept as float32 (an fp16-valued float32 tensor)."""
    return np.asarray(weight, dtype=np.float32).astype(np.float16).astype(np.float32)


def prune_half(weight: np.ndarray) -> np.ndarray:
    """Unstructured magnitude pruning: the smallest half of the tensor's weights set to 0."""
    flat = np.asarray(weight, dtype=np.float32).ravel().copy()
    flat[np.argsort(np.abs(flat), kind="stable")[: flat.size // 2]] = 0.0
    return flat.reshape(np.shape(weight))


def value_variant(plain: Path, kind: str, out: Path) -> Path:
    """Write ``plain`` with every conv weight initializer turned into the ``kind`` variant.

    Args:
        plain: the plain ONNX model (float32 conv weights in initializers).
        kind: ``"bf16"`` (bf16-rounded), ``"fp16"`` (fp16-valued) or ``"pruned"`` (50%).
        out: where the variant goes.

    Returns:
        ``out``.
    """
    import onnx
    from onnx import numpy_helper

    transform = {"bf16": to_bf16, "fp16": to_fp16, "pruned": prune_half}[kind]
    model = onnx.load(str(plain))
    conv_inputs = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    for i, t in enumerate(model.graph.initializer):
        if t.name in conv_inputs and t.data_type == onnx.TensorProto.FLOAT:
            array = transform(numpy_helper.to_array(t))
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, t.name))
    onnx.save(model, str(out))
    return out


def value_fingerprints(kernels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-kernel counts an attacker reads off one layer's stored values, bit by bit.

    Args:
        kernels: ``(n_kernels, kernel_size)`` float32 values of one layer.

    Returns:
        Integer features per kernel: ``zeros`` (exact zeros), ``bf16`` / ``fp16``
        (values representable in that format), ``mantissa_bits`` (the most significant
        mantissa bits any nonzero value uses), ``copies`` (nonzero values equal to another
        kernel's value at the same position) and ``tiny`` (nonzero values below the 1%
        quantile of the layer's nonzero magnitudes: a pruned layer's gap).
    """
    k = np.ascontiguousarray(kernels, dtype=np.float32)
    bits = k.view(np.uint32)
    nonzero = k != 0
    mantissa = bits & np.uint32(0x7FFFFF)
    lowest = mantissa & (~mantissa + np.uint32(1))  # lowest set bit
    trailing = np.where(mantissa == 0, 23, np.log2(np.maximum(lowest, 1)).astype(np.int64))
    with np.errstate(over="ignore"):
        fp16 = k.astype(np.float16).astype(np.float32) == k
    magnitudes = np.abs(k[nonzero])
    gap = np.quantile(magnitudes, 0.01) if magnitudes.size else 0.0
    return {
        "zeros": (~nonzero).sum(axis=1),
        "bf16": ((bits & np.uint32(0xFFFF)) == 0).sum(axis=1),
        "fp16": fp16.sum(axis=1),
        "mantissa_bits": np.where(nonzero, 23 - trailing, 0).max(axis=1),
        "copies": _copies(k).sum(axis=1),
        "tiny": (nonzero & (np.abs(k) < gap)).sum(axis=1),
    }


def _copies(kernels: np.ndarray) -> np.ndarray:
    """Which nonzero values occur in another kernel at the same position (one sort per
    position: equal values end up side by side)."""
    order = np.argsort(kernels, axis=0, kind="stable")
    ranked = np.take_along_axis(kernels, order, axis=0)
    same = ranked[1:] == ranked[:-1]
    dup = np.zeros(kernels.shape, dtype=bool)
    dup[1:] |= same
    dup[:-1] |= same
    out = np.empty_like(dup)
    np.put_along_axis(out, order, dup, axis=0)
    return out & (kernels != 0)


def fingerprint_detection(plain: Path, encrypted: Path, *, seed: int = 0) -> dict[str, Any]:
    """Try to find the masked kernels from their stored values' bits alone.

    Each detector groups kernels by a key (one :func:`value_fingerprints` feature, or all
    of them jointly, with the kernel size), learns on a random half of the kernels which
    keys hold the most masked kernels relative to their layers' masked shares, flags the
    other half's kernels with those keys (as many as the learning half had masked ones)
    and reports their precision. The layers' masked shares are public (section 4 of the
    review), so the chance level is ``base_rate``: the mean masked share of the flagged
    kernels' layers. ``z`` is the excess in binomial standard errors.

    Args:
        plain: the plain model (ground truth only).
        encrypted: the encrypted model (the detector's input).
        seed: the learning / testing split.

    Returns:
        ``kernels``, ``masked``, ``base_rate`` (all kernels) and one row per detector.
    """
    plain_w, enc_w = conv_weights(plain), conv_weights(encrypted)
    feats: dict[str, list[np.ndarray]] = {f: [] for f in ("width", *FINGERPRINTS)}
    labels, shares = [], []
    for name, w_enc in enc_w.items():
        k_enc = w_enc.reshape(w_enc.shape[0] * w_enc.shape[1], -1)
        label = np.any(k_enc != plain_w[name].reshape(k_enc.shape), axis=1)
        for f, values in value_fingerprints(k_enc).items():
            feats[f].append(values)
        feats["width"].append(np.full(len(label), k_enc.shape[1]))
        labels.append(label)
        shares.append(np.full(len(label), label.mean()))
    y, share = np.concatenate(labels), np.concatenate(shares)
    table = {f: np.concatenate(v) for f, v in feats.items()}
    learn = np.random.default_rng(seed).random(len(y)) < 0.5
    keys = {f: np.stack([table["width"], table[f]], axis=1) for f in FINGERPRINTS}
    keys["joint"] = np.stack([table[f] for f in ("width", *FINGERPRINTS)], axis=1)
    return {
        "kernels": len(y),
        "masked": int(y.sum()),
        "base_rate": float(y.mean()),
        "detectors": {n: _key_detector(k, y, share, learn) for n, k in keys.items()},
    }


def _key_detector(
    key: np.ndarray, y: np.ndarray, share: np.ndarray, learn: np.ndarray
) -> dict[str, Any]:
    """Flag the test half's kernels whose key had the highest masked-to-expected ratio on
    the learning half; their precision against the chance level (see above)."""
    # One integer per key (7 bits per column: counts and kernel sizes stay below 128).
    packed = (np.minimum(key, 127).astype(np.int64) << (7 * np.arange(key.shape[1]))).sum(axis=1)
    _, group = np.unique(packed, return_inverse=True)
    group = group.ravel()
    n_groups = int(group.max()) + 1
    seen = np.bincount(group[learn], minlength=n_groups)
    hits = np.bincount(group[learn], weights=y[learn], minlength=n_groups)
    expected = np.bincount(group[learn], weights=share[learn], minlength=n_groups)
    order = np.argsort(-(hits + 1.0) / (expected + 1.0), kind="stable")  # smoothed lift
    want = max(int(y[learn].sum()), 50)
    taken = order[: int(np.searchsorted(np.cumsum(seen[order]), want)) + 1]
    flagged = np.isin(group, taken) & ~learn
    n = int(flagged.sum())
    if not n:
        return {"flagged": 0, "masked": 0, "precision": None, "base_rate": None, "z": None}
    precision, base = float(y[flagged].mean()), float(share[flagged].mean())
    se = float(np.sqrt(np.sum(share[flagged] * (1 - share[flagged])))) / n
    return {
        "flagged": n,
        "masked": int(y[flagged].sum()),
        "precision": precision,
        "base_rate": base,
        "z": (precision - base) / se if se > 0 else (0.0 if precision == base else np.inf),
    }


# ---------------------------------------------------------------------- report


def run(
    *,
    encryption: Mapping[str, Any] | None = None,
    finetune: FinetuneConfig | None = None,
    smoke: bool = False,
    max_negatives: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run every attack on the (cached) sample models.

    Args:
        encryption: :func:`onnx_selenc.encrypt` keyword arguments over
            :data:`DEFAULT_ENCRYPTION` (the detection overrides ``masking`` itself).
        finetune: the fine-tuning budget; default :class:`FinetuneConfig`.
        smoke: use the smoke models, a small ``finetune`` and fewer detector kernels.
        max_negatives: untouched kernels per detector (see :func:`detection`); default
            200,000, or 5,000 with ``smoke``.
        show_progress: progress bars on stderr.

    Returns:
        All results (also written as JSON to the cache by :func:`main`).
    """
    enc_kwargs = {**DEFAULT_ENCRYPTION, **(encryption or {})}
    finetune = finetune or (smoke_finetune() if smoke else FinetuneConfig())
    max_negatives = max_negatives or (5_000 if smoke else 200_000)
    start = time.perf_counter()
    vgg = vgg19.get_model(smoke=smoke, show_progress=show_progress)
    dn = {s: dncnn.get_model(s, smoke=smoke, show_progress=show_progress) for s in dncnn.SIGMAS}
    data = vgg19.load_data()
    if smoke:
        data = dataclasses.replace(
            data,
            x_test=data.x_test[: vgg19.SMOKE_EVAL_DIGITS],
            y_test=data.y_test[: vgg19.SMOKE_EVAL_DIGITS],
        )
    out: dict[str, Any] = {
        "encryption": enc_kwargs,
        "smoke": smoke,
        "max_negatives": max_negatives,
        "vgg19": {
            "onnx": str(vgg.onnx),
            "config_hash": vgg.meta["config_hash"],
            "n_heldout": len(data.x_test),
            "data_note": vgg19.DATA_NOTE,
        },
        "dncnn": {
            s: {"onnx": str(a.onnx), "config_hash": a.meta["config_hash"]} for s, a in dn.items()
        },
        "machine": machine(),
        "versions": _common.versions(),
    }
    levels = int(enc_kwargs["levels"])

    with encrypted_copy(vgg.onnx, **enc_kwargs) as (enc, key):
        out["vgg19"]["encrypted_fraction"] = _encrypted_fraction(vgg.onnx, enc)
        out["vgg19"]["levels"] = level_table(
            enc,
            key,
            levels,
            lambda s: {"accuracy": vgg19.accuracy_onnx(s, data.x_test, data.y_test)},
        )
        out["finetune"] = finetune_attack(
            vgg.onnx, enc, data, finetune, show_progress=show_progress
        )
    for sigma, art in dn.items():
        with encrypted_copy(art.onnx, **enc_kwargs) as (enc, key):
            out["dncnn"][sigma]["encrypted_fraction"] = _encrypted_fraction(art.onnx, enc)
            out["dncnn"][sigma]["levels"] = level_table(
                enc, key, levels, lambda s, sg=sigma: dncnn.evaluate(s, sg)
            )

    out["detection"] = []
    for masking in DETECTION_MASKINGS:
        for name, plain in (("VGG19", vgg.onnx), ("DnCNN sigma=25", dn[25].onnx)):
            with encrypted_copy(plain, **{**enc_kwargs, "masking": masking}) as (enc, _key):
                out["detection"].append(
                    {
                        "model": name,
                        "masking": masking,
                        **detection(plain, enc, max_negatives=max_negatives),
                    }
                )
    out["fingerprints"] = value_attacks(
        {"VGG19": vgg.onnx, "DnCNN sigma=25": dn[25].onnx},
        enc_kwargs,
        statistical={"DnCNN sigma=25"},
        max_negatives=max_negatives,
    )
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def value_attacks(
    models: Mapping[str, Path],
    encryption: Mapping[str, Any],
    *,
    statistical: set[str],
    max_negatives: int,
) -> list[dict[str, Any]]:
    """The bit-level detectors on each model as trained (float32) and on its bf16,
    fp16 and 50%-pruned variants; the statistical ones too on the ``statistical`` models'
    variants (their float32 rows are the detection table's)."""
    rows = []
    for name, plain in models.items():
        with tempfile.TemporaryDirectory(prefix="selenc-variants-") as tmp:
            for variant in ("float32", *VALUE_VARIANTS):
                source = (
                    plain
                    if variant == "float32"
                    else value_variant(plain, variant, Path(tmp) / f"{variant}.onnx")
                )
                with encrypted_copy(source, **encryption) as (enc, _key):
                    row = {"model": name, "variant": variant, **fingerprint_detection(source, enc)}
                    if variant != "float32" and name in statistical:
                        row["statistical"] = detection(source, enc, max_negatives=max_negatives)
                rows.append(row)
    return rows


def _encrypted_fraction(plain: Path, enc: Path) -> dict[str, Any]:
    pw, ew = conv_weights(plain), conv_weights(enc)
    changed = sum(
        int(np.any(ew[n] != pw[n], axis=(2, 3)).sum()) * int(np.prod(pw[n].shape[2:])) for n in pw
    )
    total = sum(w.size for w in pw.values())
    layers = sum(bool(np.any(ew[n] != pw[n])) for n in pw)
    return {
        "weights": changed,
        "of": total,
        "fraction": changed / total,
        "layers": layers,
        "conv_layers": len(pw),
    }


def machine() -> str:
    """A short description of the CPU the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()}-core CPU ({cpu}), shared, no GPU"


def markdown(res: Mapping[str, Any]) -> str:
    """The BENCHMARKS.md section for a result of :func:`run`."""
    enc = res["encryption"]
    ft = res["finetune"]
    cfg = ft["config"]
    vf = res["vgg19"]["encrypted_fraction"]
    lines = [
        "## Attacks on the encrypted paper samples (VGG19, DnCNN)",
        "",
        "Regenerate with `python -m samples.paper.attacks` (trains or loads the sample models "
        f"first). Measured on a {res['machine']}; torch {res['versions']['torch']}, "
        f"onnxruntime {res['versions']['onnxruntime']}; attack run {res['seconds'] / 60:.1f} min.",
        "",
        f"**Data caveat:** {vgg19.DATA_NOTE}. VGG19 accuracies are on "
        f"{res['vgg19']['n_heldout']} held-out digits. DnCNN PSNR/SSIM are on centre "
        f"{dncnn.TEST_CROP}x{dncnn.TEST_CROP} crops of {', '.join(dncnn.TEST_IMAGES)} "
        "(never trained on).",
        "",
        "Encryption: `encrypt(..., "
        + ", ".join(f"{k}={v!r}" for k, v in enc.items())
        + f")` -> VGG19: {vf['fraction']:.2%} of conv weights in {vf['layers']}/"
        f"{vf['conv_layers']} conv layers.",
        "",
        "### Service levels (context)",
        "",
        "| level | VGG19 accuracy | "
        + " | ".join(f"DnCNN σ={s} PSNR / SSIM" for s in res["dncnn"])
        + " |",
        "|---|---|" + "---|" * len(res["dncnn"]),
    ]
    for i, row in enumerate(res["vgg19"]["levels"]):
        cells = [f"{row['accuracy']:.2%}"] + [
            f"{d['levels'][i]['psnr']:.2f} dB / {d['levels'][i]['ssim']:.3f}"
            for d in res["dncnn"].values()
        ]
        lines.append(f"| {row['level']} | " + " | ".join(cells) + " |")
    noisy = " / ".join(
        f"σ={s}: {d['levels'][0]['noisy_psnr']:.2f} dB" for s, d in res["dncnn"].items()
    )
    lines += [
        "",
        f"Level 0 is the encrypted file as distributed; level {enc['levels']} restores the "
        f"original. Noisy input PSNR for reference: {noisy}.",
        "",
        "### Fine-tuning attack (VGG19, attacker holds the level-0 file)",
        "",
        f"Every arm: Adam lr {cfg['lr']}, batch {cfg['batch']}, {cfg['steps']} steps on the same "
        "digits; accuracy on the held-out digits. The ONNX -> PyTorch mapping reproduces the "
        f"plain model ({ft['mapping_check']['plain_mapped_torch_accuracy']:.2%} vs "
        f"{ft['mapping_check']['plain_onnx_accuracy']:.2%} in ONNX Runtime, max |logit diff| "
        f"{ft['mapping_check']['max_abs_logit_diff']:.1e}).",
        "",
        "| attacker data | arm | accuracy before | accuracy after | train time |",
        "|---|---|---|---|---|",
    ]
    for r in ft["rows"]:
        lines.append(
            f"| {r['fraction']:.0%} ({r['n_digits']} digits) | {r['arm']} | "
            f"{r['accuracy_before']:.2%} | {r['accuracy_after']:.2%} | "
            f"{r['train_seconds']:.0f} s |"
        )
    lines += [
        "",
        "### Detection of the masked kernels",
        "",
        "5-fold cross-validated ROC AUC over the kernels of the encrypted layers (0.5 = chance); "
        "R-prec. = share of masked kernels among the top-scored |masked| kernels. Stats: mean, "
        "std, abs-mean, max-abs, skew, kurtosis, spatial autocorrelation, centre ratio; context: "
        "cosine to the other kernels of the same filter / input channel. KS: per-layer "
        "two-sample Kolmogorov-Smirnov test, masked vs untouched values.",
        "",
        "| model | masking | masked / kernels used | LogReg stats AUC | LogReg +context AUC "
        "(per-layer) | GBT +context AUC (R-prec.) | best single feature | KS layers p<0.01 "
        "(Bonferroni) / tested | KS median p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in res["detection"]:
        det = d["detectors"]
        best = max(d["single_feature_auc"].items(), key=lambda kv: kv[1])
        ks = d["ks"]
        per_layer = det["logreg_stats_context"]["mean_per_layer_auc"]
        med = ks["median_pvalue"]
        lines.append(
            f"| {d['model']} | {d['masking']} | {d['positives']} / {d['kernels_used']} | "
            f"{det['logreg_stats']['roc_auc']:.3f} | "
            f"{det['logreg_stats_context']['roc_auc']:.3f} ("
            + (f"{per_layer:.3f}" if per_layer is not None else "n/a")
            + f") | {det['gbt_stats_context']['roc_auc']:.3f} "
            f"({det['gbt_stats_context']['r_precision']:.2f}) | {best[0]} {best[1]:.3f} | "
            f"{ks['layers_p_below_0.01']} ({ks['layers_p_below_0.01_bonferroni']}) / "
            f"{ks['layers_tested']} | " + (f"{med:.2g}" if med is not None else "n/a") + " |"
        )
    lines += [
        "",
        f"Untouched kernels are subsampled to at most {res['max_negatives']:,} for the "
        "classifiers (ROC AUC does not depend on the class ratio). The "
        "labels come from the plain file; an attacker can get the same kind of labels by "
        "encrypting models of their own, so a cross-validated detector is a realistic threat.",
        "",
    ]
    if res.get("fingerprints"):
        lines += fingerprint_markdown(res["fingerprints"], enc["masking"])
    return "\n".join(lines)


_FINGERPRINT_TITLES = {
    "zeros": "zeros",
    "bf16": "bf16",
    "fp16": "fp16",
    "mantissa_bits": "mantissa bits",
    "copies": "exact copies",
    "tiny": "gap",
    "joint": "all jointly",
}


def fingerprint_markdown(rows: Sequence[Mapping[str, Any]], masking: str) -> list[str]:
    """The BENCHMARKS.md lines of the bit-level detectors (and the statistical ones on the
    value variants)."""
    lines = [
        "### Value fingerprints of the masked kernels",
        "",
        "Can the masked kernels be found from how their values are stored? Each model as "
        "trained (float32) and as bf16-rounded, fp16-valued (float32 tensors holding fp16 "
        "values) and 50%-pruned (the smallest half of each layer's weights set to 0) copies, "
        f"encrypted as above (`masking={masking!r}`). Per-kernel features: exact zeros, values "
        "representable in bf16 / fp16, mantissa bits used, nonzero values equal to another "
        "kernel's at the same position (exact copies), nonzero values below the layer's 1% "
        "magnitude quantile (a pruning gap); each detector (one feature with the kernel size, "
        "or all jointly) learns on a random half of the kernels which feature values hold "
        "the most masked kernels and flags those on the other half "
        "(`samples.paper.attacks.fingerprint_detection`). Cell: precision / chance (z), where "
        "chance is the masked share of the flagged kernels' layers and z the excess in "
        "binomial standard errors; the test-suite's bar "
        "(`tests/_select/test_mask_fingerprint.py`, on YOLOv8n) is z <= 4.",
        "",
        "| model | values | masked / kernels | " + " | ".join(_FINGERPRINT_TITLES.values()) + " |",
        "|---|---|---|" + "---|" * len(_FINGERPRINT_TITLES),
    ]
    for r in rows:
        cells = []
        for key in _FINGERPRINT_TITLES:
            d = r["detectors"][key]
            cells.append(
                "none flagged"
                if not d["flagged"]
                else f"{d['precision']:.3f} / {d['base_rate']:.3f} ({d['z']:+.1f})"
            )
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['masked']} / {r['kernels']} | "
            + " | ".join(cells)
            + " |"
        )
    stats = [r for r in rows if r.get("statistical")]
    if stats:
        lines += [
            "",
            "The statistical detectors of the table above on the value variants:",
            "",
            "| model | values | LogReg stats AUC | LogReg +context AUC | GBT +context AUC "
            "(R-prec.) | KS layers p<0.01 (Bonferroni) / tested |",
            "|---|---|---|---|---|---|",
        ]
        for r in stats:
            det, ks = r["statistical"]["detectors"], r["statistical"]["ks"]
            lines.append(
                f"| {r['model']} | {r['variant']} | {det['logreg_stats']['roc_auc']:.3f} | "
                f"{det['logreg_stats_context']['roc_auc']:.3f} | "
                f"{det['gbt_stats_context']['roc_auc']:.3f} "
                f"({det['gbt_stats_context']['r_precision']:.2f}) | "
                f"{ks['layers_p_below_0.01']} ({ks['layers_p_below_0.01_bonferroni']}) / "
                f"{ks['layers_tested']} |"
            )
    return [*lines, ""]


def write_benchmarks(section: str, path: Path = BENCHMARKS) -> None:
    """Replace this module's marker section of BENCHMARKS.md (create the file if needed)."""
    update_section(path, "attacks", section)


def results_path(res: Mapping[str, Any]) -> Path:
    """Where :func:`main` stores a result: keyed by the models and the attack settings."""
    key = _common.config_hash(
        {
            "encryption": res["encryption"],
            "finetune": res["finetune"]["config"],
            "max_negatives": res["max_negatives"],
            "vgg19": res["vgg19"]["config_hash"],
            "dncnn": {str(s): d["config_hash"] for s, d in res["dncnn"].items()},
        }
    )
    parts = ("samples", "smoke", "attacks") if res["smoke"] else ("samples", "attacks")
    return cache_dir(*parts) / f"attacks-{key}.json"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the attacks, print the tables, store JSON and update BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="smoke models, 2 steps per arm; BENCHMARKS.md is not touched",
    )
    parser.add_argument("--steps", type=int, help="fine-tuning steps per arm")
    parser.add_argument("--no-benchmarks", action="store_true", help="do not edit BENCHMARKS.md")
    parser.add_argument(
        "--encryption",
        type=json.loads,
        default={},
        metavar="JSON",
        help="encrypt() kwargs over the defaults, e.g. "
        '\'{"budget": 0.02, "allocation": "uniform"}\'',
    )
    args = parser.parse_args(argv)
    finetune = smoke_finetune() if args.smoke else FinetuneConfig()
    if args.steps:
        finetune = dataclasses.replace(finetune, steps=args.steps)
    res = _jsonable(run(encryption=args.encryption, finetune=finetune, smoke=args.smoke))
    path = results_path(res)
    _common.write_json(path, res)
    section = markdown(res)
    print(section)
    print(f"results: {path}")
    if not (args.smoke or args.no_benchmarks):
        write_benchmarks(section)
        print(f"updated {BENCHMARKS} between {BEGIN} and {END}")
    return 0


def _jsonable(obj: Any) -> Any:
    """Plain JSON data: string keys (sigmas are ints), lists, and ``repr`` for anything else
    (e.g. calibration arrays passed to a data-driven ``encrypt`` option)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return repr(obj)


if __name__ == "__main__":
    sys.exit(main())
