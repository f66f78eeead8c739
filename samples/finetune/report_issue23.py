"""Render issue 23's measured arms: the ``finetune-23`` section of BENCHMARKS.md.

Reads only ``benchmarks/results/finetune/<study>/`` (the arms and the tables the study
wrote there); an arm not measured is named as missing, never filled in. Issue 15's own
section above it is rendered by :mod:`samples.finetune.report` from its cache.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from samples._report import update_section
from samples.finetune import harness, report_fmt
from samples.finetune.report_fmt import delta, pct
from samples.paper import _common

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "BENCHMARKS.md"
Arms = dict[str, dict[str, Any]]

# Row order and labels of the general table; a name matching none is not shown there.
_LABELS: list[tuple[str, Callable[[re.Match[str]], str]]] = [
    (r"scratch", lambda m: "from scratch (Kaiming)"),
    (r"public-([0-9.]+)", lambda m: f"today's public file, {_pc(m[1])} budget"),
    (r"reinit-([0-9.]+)", lambda m: f"{_pc(m[1])}, knows masked positions, re-initialises them"),
    (r"adv-([0-9.]+)", lambda m: f"{_pc(m[1])} budget, adversarial values (hypothesis 4)"),
    (r"wired", lambda m: "keyed wiring alone"),
    (r"wired-recovered", lambda m: "wiring, after activation-rank recovery"),
    (r"wired-recovered-grad", lambda m: "wiring, after gradient recovery"),
    (r"wired-recovered-sinkhorn", lambda m: "wiring, after learned (Sinkhorn) permutations"),
    (r"wired-recovered-rebasin", lambda m: "wiring, after weight matching to own model"),
    (r"combined-([0-9.]+)", lambda m: f"wiring over today's {_pc(m[1])} masks (hypothesis 5)"),
    (
        r"combined-([0-9.]+)-recovered-grad",
        lambda m: f"wiring over {_pc(m[1])} masks, after gradient recovery",
    ),
    (
        r"combined-([0-9.]+)-recovered-sinkhorn",
        lambda m: f"wiring over {_pc(m[1])} masks, after Sinkhorn",
    ),
    (
        r"combined-([0-9.]+)-recovered-rebasin",
        lambda m: f"wiring over {_pc(m[1])} masks, after weight matching",
    ),
    (r"tool-wiring-([0-9.]+)", lambda m: f"the tool's wiring mode ({_pc(m[1])} budget)"),
    (
        r"tool-wiring-([0-9.]+)-recovered-grad",
        lambda m: f"the tool's wiring mode ({_pc(m[1])}), after gradient recovery",
    ),
]
# The descended victim's arms (samples/finetune/descent.py, product.py).
_DESC: list[tuple[str, Callable[[re.Match[str]], str]]] = [
    (r"scratch", lambda m: "from scratch (Kaiming)"),
    (r"desc-checkpoint", lambda m: "fine-tune the public checkpoint (no file)"),
    (r"desc-public-([0-9.]+)", lambda m: f"today's public file ({_pc(m[1])} masks), fine-tuned"),
    (r"desc-wired-ref", lambda m: "wiring alone, matched to the checkpoint"),
    (r"desc-wired-masks-([0-9.]+)-ref", lambda m: f"wiring + {_pc(m[1])} masks, matched"),
    (
        r"desc-wired-masks-([0-9.]+)-ref-restore",
        lambda m: f"wiring + {_pc(m[1])} masks, matched, unlike kernels taken from the checkpoint",
    ),
    (
        r"desc-tool-wiring-([0-9.]+)-ref",
        lambda m: f"the tool's wiring mode ({_pc(m[1])} budget), matched",
    ),
    (
        r"desc-tool-wiring-([0-9.]+)-ref-restore",
        lambda m: (
            f"the tool's wiring mode ({_pc(m[1])}), matched, unlike kernels from the checkpoint"
        ),
    ),
]


def _pc(fraction: str) -> str:
    return f"{100 * float(fraction):g}%"


def _ordered(arms: Arms, labels: list[tuple[str, Callable[[re.Match[str]], str]]]) -> list[Any]:
    """(label, arm) in the order of ``labels``, numeric groups ascending within a pattern."""
    out = []
    for pattern, label in labels:
        hits = [(re.fullmatch(pattern, k), v) for k, v in arms.items()]
        found = [(m, v) for m, v in hits if m is not None]
        found.sort(key=lambda mv: [float(g) for g in mv[0].groups()])
        out += [(label(m), v) for m, v in found]
    return out


def _by_data(
    folder: Path, default_only: bool = False, every_seed: bool | None = None
) -> dict[float, Arms]:
    """Per data share, the folder's arms; where one was measured under several settings,
    the one with the most seeds. ``default_only``: the study's default settings only;
    ``every_seed``: only arms whose learning rate was swept on every seed (or not)."""
    out: dict[float, Arms] = {}
    for (data, _), (config, arms) in sorted(report_fmt.load_arms(folder).items()):
        if default_only and config != harness.AttackConfig():
            continue
        if every_seed is not None and config.sweep_every_seed != every_seed:
            continue
        for name, arm in arms.items():
            have = out.setdefault(data, {}).get(name)
            if have is None or len(arm["runs"]) > len(have["runs"]):
                out[data][name] = arm
    return out


def _cell_rec(arm: Mapping[str, Any]) -> str:
    rec = arm.get("recovered_channels")
    return "–" if rec is None else f"{100 * rec:.1f}%"


def _cell_mask(arm: Mapping[str, Any]) -> str:
    m = arm.get("masked_fraction")
    return "–" if m is None else f"{100 * m:.2f}%"


def arm_table(arms: Arms, labels: Any, ref: str, data: float) -> list[str]:
    """One data size's arms against the arm ``ref`` (the attacker's best start without)."""
    base = arms.get(ref)
    lines = [
        "| start | seeds | masked share of conv weights | channels recovered | before attack "
        f"| after attack | vs {'scratch' if ref == 'scratch' else 'the checkpoint'} (points) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, arm in _ordered(arms, labels):
        lines.append(
            f"| {label}{_twin(arm)} | {len(arm['runs'])} | {_cell_mask(arm)} | {_cell_rec(arm)} | "
            f"{pct(arm['accuracy_before'])} | {pct(arm['mean'], arm['se'])} | "
            f"{delta(arm, base) if base is not None and arm is not base else '–'} |"
        )
    n = next(iter(arms.values()))["n"]
    return [
        f"#### Attacker holds {100 * data:g}% of the training digits ({n} digits)",
        "",
        *lines,
        "",
    ]


def tiers_lines(results: Path, title: str) -> list[str]:
    """The combined scheme's accuracy per key level, through the real loader."""
    got = _common.read_json(results / "combined-0.01-tiers.json")
    if got is None:
        return []
    rows = got["rows"]
    exact = [r for r in rows if "bit_exact" in r]
    return [
        f"{title}: accuracy per key level of wiring over today's 1% masks (level 0 the "
        f"wired public file; a level-k key undoes the wiring and restores the tool's level k; "
        f"no training):",
        "",
        "| level | " + " | ".join(str(r["level"]) for r in rows) + " |",
        "|---" * (len(rows) + 1) + "|",
        "| accuracy | " + " | ".join(pct(r["accuracy"]) for r in rows) + " |",
        "",
        f"The top level is bit-exact with the plain weights: "
        f"{'yes' if exact and exact[0]['bit_exact'] else 'no'}.",
        "",
    ]


