"""Issue 23: recoveries of keyed wiring with no reference the weights descend from.

On the study's VGG19 (width/8) wired file and on wiring over today's 1% masks, the
attacker holding only their labelled digits tries learned permutations
(:func:`samples.finetune.learned.sinkhorn`) and Git Re-Basin weight matching to a model
they train from scratch on the same digits (:func:`samples.finetune.learned.weight_match`),
then fine-tunes (same attacker and settings as the study's wiring part). Each recovery
is computed once per data size on the first seed's attacker digits, cached with its
permutations, then its arm is trained.

Command line::

    nice -n 19 python -m samples.finetune.generic --data 0.01
    nice -n 19 python -m samples.finetune.generic --data 0.01 --no-finetune
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samples.finetune import descent, harness, learned, study, wiring
from samples.paper import _common, vgg19

RECOVERIES = ("sinkhorn", "rebasin")


def _attacker_reference(
    plain: Path, data: vgg19.Data, n: int, cfg: harness.AttackConfig, scratch_lr: float
) -> torch.nn.Module:
    """The attacker's own model: scratch on their first-seed digits, early-stopped."""
    tr, va = harness.split(len(data.x_train), n, cfg, cfg.seeds[0])
    torch.manual_seed(cfg.seeds[0])
    model = harness.scratch(plain)(cfg.seeds[0])
    x, y = data.x_train, data.y_train
    harness.train(model, x[tr], y[tr], x[va], y[va], lr=scratch_lr, cfg=cfg, seed=cfg.seeds[0])
    return model


def recoveries(data_fraction: float) -> dict[str, Any]:
    """Every recovery on both wired files at one data size (cached in the results folder)."""
    path = study.arms_dir("vgg") / f"generic-recoveries-d{data_fraction:g}.json"
    got = _common.read_json(path) or {}
    data = vgg19.load_data()
    xte, yte = study.test_set(data)
    plain, _ = study.plain_model(data)
    work = plain.parent
    cfg = harness.AttackConfig()
    n = round(data_fraction * len(data.x_train))
    idx = np.concatenate(harness.split(len(data.x_train), n, cfg, cfg.seeds[0]))
    xa, ya = data.x_train[idx], data.y_train[idx]
    files = {
        "wired": wiring.wired_file(plain, work, seed=0),
        "combined-0.01": wiring.wired_file(
            study.public_file(plain, 0.01), work, seed=0, name="combined-0.01.onnx"
        ),
    }
    reference = None
    for base, (wired, perms) in files.items():
        for how in RECOVERIES:
            key = f"{base}-{how}"
            if key in got:
                continue
            print(f"  recovery {key}", flush=True)
            start = time.perf_counter()
            if how == "sinkhorn":
                est, history = learned.sinkhorn(wired, xa, ya, log=print)
                extra: dict[str, Any] = {"loss_history": history}
            else:
                if reference is None:
                    scratch = _common.read_json(descent.arm_path("scratch", data_fraction, cfg))
                    lr = scratch["runs"][0]["lr"] if scratch else cfg.lrs[-1]
                    reference = _attacker_reference(plain, data, n, cfg, lr)
                    ref_acc = harness.accuracy(reference, xte, yte)
                est = learned.weight_match(wired, reference)  # type: ignore[arg-type]
                extra = {"reference_accuracy": ref_acc}
            model = harness.from_onnx(wired, wiring.apply(est))(0)
            got[key] = {
                **extra,
                "perms": est,
                "recovered_channels": wiring.agreement(est, perms),
                "accuracy_matched": harness.accuracy(model, xte, yte),
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(f"  {key}: {got[key]['recovered_channels']:.3f} recovered", flush=True)
            _common.write_json(path, got)
    return got


def finetune(data_fraction: float) -> None:
    """The fine-tuning arm of every cached recovery (the study's default settings)."""
    got = recoveries(data_fraction)
    data = vgg19.load_data()
    plain, _ = study.plain_model(data)
    work = plain.parent
    cfg = harness.AttackConfig()
    for key, rec in got.items():
        base = key.rsplit("-", 1)[0]
        wired = work / ("wired-0.onnx" if base == "wired" else f"{base}.onnx")
        extra = {k: v for k, v in rec.items() if k not in ("perms", "loss_history")}
        if base != "wired":
            extra["fraction"] = 0.01
        start = harness.from_onnx(wired, wiring.apply(rec["perms"]))
        descent.run_arm(
            f"{base}-recovered-{key.rsplit('-', 1)[1]}", start, data, data_fraction, cfg, extra
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Compute the recoveries at one data size, then (unless told not to) their arms."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=float, default=0.01, help="attacker's share of the 8,000 digits")
    p.add_argument("--no-finetune", action="store_true", help="only the recoveries")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    if args.no_finetune:
        recoveries(args.data)
    else:
        finetune(args.data)
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
