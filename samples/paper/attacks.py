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
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from samples._cache import cache_dir
from samples._report import update_section
from samples.paper import _common, dncnn, vgg19
from samples.paper.attack_detection import detection
from samples.paper.attack_files import DEFAULT_ENCRYPTION, conv_weights, encrypted_copy, level_table
from samples.paper.attack_finetune import FinetuneConfig, finetune_attack, smoke_finetune
from samples.paper.attack_fingerprints import VALUE_VARIANTS, fingerprint_detection, value_variant
from samples.paper.attack_report import machine, markdown

DETECTION_MASKINGS = ("gaussian", "empirical")
BEGIN, END = "<!-- attacks:begin -->", "<!-- attacks:end -->"
BENCHMARKS = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"


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
