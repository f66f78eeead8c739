"""Issue 15's measurements on a reduced-width VGG19 (MNIST stand-in), resumable.

Command line (each arm's result is cached as JSON as soon as it is measured, so an
interrupted run resumes; ``--report`` rebuilds the BENCHMARKS.md section and plots)::

    nice -n 19 python -m samples.finetune.study --data 0.01 --part curve
    nice -n 19 python -m samples.finetune.study --data 0.01 --part wiring
    nice -n 19 python -m samples.finetune.study --data 0.01 --part adversarial
    nice -n 19 python -m samples.finetune.study --data 0.01 --part combined
    nice -n 19 python -m samples.finetune.study --arch resnet --data 0.01 --part curve
    python -m samples.finetune.study --report

The plain model is the VGG19 of :mod:`samples.paper.vgg19` with every conv and hidden
linear width divided by ``WIDTH_DIV`` (the full width does not train hundreds of times on
a shared 2-core CPU), trained here on the 8,000 training digits and exported to ONNX.
Public files of today's method come from :func:`onnx_selenc.encrypt` (data-free
defaults); keyed-wiring files from :mod:`samples.finetune.wiring`; adversarial values
from :mod:`samples.finetune.adversarial`. ``--arch resnet`` runs the same parts on the
folded-BN ResNet of :mod:`samples.finetune.resnet` (the second architecture).

Models and public files are cached under the user cache; every arm's result is written
to ``benchmarks/results/finetune/<study>/`` in the repository, where the report reads it
(a cache is lost with its machine; measured numbers should not be).
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

from samples._cache import cache_dir
from samples.finetune import harness, wiring
from samples.paper import _common, vgg19

ARCHS = ("vgg", "resnet")
WIDTH_DIV = 8
FRACTIONS = (0.001, 0.01, 0.05, 0.10, 0.50, 1.0)
ADVERSARIAL_FRACTIONS = (0.01, 0.10)
COMBINED_FRACTION = 0.01  # the tool's default budget: the masks give the graded tiers
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "finetune"
ENCRYPTION = {
    "levels": 5,
    "allocation": "balanced",
    "importance": "magnitude",
    "masking": "empirical",
    "seed": 0,
}
# Hypothesis 2: (placement, amount): filter share per layer, or leading convs; see placement.py.
PLACEMENTS = (("filters", 0.01), ("filters", 0.1), ("early", 2), ("early", 4), ("first-last", 0))
TRAIN = {"epochs": 4, "batch": 64, "lr": 5e-4, "seed": 0}
TEST_DIGITS = 1000  # of the 2,000 held-out digits: enough for +-1.4 points at 90%


def folder(arch: str = "vgg") -> Path:
    """Cache folder of this study (keyed by architecture, training and encryption)."""
    if arch == "vgg":
        key = _common.config_hash({"w": WIDTH_DIV, "train": TRAIN, "enc": ENCRYPTION, "v": 1})
        return cache_dir("samples", "finetune", f"vgg19-w{WIDTH_DIV}-{key}")
    from samples.finetune import resnet

    cfg = {"widths": resnet.WIDTHS, "train": resnet.TRAIN, "enc": ENCRYPTION, "v": 1}
    return cache_dir("samples", "finetune", f"resnet-{_common.config_hash(cfg)}")


def arms_dir(arch: str = "vgg") -> Path:
    """Where the measured arms of one architecture's study are kept (in the repository)."""
    return RESULTS / folder(arch).name


