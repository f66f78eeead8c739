"""Statistical detection of the masked kernels: per-kernel features, cross-validated
detectors and per-layer KS tests (:mod:`samples.paper.attacks`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from samples.paper.attack_files import conv_weights

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
