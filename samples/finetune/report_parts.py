"""Issue 15's part tables (controls, mask placements, keyed wiring), for :mod:`report`.

Rendered from the cached arms only; an arm not measured is left out, never filled in.
"""

from __future__ import annotations

import json
from pathlib import Path

from samples.finetune.report_fmt import Selection, delta, pct, rule


def control_lines(selection: Selection) -> list[str]:
    """The 100%-point controls: which part of a fully encrypted file helps the attacker."""
    names = {
        "control-public-1-gemm-reinit": "100% public file, classifier (Gemm) re-initialised",
        "control-plain-conv-reinit": "plain file, every conv re-initialised (classifier kept)",
        "control-rescaled-random": "random: every layer Gaussian with the public file's "
        "per-layer std, zero biases",
    }
    rows = [(d, c, a) for d, (c, a) in sorted(selection.items())]
    if not rows:
        return []
    lines = [
        "Controls for the 100% point (today's method never encrypts the classifier). The "
        "last row starts from the scratch arm's own random draw (same seed), only rescaled "
        "to each layer's standard deviation in the public file, which training left close "
        "to Kaiming's: it carries no learned value or position, so its distance from the "
        "scratch row is a measure of how far the attacker's learning-rate pick and "
        "seed-to-seed noise alone move a result.",
        "",
        "| attacker data (lr sweep) | arm | before attack | after attack | vs scratch (points) |",
        "|---|---|---|---|---|",
    ]
    for data, config, a in rows:
        s = a.get("scratch")
        for key, label in (
            ("scratch", "from scratch (Kaiming, as above)"),
            ("public-1", "100% public file"),
            *names.items(),
        ):
            r = a.get(key)
            if r is None:
                continue
            lines.append(
                f"| {100 * data:g}% ({r['n']} digits; {rule(config)}) | {label} | "
                f"{pct(r['accuracy_before'])} "
                f"| {pct(r['mean'], r['se'])} | {delta(r, s) if s else '–'} |"
            )
    return [*lines, ""]


def placement_lines(selection: Selection) -> list[str]:
    """Hypothesis 2's table: mask placements other than scattered kernels."""
    rows = [
        (d, c, a, r)
        for d, (c, a) in sorted(selection.items())
        for k, r in sorted(a.items(), key=lambda kv: kv[1].get("masked_fraction", 0))
        if k.startswith("place-")
    ]
    if not rows:
        return ["### Where the masks go (hypothesis 2)", "", "Not measured.", ""]
    labels = {
        "filters": lambda r: f"whole filters, {100 * r['amount']:g}% of each layer's (+1)",
        "early": lambda r: f"every weight of the first {r['amount']:g} convs",
        "first-last": lambda r: "every weight of each stage's first and last conv",
    }
    lines = [
        "### Where the masks go (hypothesis 2)",
        "",
        "Public files made by `samples/finetune/placement.py` directly on the weights (these "
        "placements are not modes of `onnx_selenc`), masked values drawn from the same "
        "layer's weights like `masking='empirical'`. Compare with the curve at the same "
        "measured share.",
        "",
        "| attacker data (lr sweep) | placement | masked share of conv weights | before attack "
        "| after "
        "attack | vs scratch (points) |",
        "|---|---|---|---|---|---|",
    ]
    for data, config, arms, r in rows:
        s = arms.get("scratch")
        lines.append(
            f"| {100 * data:g}% ({r['n']} digits; {rule(config)}) | "
            f"{labels[r['placement']](r)} | "
            f"{100 * r['masked_fraction']:.2f}% | {pct(r['accuracy_before'])} | "
            f"{pct(r['mean'], r['se'])} | {delta(r, s) if s else '–'} |"
        )
    return [*lines, ""]


def wiring_lines(folder: Path, selection: Selection) -> list[str]:
    """The keyed-wiring table (hypothesis 3), if any of it was measured."""
    # A list, which _common.read_json (dicts only) would refuse.
    tiers_path = folder / "wiring-tiers.json"
    tiers = json.loads(tiers_path.read_text(encoding="utf-8")) if tiers_path.exists() else None
    rows = [(d, c, a) for d, (c, a) in sorted(selection.items())]
    if not rows and tiers is None:
        return ["### Keyed wiring (hypothesis 3)", "", "Not measured yet.", ""]
    lines = ["### Keyed wiring (hypothesis 3)", ""]
    lines += [
        "Public file: every conv's output channels (filters and biases) permuted by a secret "
        "permutation, the next layer's inputs left as they were, so every kernel keeps its "
        "true values (`samples/finetune/wiring.py`). Recovery attack: layer by layer from "
        "the input, match each channel's mean ReLU activation on the attacker's digits to "
        "the next layer's per-input-slot weight norm (rank matching); gradient recovery: "
        "per layer, the Hungarian solution of the first-order loss change of moving each "
        "filter into each slot (one backward pass on the attacker's labelled digits), kept "
        "when it lowers their loss, 4 rounds over the layers. Both see the first seed's "
        "attacker digits.",
        "",
    ]
    arms = (
        ("wired", "wired file as published"),
        ("wired-recovered", "after activation-rank recovery"),
        ("wired-recovered-grad", "after gradient (linearised loss) recovery"),
    )
    if rows:
        lines += [
            "| attacker data (lr sweep) | start | channels recovered | before attack | after "
            "attack | "
            "vs scratch (points) |",
            "|---|---|---|---|---|---|",
        ]
        for data, config, a in rows:
            s = a.get("scratch")
            for key, label in arms:
                r = a.get(key)
                if r is None:
                    continue
                rec = r.get("recovered_channels")
                lines.append(
                    f"| {100 * data:g}% ({r['n']} digits; {rule(config)}) | {label} | "
                    f"{'–' if rec is None else f'{100 * rec:.1f}%'} | "
                    f"{pct(r['accuracy_before'])} | {pct(r['mean'], r['se'])} | "
                    f"{delta(r, s) if s else '–'} |"
                )
        lines += [
            "",
            "'channels recovered': share of all conv output channels whose true position "
            "the attack found (chance is about one per layer).",
            "",
        ]
    if tiers is not None:
        lines += [
            "Tiers by layers restored (the first k convs' permutations undone, the rest "
            "left wired), held-out accuracy without any training:",
            "",
            "| layers restored | " + " | ".join(str(t["layers_restored"]) for t in tiers) + " |",
            "|---" * (len(tiers) + 1) + "|",
            "| accuracy | " + " | ".join(pct(t["accuracy"]) for t in tiers) + " |",
            "",
        ]
    return lines
