"""Render issue 15's cached measurements: a BENCHMARKS.md section and the curve plot.

Everything shown is read from the JSON the study cached (one file per arm, named
``d<data>-<config hash>-<arm>.json``); nothing is measured here, and an arm that has
not been run is left out of the tables (and named as missing), never filled in.

Command line::

    python -m samples.finetune.study --report
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from samples._report import update_section
from samples.finetune import harness
from samples.finetune.report_fmt import Found, Selection
from samples.finetune.report_fmt import delta as _delta
from samples.finetune.report_fmt import load_arms as _load
from samples.finetune.report_fmt import lrs as _lrs
from samples.finetune.report_fmt import pct as _pct
from samples.finetune.report_fmt import rule as _rule
from samples.finetune.report_fmt import steps as _steps
from samples.finetune.report_fmt import train_seconds as _train_seconds
from samples.paper import _common, vgg19

BEGIN, END = "<!-- finetune:begin -->", "<!-- finetune:end -->"
ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "BENCHMARKS.md"
PLOT = ROOT / "docs" / "img" / "finetune_curve.png"


def candidate_configs() -> list[harness.AttackConfig]:
    """The attack settings the study's command line can produce (default step budget)."""
    base = harness.AttackConfig()
    return [base, dataclasses.replace(base, sweep_every_seed=False)]


def command(data: float, part: str, config: harness.AttackConfig) -> str:
    """The command line that measures one part at one data size with ``config``."""
    flags = "" if config.sweep_every_seed else " --sweep first"
    if config.max_steps != harness.AttackConfig.max_steps:
        flags += f" --max-steps {config.max_steps}"
    return f"nice -n 10 python -m samples.finetune.study --data {data:g} --part {part}{flags}"


def load_arms(folder: Path) -> Found:
    """Issue 15's cached arms (its user-cache ``arms`` folder), under its two settings."""
    return _load(folder / "arms", candidate_configs())


def pick(found: Found, prefix: str) -> Selection:
    """Per data share, the settings under which arms named ``prefix...`` were measured
    (with their scratch arm): the most such arms, ties to the per-seed sweep (the
    stronger attacker). A table never mixes two settings within one data share."""
    best: Selection = {}
    for (data, _), (config, arms) in sorted(found.items()):
        if "scratch" not in arms:
            continue
        count = sum(k.startswith(prefix) for k in arms)
        if count == 0:
            continue
        have = best.get(data)
        old = sum(k.startswith(prefix) for k in have[1]) if have else -1
        if count > old or (count == old and config.sweep_every_seed):
            best[data] = (config, arms)
    return best