def build_vgg(width_div: int = WIDTH_DIV) -> torch.nn.Module:
    """VGG19 (CIFAR variant, no BN) with every width divided by ``width_div``."""
    from torch import nn

    layers: list[nn.Module] = []
    c = 3
    for v in vgg19.CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, int(v) // width_div, 3, padding=1), nn.ReLU()]
            c = int(v) // width_div
    hidden = 512 // width_div
    model = nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(c, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def plain_model(data: vgg19.Data, arch: str = "vgg") -> tuple[Path, dict[str, Any]]:
    """The trained plain ONNX file (trained and exported on a cache miss)."""
    path, meta_path = folder(arch) / "plain.onnx", folder(arch) / "plain.json"
    meta = _common.read_json(meta_path)
    if meta and path.exists():
        return path, meta
    if arch == "resnet":
        from samples.finetune import resnet

        stats = resnet.train_and_export(data.x_train, data.y_train, data.x_test[:500], path)
        return path, _plain_meta(path, meta_path, stats, data)
    _common.setup_torch(1, TRAIN["seed"])
    model = build_vgg()
    steps = TRAIN["epochs"] * math.ceil(len(data.x_train) / TRAIN["batch"])
    stats = vgg19.fit(
        model,
        data.x_train,
        data.y_train,
        steps=steps,
        batch=TRAIN["batch"],
        lr=TRAIN["lr"],
        seed=TRAIN["seed"],
        desc="plain",
    )
    _common.export_onnx(model.eval(), torch.from_numpy(data.x_test[:2]), path, external_data=False)
    return path, _plain_meta(path, meta_path, stats, data)


def _plain_meta(path: Path, meta_path: Path, stats: Any, data: vgg19.Data) -> dict[str, Any]:
    meta = {
        "train": stats,
        "test_accuracy": vgg19.accuracy_onnx(path, *test_set(data)),
        "conv_weights": sum(w.size for w in _conv_sizes(path)),
        "convs": len(_conv_sizes(path)),
    }
    _common.write_json(meta_path, meta)
    return meta


MAPPING_DIGITS = 250
MAPPING_TOLERANCE = 1e-4  # float32 logits of a 19-layer net: reordering sums costs ~1e-5


def mapping_check(plain: Path, data: vgg19.Data) -> dict[str, Any]:
    """The ONNX -> torch interpreter on the plain file vs ONNX Runtime (raises if off).

    Every arm trains the interpreted graph, so a wrong mapping would silently make every
    number meaningless; checked (and cached) before any arm runs.
    """
    from samples.finetune.graph import OnnxModule

    path = plain.parent / "mapping.json"
    got = _common.read_json(path)
    if got is None:
        x, y = data.x_test[:MAPPING_DIGITS], data.y_test[:MAPPING_DIGITS]
        ref = _common.run_session(_common.ort_session(plain), x)
        mine = _common.torch_forward(OnnxModule(plain), x)
        got = {
            "digits": MAPPING_DIGITS,
            "max_abs_logit_diff": float(np.max(np.abs(ref - mine))),
            "same_predictions": float(np.mean(ref.argmax(1) == mine.argmax(1))),
            "onnx_accuracy": float(np.mean(ref.argmax(1) == y)),
        }
        _common.write_json(path, got)
    if got["max_abs_logit_diff"] > MAPPING_TOLERANCE or got["same_predictions"] < 1.0:
        raise RuntimeError(f"ONNX -> torch mapping disagrees with ONNX Runtime: {got}")
    return got


def _conv_sizes(path: Path) -> list[np.ndarray]:
    from samples.finetune.graph import conv_arrays

    return list(conv_arrays(path).values())


def test_set(data: vgg19.Data) -> tuple[np.ndarray, np.ndarray]:
    """The digits every reported accuracy is measured on (never seen by the attacker)."""
    return data.x_test[:TEST_DIGITS], data.y_test[:TEST_DIGITS]


def measure_arm(
    path: Path,
    start: harness.Start,
    data: vgg19.Data,
    fraction: float,
    cfg: harness.AttackConfig,
    info: dict[str, Any],
    prior: dict[tuple[int, float], dict[str, Any]] | None = None,
) -> None:
    """Measure one arm and write it at ``path`` the moment it ends, with ``info`` (nothing
    to do if it is written); its runs go to ``path``'s ``.runs.jsonl`` meanwhile, so a
    stopped command resumes mid-arm."""
    if _common.read_json(path) is not None:
        return
    print(f"  {path.name}", flush=True)
    xte, yte = test_set(data)
    n = round(fraction * len(data.x_train))
    runs = path.with_suffix(".runs.jsonl")
    res = harness.attack_arm(
        start, data.x_train, data.y_train, xte, yte, n, cfg, prior=prior, runs_file=runs
    )
    res.update(info)
    res.update(
        config=harness.config_dict(cfg), accuracy_before=harness.accuracy(start(0), xte, yte)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    _common.write_json(path, res)
    runs.unlink(missing_ok=True)


def public_file(plain: Path, fraction: float) -> Path:
    """Today's method at one budget, through the real tool (cached with its owner key)."""
    from onnx_selenc import EncryptOptions, encrypt

    out = plain.parent / f"public-{fraction:g}.onnx"
    if not out.exists():
        key = owner_key(plain, fraction)
        key.unlink(missing_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encrypt(plain, out, key_file=key, options=EncryptOptions(budget=fraction, **ENCRYPTION))
    return out


def owner_key(plain: Path, fraction: float) -> Path:
    """The owner key file of :func:`public_file` at one budget."""
    return plain.parent / f"owner-{fraction:g}.key"


def _cached_arm(name: str, run: Any, arch: str = "vgg") -> dict[str, Any] | None:
    """The measured arm, or run it; None when another process is running it right now."""
    path = arms_dir(arch) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    got = _common.read_json(path)
    if got is None:
        lock = folder(arch) / f"{name}.lock"
        try:  # two study processes may share one part (e.g. --reverse); one runs an arm
            lock.open("x").close()
        except FileExistsError:
            print(f"  {name}: running elsewhere ({lock.name}), skipped", flush=True)
            return None
        try:
            print(f"  {name}", flush=True)
            got = run()
            _common.write_json(path, got)
        finally:
            lock.unlink(missing_ok=True)
    return got


def _prior_runs(
    name: str, data_fraction: float, cfg: harness.AttackConfig, arch: str = "vgg"
) -> dict[Any, Any]:
    """Runs of the same arm under the other sweep rule, by (seed, lr), to reuse."""
    other = dataclasses.replace(cfg, sweep_every_seed=not cfg.sweep_every_seed)
    tag = f"d{data_fraction:g}-{_common.config_hash(harness.config_dict(other))}"
    got = _common.read_json(arms_dir(arch) / f"{tag}-{name}.json")
    if got is None:
        return {}
    runs = [*got.get("sweep", []), *got.get("runs", [])]
    for seed_runs in got.get("sweeps", []):
        runs += seed_runs
    return {(r["seed"], r["lr"]): {k: v for k, v in r.items() if k != "reused"} for r in runs}


def run_part(
    part: str,
    data_fraction: float,
    cfg: harness.AttackConfig,
    reverse: bool = False,
    arch: str = "vgg",
    fractions: Sequence[float] = FRACTIONS,
) -> None:
    """Measure one part (``curve``, ``wiring``, ...) at one attacker data size."""
    data = vgg19.load_data()
    xte, yte = test_set(data)
    plain, meta = plain_model(data, arch)
    work = plain.parent
    print(f"{arch} plain: {meta['test_accuracy']:.4f} on {TEST_DIGITS} digits", flush=True)
    print(f"mapping: {mapping_check(plain, data)}", flush=True)
    n = round(data_fraction * len(data.x_train))
    tag = f"d{data_fraction:g}-{_common.config_hash(harness.config_dict(cfg))}"

    def arm(name: str, start: harness.Start, extra: dict[str, Any] | None = None) -> None:
        def go() -> dict[str, Any]:
            before = harness.accuracy(start(0), xte, yte)
            prior = _prior_runs(name, data_fraction, cfg, arch)
            res = harness.attack_arm(
                start, data.x_train, data.y_train, xte, yte, n, cfg, prior=prior
            )
            return {
                **res,
                **(extra or {}),
                "arm": name,
                "arch": arch,
                "config": harness.config_dict(cfg),
                "accuracy_before": before,
                "data": data_fraction,
            }

        _cached_arm(f"{tag}-{name}", go, arch)

    def attacker_digits() -> tuple[np.ndarray, np.ndarray]:
        # The recovery attacks see the first seed's attacker digits (train + held-out).
        idx = np.concatenate(harness.split(len(data.x_train), n, cfg, cfg.seeds[0]))
        return data.x_train[idx], data.y_train[idx]

    arm("scratch", harness.scratch(plain))
    if part == "curve":
        for f in reversed(fractions) if reverse else fractions:
            pub = public_file(plain, f)
            extra = {"fraction": f, "masked_fraction": harness.masked_fraction(plain, pub)}
            arm(f"public-{f:g}", harness.from_onnx(pub), extra)
            if f < 1.0:  # at 100% re-initialising every kernel is the scratch arm
                arm(
                    f"reinit-{f:g}",
                    harness.from_onnx(pub, harness.reinit_masked(plain, pub)),
                    extra,
                )
    elif part == "placement":
        from samples.finetune import placement

        for kind, amount in PLACEMENTS:
            name = f"place-{kind}-{amount:g}"
            pub = placement.masked_file(plain, work / f"{name}.onnx", kind, amount)
            extra = {
                "placement": kind,
                "amount": amount,
                "masked_fraction": harness.masked_fraction(plain, pub),
            }
            arm(name, harness.from_onnx(pub), extra)
    elif part == "control":
        # What does the 100% file still give? Its classifier is never encrypted.
        pub = public_file(plain, 1.0)
        extra = {"fraction": 1.0, "masked_fraction": harness.masked_fraction(plain, pub)}
        arm(
            "control-public-1-gemm-reinit",
            harness.from_onnx(pub, harness.reinit_ops(("Gemm",))),
            extra,
        )
        arm("control-plain-conv-reinit", harness.from_onnx(plain, harness.reinit_ops(("Conv",))))
        arm("control-rescaled-random", harness.from_onnx(pub, harness.rescaled_random()))
    elif part == "wiring":
        wired, perms = wiring.wired_file(plain, work, seed=0)
        arm("wired", harness.from_onnx(wired))
        xa, ya = attacker_digits()
        if arch == "vgg":  # activation-rank recovery reads "the next layer": a chain only
            rec = wiring.recover(wired, xa, ya)
            extra = {"recovered_channels": wiring.agreement(rec, perms)}
            arm("wired-recovered", harness.from_onnx(wired, wiring.apply(rec)), extra)
        rec_g, history = wiring.recover_gradient(wired, xa, ya)
        extra = {"recovered_channels": wiring.agreement(rec_g, perms), "loss_history": history}
        arm("wired-recovered-grad", harness.from_onnx(wired, wiring.apply(rec_g)), extra)
        tiers = arms_dir(arch) / "wiring-tiers.json"
        if not tiers.exists():
            _common.write_json(tiers, {"rows": wiring.tier_table(plain, perms, xte, yte)})
    elif part == "adversarial":
        from samples.finetune import study_parts

        study_parts.adversarial_part(arm, plain, data)
    elif part == "combined":
        from samples.finetune import study_parts

        study_parts.combined_part(arm, plain, attacker_digits(), test_set(data), arms_dir(arch))
    else:
        raise ValueError(part)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a part of the study, or rebuild the report from the measured arms."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=ARCHS, default="vgg")
    p.add_argument("--data", type=float, default=0.01, help="attacker's share of the 8,000 digits")
    p.add_argument(
        "--part",
        choices=("curve", "wiring", "control", "placement", "adversarial", "combined"),
        default="curve",
    )
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=list(FRACTIONS),
        help="budgets of the curve part",
    )
    p.add_argument("--max-steps", type=int, default=harness.AttackConfig.max_steps)
    p.add_argument(
        "--sweep",
        choices=("every", "first"),
        default="every",
        help="sweep the learning rates on every seed, or on the first and reuse its pick",
    )
    p.add_argument(
        "--reverse",
        action="store_true",
        help="curve fractions largest first (a second process on the same part)",
    )
    p.add_argument("--report", action="store_true", help="rebuild BENCHMARKS.md and plots")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    if args.report:
        from samples.finetune import report

        report.write(folder())
        return 0
    start = time.perf_counter()
    cfg = harness.AttackConfig(max_steps=args.max_steps, sweep_every_seed=args.sweep == "every")
    run_part(args.part, args.data, cfg, args.reverse, args.arch, tuple(args.fractions))
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
