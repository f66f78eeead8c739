"""The BENCHMARKS.md section of the paper samples' attacks (:mod:`samples.paper.attacks`)."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from samples.paper import dncnn, vgg19


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