def curve_rows(arms: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per encrypted fraction measured at one data size (ascending)."""
    rows = []
    for name, res in arms.items():
        if name.startswith("public-"):
            f = res["fraction"]
            rows.append({"fraction": f, "public": res, "reinit": arms.get(f"reinit-{f:g}")})
    return sorted(rows, key=lambda r: r["fraction"])


def crossing_text(rows: Sequence[Mapping[str, Any]], scratch: Mapping[str, Any], key: str) -> str:
    """Smallest fraction from which the arm stays within one SE of scratch (or below)."""
    fracs, ok = [], []
    for r in rows:
        arm = (
            r[key] if key == "public" else (r[key] or (r["public"] if r["fraction"] >= 1 else None))
        )
        if arm is None:
            continue
        d = arm["mean"] - scratch["mean"]
        fracs.append(r["fraction"])
        ok.append(d <= math.hypot(arm["se"], scratch["se"]))
    for i, f in enumerate(fracs):
        if all(ok[i:]):
            return f"{100 * f:g}%"
    return "not reached at the fractions measured"


def curve_table(data: float, arms: Mapping[str, Any], plain_acc: float) -> list[str]:
    """Markdown table of one data size's curve."""
    scratch = arms.get("scratch")
    if scratch is None:
        return [
            f"Attacker with {100 * data:g}% of the digits: the scratch arm is not measured.",
            "",
        ]
    rows = curve_rows(arms)
    n = scratch["n"]
    lines = [
        f"#### Attacker holds {100 * data:g}% of the training digits ({n} labelled digits)",
        "",
        f"From scratch: **{_pct(scratch['mean'], scratch['se'])}** (learning rate picked per "
        f"seed: {_lrs(scratch)}; best step {_steps(scratch)} on average); the plain model "
        f"scores {_pct(plain_acc)}.",
        "",
        "| encrypted (budget / measured share of conv weights) | public file before attack | "
        "fine-tune public file | vs scratch (points) | knows masked positions, re-initialises "
        "them | vs scratch (points) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        pub, ri = r["public"], r["reinit"]
        ri_cells = (
            f"{_pct(ri['mean'], ri['se'])} | {_delta(ri, scratch)}"
            if ri is not None
            else (
                "(every kernel masked: the scratch arm for the convs) | –"
                if r["fraction"] >= 1
                else "not measured | –"
            )
        )
        lines.append(
            f"| {100 * r['fraction']:g}% / {100 * pub['masked_fraction']:.2f}% | "
            f"{_pct(pub['accuracy_before'])} | {_pct(pub['mean'], pub['se'])} | "
            f"{_delta(pub, scratch)} | {ri_cells} |"
        )
    lines += [
        "",
        f"Curve stays within one SE of scratch (or below) from: fine-tune public file "
        f"**{crossing_text(rows, scratch, 'public')}**; knows the masked positions "
        f"**{crossing_text(rows, scratch, 'reinit')}**.",
        "",
    ]
    return lines


def plot(selection: Selection, plain_acc: float, path: Path) -> None:
    """Post-attack accuracy vs encrypted fraction, one panel per data size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datas = sorted(selection)
    fig, axes = plt.subplots(1, len(datas), figsize=(5.5 * len(datas), 4.2), squeeze=False)
    for ax, data in zip(axes[0], datas, strict=True):
        config, arms = selection[data]
        scratch, rows = arms["scratch"], curve_rows(arms)
        xs = [r["fraction"] for r in rows]
        for key, label, style in (
            ("public", "fine-tune public file", "o-"),
            ("reinit", "knows masked positions, re-inits", "s--"),
        ):
            pts = [(r["fraction"], r[key]) for r in rows if r[key] is not None]
            if pts:
                ax.errorbar(
                    [p[0] for p in pts],
                    [100 * p[1]["mean"] for p in pts],
                    yerr=[100 * p[1]["se"] for p in pts],
                    fmt=style,
                    capsize=3,
                    label=label,
                )
        ax.plot(
            xs,
            [100 * r["public"]["accuracy_before"] for r in rows],
            ":",
            color="grey",
            label="public file, no attack",
        )
        lo, hi = 100 * (scratch["mean"] - scratch["se"]), 100 * (scratch["mean"] + scratch["se"])
        ax.axhspan(lo, hi, color="tab:red", alpha=0.2)
        ax.axhline(100 * scratch["mean"], color="tab:red", label="from scratch (± SE)")
        ax.axhline(100 * plain_acc, color="black", lw=0.8, ls="-.", label="plain model")
        ax.set_xscale("log")
        ax.set_xlabel("encrypted share of conv weights (budget)")
        ax.set_ylabel("held-out accuracy after attack (%)")
        ax.set_title(
            f"attacker holds {100 * data:g}% ({scratch['n']} digits), lr sweep {_rule(config)}"
        )
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _other_rule_note(found: Found, data: float, config: harness.AttackConfig) -> list[str]:
    """The same data size's scratch line under the other sweep rule, where measured:
    shows how much the attacker's learning-rate pick alone moves the baseline."""
    for (d, _), (other, arms) in found.items():
        if d == data and other != config and "scratch" in arms:
            s = arms["scratch"]
            return [
                f"With the learning rate {_sweep_text(other)}, the scratch line here was "
                f"{_pct(s['mean'], s['se'])} (first seed's lr {s['chosen_lr']:g}). Each table "
                f"uses one rule per data size, named in its rows.",
                "",
            ]
    return []


def _sweep_text(config: harness.AttackConfig) -> str:
    if config.sweep_every_seed:
        return "swept on every seed and picked on that seed's held-out part"
    return "swept on the first seed (picked on its held-out part) and reused for the others"


def render(folder: Path) -> str:
    """The whole markdown section (without the markers); also writes the plot."""
    from samples.finetune import report_parts, study

    found = load_arms(folder)
    curve = pick(found, "public-")
    parts = {
        "control": pick(found, "control-"),
        "placement": pick(found, "place-"),
        "wiring": pick(found, "wired"),
    }
    meta = _common.read_json(folder / "plain.json") or {}
    mapping = _common.read_json(folder / "mapping.json") or {}
    plain_acc = float(meta.get("test_accuracy", float("nan")))
    widths = [int(v) // study.WIDTH_DIV for v in vgg19.CFG if v != "M"]
    base = harness.AttackConfig()
    commands = [command(d, "curve", c) for d, (c, _) in sorted(curve.items())]
    for part, sel in parts.items():
        commands += [command(d, part, c) for d, (c, _) in sorted(sel.items())]
    lines = [
        "## Fine-tuning attack study (issue 15)",
        "",
        "Commands (each arm is cached as JSON as soon as it is measured, so a run resumes; "
        "the last one renders this section and the plot from the cache):",
        "",
        "```",
        *commands,
        "python -m samples.finetune.study --report",
        "```",
        "",
        f"Model: VGG19 (CIFAR variant, no BN) with every width divided by {study.WIDTH_DIV} "
        f"(conv widths {'-'.join(map(str, widths))}, classifier {512 // study.WIDTH_DIV}-"
        f"{512 // study.WIDTH_DIV}-10, {meta.get('conv_weights', '?')} conv weights), trained "
        f"here on the 8,000 MNIST training digits (padded to 3x32x32; the CIFAR-10 stand-in, "
        f"see the paper sections) with Adam lr {study.TRAIN['lr']:g}, {study.TRAIN['epochs']} "
        f"epochs: **{_pct(plain_acc)}** on the {study.TEST_DIGITS} held-out digits every "
        f"accuracy here is measured on (never seen by the attacker). The attacker fine-tunes "
        f"the ONNX graph itself (`samples/finetune/graph.py`); on the plain file it matches "
        f"ONNX Runtime to max |logit diff| {mapping.get('max_abs_logit_diff', float('nan')):.1e} "
        f"with identical predictions on {mapping.get('digits', '?')} digits (checked before "
        f"any arm runs).",
        "",
        f"Public files: today's method through `onnx_selenc.encrypt` with its data-free "
        f"defaults ({', '.join(f'{k}={v}' for k, v in study.ENCRYPTION.items())}), budget = "
        f"the encrypted share of conv weights. The classifier (Gemm) layers are never "
        f"encrypted, so even at 100% they stay the trained ones.",
        "",
        f"Attacker (every arm of a data size gets the same budget and rule): Adam, batch "
        f"{base.batch}, learning rate over {', '.join(f'{x:g}' for x in base.lrs)}, picked on "
        f"the attacker's own held-out {100 * base.val_share:g}% of their digits (at least "
        f"{base.min_val}); early stopping after {base.patience} checks every "
        f"{base.eval_every} steps without a better held-out accuracy (loss breaks ties), at "
        f"most {base.max_steps} steps, the best checkpoint kept. {len(base.seeds)} seeds "
        f"(the attacker's digits, the held-out split, the initialisation and the shuffling "
        f"differ); cells are mean ± standard error over the seeds of the held-out accuracy "
        f"(%). 'vs scratch': difference in points ± the SE of the difference; the issue's "
        f"goal is 'within 1 SE' or worse. Re-initialising the masked kernels uses Kaiming "
        f"normal (fan-in), like the scratch arm.",
        "",
        "![post-attack accuracy vs encrypted fraction](docs/img/finetune_curve.png)",
        "",
        "### The curve for today's method (hypothesis 1)",
        "",
    ]
    for data, (config, arms) in sorted(curve.items()):
        lines += curve_table(data, arms, plain_acc)
        lines += [f"Learning rate {_sweep_text(config)}.", ""]
        lines += _other_rule_note(found, data, config)
    if curve:
        plot(curve, plain_acc, PLOT)
    lines += report_parts.control_lines(parts["control"])
    lines += report_parts.placement_lines(parts["placement"])
    lines += report_parts.wiring_lines(folder, parts["wiring"])
    seconds = sum(_train_seconds(a) for _, arms in found.values() for a in arms.values())
    lines += [
        f"Training time of every run above together: {seconds / 60:.0f} min (single-threaded "
        f"torch, niced, on a 2-core CPU shared with other jobs, so times are not comparable "
        f"between arms).",
        "",
    ]
    return "\n".join(lines)


def write_section(section: str, path: Path = BENCHMARKS) -> None:
    """Replace the marked section (or insert it after the attacks section), atomically."""
    update_section(path, "finetune", section, after="attacks")


def write(folder: Path) -> None:
    """Render the cached results into BENCHMARKS.md and the plot.

    Issue 15's section is rewritten only from its own cache of arms; where that cache is
    gone (its machine was), the committed section stays as it is rather than losing rows.
    """
    from samples.finetune import report_issue23

    if any((folder / "arms").glob("*.json")):
        write_section(render(folder))
        print(f"wrote {BENCHMARKS} and {PLOT}")
    else:
        print(f"issue 15's section left as committed: no arms in {folder / 'arms'}")
    report_issue23.write()
