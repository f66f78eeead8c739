"""Issue 23, the decisive recovery: wiring against a reference the weights descend from.

Three victims of the width/8 VGG19 (same recipe as the study's plain model), each
attacked by :mod:`samples.finetune.reference_match`:

- ``initial``: the study's own plain model (``torch.manual_seed(0)``); the reference is
  its initial weights, rebuilt from the seed.
- ``seeds``: a victim trained from a secret seed; the attacker tries the initial
  weights of the seeds they guess (0..9) and keeps the best-fitting one.
- ``checkpoint``: a public checkpoint pretrained on digits 0-4 only, fine-tuned on all
  ten digits = the victim. The attacker's best start without the public file is
  fine-tuning that checkpoint; the arms are the victim's public files (today's default,
  wiring alone, wiring over 1/10/50% masks from :func:`onnx_selenc.encrypt`), each
  reference-matched to the checkpoint, then fine-tuned.

Command line (each arm cached in ``benchmarks/results/finetune/<study>/`` as it ends)::

    nice -n 19 python -m samples.finetune.descent --part match
    nice -n 19 python -m samples.finetune.descent --data 0.01 --part checkpoint
    nice -n 19 python -m samples.finetune.descent --data 0.1 --part checkpoint
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samples.finetune import harness, reference_match, study, wiring
from samples.finetune.graph import OnnxModule
from samples.paper import _common, vgg19

SECRET_SEED = 9173  # the 'secret' victim seed (not among the guesses)
GUESSES = tuple(range(10))
PRETRAIN_CLASSES = 5  # the public checkpoint knows digits 0..4 only
MASKS = (0.01, 0.1, 0.5)  # wiring over the tool's masks at these budgets
DECISIVE = (
    "scratch",
    "desc-checkpoint",
    "desc-public-0.01",
    "desc-wired-masks-0.01-ref",
    "desc-wired-masks-0.01-ref-restore",
)
SEEDS5 = (0, 1, 2, 3, 4)


def work_dir() -> Path:
    """Cache of this part's models (beside the study's plain model)."""
    return study.folder("vgg")


def results_dir() -> Path:
    """Where the arms are kept (the study's VGG results folder)."""
    return study.arms_dir("vgg")


def _export(model: torch.nn.Module, data: vgg19.Data, path: Path) -> Path:
    return reference_match.reference_from_torch(model, data.x_test[:2], path)


def initial_reference(data: vgg19.Data, seed: int) -> Path:
    """The VGG's initial weights from ``seed``, built exactly as the plain model was."""
    _common.setup_torch(1, seed)
    return _export(study.build_vgg(), data, work_dir() / f"init-{seed}.onnx")


def _fit(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, seed: int, desc: str) -> None:
    t = study.TRAIN
    steps = t["epochs"] * math.ceil(len(x) / t["batch"])
    vgg19.fit(model, x, y, steps=steps, batch=t["batch"], lr=t["lr"], seed=seed, desc=desc)


def secret_victim(data: vgg19.Data) -> Path:
    """The plain model's recipe from a seed the attacker does not know."""
    path = work_dir() / f"victim-seed{SECRET_SEED}.onnx"
    if not path.exists():
        _common.setup_torch(1, SECRET_SEED)
        model = study.build_vgg()
        _fit(model, data.x_train, data.y_train, SECRET_SEED, "secret-seed victim")
        _export(model, data, path)
    return path


def checkpoint_and_victim(data: vgg19.Data) -> tuple[Path, Path]:
    """(public checkpoint, victim): pretrained on digits 0-4, then fine-tuned on all ten.

    Both stages use the plain model's recipe (Adam lr 5e-4, 4 epochs): a full fine-tune,
    which moves the weights further from the checkpoint than a short one would.
    """
    ckpt, victim = work_dir() / "checkpoint.onnx", work_dir() / "victim-descended.onnx"
    if ckpt.exists() and victim.exists():
        return ckpt, victim
    _common.setup_torch(1, 0)
    model = study.build_vgg()
    keep = data.y_train < PRETRAIN_CLASSES
    _fit(model, data.x_train[keep], data.y_train[keep], 0, "checkpoint (digits 0-4)")
    ckpt.unlink(missing_ok=True)
    _export(model, data, ckpt)
    _fit(model.train(), data.x_train, data.y_train, 1, "victim (fine-tune, 10 digits)")
    victim.unlink(missing_ok=True)
    _export(model, data, victim)
    return ckpt, victim


def masked_file(victim: Path, fraction: float) -> tuple[Path, Path]:
    """The victim's public file from the real tool at one budget (and its owner key)."""
    from onnx_selenc import EncryptOptions, encrypt

    out = victim.with_name(f"{victim.stem}-public-{fraction:g}.onnx")
    key = out.with_suffix(".key")
    if not out.exists():
        key.unlink(missing_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opts = EncryptOptions(budget=fraction, **study.ENCRYPTION)
            encrypt(victim, out, key_file=key, options=opts)
    return out, key


def wired_descended(victim: Path, fraction: float) -> tuple[Path, list[list[int]]]:
    """The descended victim wired (seed 0) over the tool's masks at ``fraction`` (0: none)."""
    src = masked_file(victim, fraction)[0] if fraction else victim
    name = f"wired-descended-{fraction:g}.onnx"
    return wiring.wired_file(src, work_dir(), seed=0, name=name)


def match_part(data: vgg19.Data) -> dict[str, Any]:
    """Channels recovered and accuracy before training, for every victim (no training)."""
    xte, yte = study.test_set(data)
    plain, _ = study.plain_model(data)
    rows: list[dict[str, Any]] = []

    def row(victim: str, reference: str, wired: Path, perms: list[list[int]], ref: Path) -> None:
        start = time.perf_counter()
        got = reference_match.match(wired, ref)
        seconds = time.perf_counter() - start
        model = harness.from_onnx(wired, wiring.apply(got.perms))(0)
        rows.append(
            {
                "victim": victim,
                "reference": reference,
                "recovered_channels": wiring.agreement(got.perms, perms),
                "similarity": got.mean_similarity,
                "accuracy_wired": harness.accuracy(harness.from_onnx(wired)(0), xte, yte),
                "accuracy_matched": harness.accuracy(model, xte, yte),
                "seconds": round(seconds, 3),
            }
        )
        print(f"  {rows[-1]}", flush=True)

    wired, perms = wiring.wired_file(plain, work_dir(), seed=0)
    row("plain (seed 0)", "initial weights of seed 0", wired, perms, initial_reference(data, 0))
    victim = secret_victim(data)
    wired_s, perms_s = wiring.wired_file(victim, work_dir(), seed=0, name="wired-secret.onnx")
    for g in GUESSES:
        ref = initial_reference(data, g)
        row(f"secret seed {SECRET_SEED}", f"initial weights of seed {g}", wired_s, perms_s, ref)
    true_ref = initial_reference(data, SECRET_SEED)
    row(f"secret seed {SECRET_SEED}", "its true initial weights", wired_s, perms_s, true_ref)
    ckpt, desc = checkpoint_and_victim(data)
    for f in (0.0, *MASKS):
        w, p = wired_descended(desc, f)
        label = f", {f:.0%} masked" if f else ""
        row(f"fine-tuned from the checkpoint{label}", "the public checkpoint", w, p, ckpt)
    out = {
        "rows": rows,
        "victims": {
            "plain": study.plain_model(data)[1]["test_accuracy"],
            "secret": vgg19.accuracy_onnx(victim, xte, yte),
            "checkpoint": vgg19.accuracy_onnx(ckpt, xte, yte),
            "descended": vgg19.accuracy_onnx(desc, xte, yte),
        },
    }
    _common.write_json(results_dir() / "reference-match.json", out)
    return out


def _prior(name: str, data_fraction: float, cfg: harness.AttackConfig) -> dict[Any, Any]:
    """Finished runs of the same arm under other seed sets or sweep rules, by (seed, lr)."""
    found: dict[Any, Any] = {}
    for seeds in ((0, 1, 2), SEEDS5):
        for every in (True, False):
            other = dataclasses.replace(cfg, seeds=seeds, sweep_every_seed=every)
            if other == cfg:
                continue
            tag = f"d{data_fraction:g}-{_common.config_hash(harness.config_dict(other))}"
            got = _common.read_json(results_dir() / f"{tag}-{name}.json")
            for seed_runs in (got or {}).get("sweeps", []):
                for r in seed_runs:
                    found[r["seed"], r["lr"]] = {k: v for k, v in r.items() if k != "reused"}
    return found


def arm_path(name: str, data_fraction: float, cfg: harness.AttackConfig) -> Path:
    """The arm's result file (in the study's VGG results folder)."""
    tag = f"d{data_fraction:g}-{_common.config_hash(harness.config_dict(cfg))}"
    return results_dir() / f"{tag}-{name}.json"


def run_arm(
    name: str,
    start: harness.Start,
    data: vgg19.Data,
    data_fraction: float,
    cfg: harness.AttackConfig,
    extra: dict[str, Any] | None = None,
) -> None:
    """Measure one arm and write it the moment it ends (nothing to do if it is written)."""
    path = arm_path(name, data_fraction, cfg)
    # Runs of the same start under other seed sets (e.g. the study's 3-seed scratch) are
    # reused by (seed, lr): training is seeded and single-threaded, so they are the same.
    prior = _prior(name, data_fraction, cfg)
    info = {**(extra or {}), "arm": name, "arch": "vgg", "data": data_fraction}
    study.measure_arm(path, start, data, data_fraction, cfg, info, prior)


def _same_start(a: harness.Start, b: harness.Start) -> bool:
    """Whether two starts give bit-identical weights (then their seeded runs are too)."""
    sa, sb = a(0).state_dict(), b(0).state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def checkpoint_part(data_fraction: float, max_steps: int, sweep_every_seed: bool) -> None:
    """The fine-tuning arms against the descended victim (5 seeds on the decisive ones).

    After a 100% match the wired file is today's public file at the same budget, weight
    for weight; its arm then reuses that file's runs (checked bit for bit, else trained).
    """
    data = vgg19.load_data()
    plain, _ = study.plain_model(data)
    ckpt, victim = checkpoint_and_victim(data)

    def arm(
        name: str, start: harness.Start, extra: dict[str, Any], same_as: str | None = None
    ) -> None:
        seeds = SEEDS5 if name in DECISIVE else (0, 1, 2)
        cfg = harness.AttackConfig(
            seeds=seeds, max_steps=max_steps, sweep_every_seed=sweep_every_seed
        )
        if same_as is not None and _common.read_json(arm_path(name, data_fraction, cfg)) is None:
            twin = _common.read_json(arm_path(same_as, data_fraction, cfg))
            if twin is not None:
                twin.update(extra, arm=name, identical_start_to=same_as)
                _common.write_json(arm_path(name, data_fraction, cfg), twin)
        run_arm(name, start, data, data_fraction, cfg, {**extra, "victim": "descended"})

    arm("scratch", harness.scratch(plain), {})
    arm("desc-checkpoint", harness.from_onnx(ckpt), {})
    for f in (0.01, 0.5, 0.1):
        pub, _ = masked_file(victim, f)
        extra: dict[str, Any] = {
            "fraction": f,
            "masked_fraction": harness.masked_fraction(victim, pub),
        }
        wired, perms = wired_descended(victim, f)
        got = reference_match.match(wired, ckpt)
        matched = harness.from_onnx(wired, wiring.apply(got.perms))
        rec = {"recovered_channels": wiring.agreement(got.perms, perms)}
        rec["similarity"] = got.mean_similarity
        restore = reference_match.restore_from_reference(ckpt)

        def restored(seed: int, m: harness.Start = matched, r: Any = restore) -> torch.nn.Module:
            model = m(seed)
            r(model, seed)
            return model

        flags = reference_match.flagged_kernels(matched(0), ckpt, _masked_kernels(victim, pub))
        arm(f"desc-public-{f:g}", harness.from_onnx(pub), extra)
        arm(f"desc-wired-masks-{f:g}-ref-restore", restored, {**extra, **rec, **flags})
        same = f"desc-public-{f:g}" if _same_start(matched, harness.from_onnx(pub)) else None
        arm(f"desc-wired-masks-{f:g}-ref", matched, {**extra, **rec}, same_as=same)
    wired, perms = wired_descended(victim, 0.0)
    got = reference_match.match(wired, ckpt)
    rec = {"recovered_channels": wiring.agreement(got.perms, perms)}
    arm("desc-wired-ref", harness.from_onnx(wired, wiring.apply(got.perms)), rec)


def _masked_kernels(plain: Path, public: Path) -> np.ndarray:
    """One flag per conv kernel (graph order): the tool masked it."""
    a, b = OnnxModule(plain), OnnxModule(public)
    flags = [
        (a.params[k] != b.params[k]).flatten(2).any(dim=2).flatten().numpy()
        for k in a.conv_weight_names()
    ]
    return np.concatenate(flags)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one part (``match`` needs no training; ``checkpoint`` trains the arms)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("match", "checkpoint"), required=True)
    p.add_argument("--data", type=float, default=0.01, help="attacker's share of the 8,000 digits")
    p.add_argument("--max-steps", type=int, default=harness.AttackConfig.max_steps)
    p.add_argument(
        "--sweep",
        choices=("every", "first"),
        default="first",
        help="sweep the learning rates on every seed, or on the first and reuse its pick",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    if args.part == "match":
        match_part(vgg19.load_data())
    else:
        checkpoint_part(args.data, args.max_steps, args.sweep == "every")
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