def match_lines(results: Path) -> list[str]:
    """Reference matching without any training (``descent --part match``)."""
    got = _common.read_json(results / "reference-match.json")
    if got is None:
        return ["Reference matching without training: not measured yet.", ""]
    v = got["victims"]
    lines = [
        f"Victims' accuracy: the study's plain model {pct(v['plain'])}, the secret-seed victim "
        f"{pct(v['secret'])}, the public checkpoint (digits 0-4 only) {pct(v['checkpoint'])}, "
        f"the victim fine-tuned from it {pct(v['descended'])}.",
        "",
        "| victim (wired public file) | attacker's reference | channels recovered | mean "
        "matched cosine | wired file | after matching (no training) | matching time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in got["rows"]:
        lines.append(
            f"| {r['victim']} | {r['reference']} | {100 * r['recovered_channels']:.1f}% | "
            f"{r['similarity']:.3f} | {pct(r['accuracy_wired'])} | "
            f"{pct(r['accuracy_matched'])} | {r['seconds']:.2f} s |"
        )
    wrong = [
        r["similarity"] for r in got["rows"] if r["reference"].startswith("initial weights of")
    ]
    wrong = wrong[1:]  # the first row is the plain model's own (right) seed
    right = [r["similarity"] for r in got["rows"] if r["reference"] == "its true initial weights"]
    if wrong and right:
        lines += [
            "",
            f"The matched cosine tells the attacker when a guess is right ({right[0]:.3f} for "
            f"the true seed against at most {max(wrong):.3f} for the wrong ones): a seed drawn "
            f"from a small space is found by trying them, and a leaked or default seed gives "
            f"the whole wiring away with no data.",
        ]
    return [*lines, ""]


def _best_without(arms: Arms) -> str:
    """The attacker's best start without the public file: the higher mean of the two."""
    have = [k for k in ("scratch", "desc-checkpoint") if k in arms]
    return max(have, key=lambda k: arms[k]["mean"]) if have else "scratch"


def render() -> str:
    """The whole section (without the markers)."""
    from samples.finetune import study

    base = harness.AttackConfig()
    lines = [
        "## Fine-tuning attack study, continued (issue 23)",
        "",
        "Same model, data, test digits and attacker as the issue 15 section above (learning "
        f"rate over {', '.join(f'{x:g}' for x in base.lrs)} swept on every seed, early "
        "stopping on the attacker's held-out part, best checkpoint kept); cells are mean ± "
        "standard error over the seeds named in each row. Every number here is read from "
        "the arm files in `benchmarks/results/finetune/` by "
        "`python -m samples.finetune.study --report`. (The arm files behind the issue 15 "
        "section were lost with the machine that measured them; the scratch arms below give "
        "the same numbers as the scratch lines there.)",
        "",
    ]
    for arch, title in (("vgg", "VGG19, width/8"), ("resnet", "Folded-BN ResNet")):
        results = study.arms_dir(arch)
        by_data = _by_data(results, default_only=True)
        flag = " --arch resnet" if arch == "resnet" else ""
        lines += [
            f"### {title}: adversarial values, wiring over today's masks, more curve points",
            "",
        ]
        lines += [
            "```",
            *[
                f"nice -n 19 python -m samples.finetune.study{flag} --data {d:g} --part {p}"
                for d in sorted(by_data)
                for p in _parts(by_data[d])
            ],
            *[
                f"nice -n 19 python -m samples.finetune.product --data {d:g}"
                for d in sorted(by_data)
                if any(k.startswith("tool-") for k in by_data[d])
            ],
            "```",
            "",
        ]
        for data, arms in sorted(by_data.items()):
            general = {k: v for k, v in arms.items() if not k.startswith("desc-")}
            lines += arm_table(general, _LABELS, "scratch", data)
        lines += tiers_lines(results, title)
    lines += generic_lines(study.arms_dir("vgg"))
    lines += descent_lines(study.arms_dir("vgg"))
    return "\n".join(lines)


def _parts(arms: Arms) -> list[str]:
    """The study parts that measured these arms (generic.py's recoveries are not one)."""
    own = [k for k in arms if not re.search("sinkhorn|rebasin", k)]
    prefixes = {
        "public-": "curve",
        "adv-": "adversarial",
        "wired": "wiring",
        "combined-": "combined",
    }
    return sorted({p for k in own for pre, p in prefixes.items() if k.startswith(pre)})


def generic_lines(results: Path) -> list[str]:
    """Recoveries without a descent reference (``samples/finetune/generic.py``)."""
    rows = []
    for path in sorted(results.glob("generic-recoveries-d*.json")):
        data = float(path.stem.rsplit("-d", 1)[1])
        for key, r in sorted((_common.read_json(path) or {}).items()):
            rows.append((data, key, r))
    if not rows:
        return []
    lines = [
        "### Wiring against recoveries with no descent reference (VGG19, width/8)",
        "",
        "Learned permutations: per conv a matrix of logits, Sinkhorn-normalised at a "
        "temperature annealed from 1 to 0.05 over 300 Adam steps (lr 0.1, batch 64), every "
        "weight frozen, trained on the attacker's digits (the first seed's), rounded with the "
        "Hungarian method. Weight matching: the attacker trains the architecture from scratch "
        "on the same digits (early-stopped, the scratch arm's first-seed learning rate), then "
        "Git Re-Basin's weight-matching step solves, by coordinate descent, the reference's "
        "order of each layer's rows and of its true input slots "
        "(`samples/finetune/learned.py`). The fine-tuned arms, where measured, are in the VGG "
        f"tables above. Chance-level cross-entropy on ten classes is ln 10 = {math.log(10):.3f}.",
        "",
        "```",
        *sorted(
            {f"nice -n 19 python -m samples.finetune.generic --data {d:g}" for d, _, _ in rows}
        ),
        "```",
        "",
        "| attacker data | public file, recovery | channels recovered | after recovery (no "
        "training) | attacker's own model | Sinkhorn loss, first -> last step | recovery time |",
        "|---|---|---|---|---|---|---|",
    ]
    for data, key, r in rows:
        own = r.get("reference_accuracy")
        lines.append(
            f"| {100 * data:g}% | {key} | {100 * r['recovered_channels']:.1f}% | "
            f"{pct(r['accuracy_matched'])} | {'–' if own is None else pct(own)} | "
            f"{_loss(r)} | {r['seconds']:.0f} s |"
        )
    stuck = [
        r
        for _, _, r in rows
        if r.get("loss_history") and min(r["loss_history"]) > 0.98 * math.log(10)
    ]
    if stuck:
        lines += [
            "",
            f"In {len(stuck)} of the Sinkhorn runs the attacker's loss never left chance level: "
            "from near-uniform soft permutations every filter is its layer's average, and "
            "through 16 such layers the output carries no signal to learn the orders from. "
            "This attacker is weak here, not the wiring shown strong: a start nearer a hard "
            "permutation, or layer-by-layer training, was not tried.",
        ]
    return [*lines, ""]


def descent_lines(results: Path) -> list[str]:
    """The decisive recovery: a reference the weights descend from."""
    lines = [
        "### Wiring against a reference the weights descend from (VGG19, width/8)",
        "",
        "Recovery: per conv in graph order, each public filter (weights and bias) is matched "
        "to a reference filter by cosine similarity with the Hungarian method "
        "(`samples/finetune/reference_match.py`); wiring never permutes a filter's input "
        "side, so no data is needed. Victims and references: `samples/finetune/descent.py`.",
        "",
        "```",
        "nice -n 19 python -m samples.finetune.descent --part match",
        "nice -n 19 python -m samples.finetune.descent --data 0.01 --part checkpoint",
        "nice -n 19 python -m samples.finetune.descent --data 0.1 --part checkpoint",
        "```",
        "",
        *match_lines(results),
    ]
    # The descended victim's arms sweep the learning rate on the first seed (descent.py's
    # default, for the time a shared CPU allows); a table keeps to one rule.
    by_data = {
        d: {k: v for k, v in arms.items() if k.startswith("desc-") or k == "scratch"}
        for d, arms in _by_data(results, every_seed=False).items()
    }
    by_data = {d: a for d, a in by_data.items() if any(k.startswith("desc-") for k in a)}
    if not by_data:
        return [*lines, "Fine-tuning arms against the descended victim: not measured yet.", ""]
    lines += [
        "Fine-tuning after matching, against the victim fine-tuned from the public checkpoint. "
        "The reference line is the attacker's best start without the public file (the higher "
        "of scratch and fine-tuning the checkpoint); the goal is 'within 1 SE' or worse. "
        "Learning rate swept on the first seed (picked on its held-out part) and reused for "
        "the other seeds, in every arm here. 'Unlike kernels taken from the checkpoint': "
        "after matching, every 3x3 kernel whose cosine with the checkpoint's kernel is "
        "under 0.5 is replaced by the checkpoint's (no key and no data needed; the lines "
        "after each table say how well that finds the masked kernels).",
        "",
    ]
    for data, arms in sorted(by_data.items()):
        ref = _best_without(arms)
        lines += arm_table(arms, _DESC, ref, data)
        lines += [
            f"Reference line: {'scratch' if ref == 'scratch' else 'fine-tune the checkpoint'}.",
            "",
            *_verdicts(arms, ref),
        ]
        restores = [a for a in arms.values() if "replaced_kernels" in a]
        if restores:
            lines += ["How the restore found the masked kernels (no key, no data):", ""]
        for arm in sorted(restores, key=lambda a: (a.get("tool", False), a["fraction"])):
            if "replaced_kernels" in arm:
                lines.append(
                    f"- {100 * arm['fraction']:g}% masks: {100 * arm['replaced_kernels']:.2f}% of "
                    f"the kernels replaced, {100 * arm['replaced_truly_masked']:.1f}% of those "
                    f"truly masked; {100 * arm['masked_found']:.1f}% of the masked kernels found."
                )
        lines.append("")
    return lines


def _verdicts(arms: Arms, ref: str) -> list[str]:
    """Per public file, its strongest recovery against the best start without it (the
    goal: within 1 SE or worse). A file matched 100% to today's at the same budget is
    that file, weight for weight, so their recoveries are pooled."""
    base = arms[ref]
    groups: dict[tuple[bool, float], list[dict[str, Any]]] = {}
    for name, arm in arms.items():
        if name.startswith("desc-") and name != "desc-checkpoint":
            tool = "tool-" in name
            groups.setdefault((tool, float(arm.get("fraction", 0.0))), []).append(arm)
    out = []
    for (tool, f), group in sorted(groups.items()):
        best = max(group, key=lambda a: a["mean"])
        d, se = best["mean"] - base["mean"], math.hypot(best["se"], base["se"])
        what = (
            f"the tool's wiring mode ({100 * f:g}% budget)"
            if tool
            else (f"today's file / wiring over {100 * f:g}% masks" if f else "wiring alone")
        )
        verdict = "meets the goal" if d <= se else "does not meet the goal"
        out.append(
            f"- {what}: strongest recovery ends at {pct(best['mean'], best['se'])}, "
            f"{100 * d:+.1f} ± {100 * se:.1f} points: **{verdict}**."
        )
    return ["Per public file, its strongest recovery measured here:", "", *out, ""]


def write() -> None:
    """Render into BENCHMARKS.md (after issue 15's section)."""
    update_section(BENCHMARKS, "finetune-23", render(), after="finetune")
    print(f"wrote the issue 23 section of {BENCHMARKS}")


def _twin(arm: Mapping[str, Any]) -> str:
    """A note on an arm whose start is bit-identical to another's (its runs are those)."""
    if "identical_start_to" not in arm:
        return ""
    return " (after the 100% match, weight for weight today's file: the same runs)"


def _loss(recovery: Mapping[str, Any]) -> str:
    history = recovery.get("loss_history")
    return f"{history[0]:.3f} -> {history[-1]:.3f}" if history else "–"
