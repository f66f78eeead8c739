"""Value fingerprints of the masked kernels on bf16, fp16 and pruned copies
(:mod:`samples.paper.attacks`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from samples.paper.attack_files import conv_weights

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
