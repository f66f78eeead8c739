"""Shared by the fine-tuning report modules: reading the cached arms, formatting cells.

An arm is one JSON file named ``d<data>-<config hash>-<arm>.json`` (the attack settings
it ran under are hashed into its name and stored in it); nothing here measures anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from samples.finetune import harness
from samples.paper import _common

NAME = re.compile(r"^d(?P<data>[0-9.e-]+)-(?P<cfg>[0-9a-f]{12})-(?P<arm>.+)\.json$")

Found = dict[tuple[float, str], tuple[harness.AttackConfig, dict[str, Any]]]
Selection = dict[float, tuple[harness.AttackConfig, dict[str, Any]]]


def load_arms(folder: Path, configs: list[harness.AttackConfig] | None = None) -> Found:
    """Arms in ``folder``: (data share, settings hash) -> (attack settings, name -> result).

    With ``configs``, only arms measured under one of them; without, every arm, its
    settings read from the file itself.
    """
    by_hash = {_common.config_hash(harness.config_dict(c)): c for c in configs or []}
    found: Found = {}
    for path in sorted(folder.glob("*.json")):
        m = NAME.match(path.name)
        got = _common.read_json(path)
        if m is None or got is None:
            continue
        if configs is not None:
            if m["cfg"] not in by_hash:
                continue
            config = by_hash[m["cfg"]]
        else:
            saved = dict(got["config"])
            saved["lrs"], saved["seeds"] = tuple(saved["lrs"]), tuple(saved["seeds"])
            config = harness.AttackConfig(**saved)
        key = (float(m["data"]), m["cfg"])
        found.setdefault(key, (config, {}))[1][m["arm"]] = got
    return found


def rule(config: harness.AttackConfig) -> str:
    return "per seed" if config.sweep_every_seed else "first seed"


def pct(mean: float, se: float | None = None) -> str:
    return f"{100 * mean:.1f}%" if se is None else f"{100 * mean:.1f} ± {100 * se:.1f}"


def delta(arm: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """Difference to the scratch line in points, with the SE of the difference, and
    whether it is within one SE (the issue's bar for 'no better than scratch')."""
    d = arm["mean"] - ref["mean"]
    se = math.hypot(arm["se"], ref["se"])
    verdict = "within 1 SE" if abs(d) <= se else ("better" if d > 0 else "worse")
    return f"{100 * d:+.1f} ± {100 * se:.1f} ({verdict})"


def steps(arm: Mapping[str, Any]) -> str:
    runs = arm["runs"]
    mean_steps = sum(r["best_step"] for r in runs) / len(runs)
    return f"{mean_steps:.0f}"


def lrs(arm: Mapping[str, Any]) -> str:
    return ", ".join(f"{r['lr']:g}" for r in arm["runs"])


def train_seconds(arm: Mapping[str, Any]) -> float:
    """Seconds of training the arm itself ran (runs reused from another arm not counted)."""
    tries = arm.get("sweeps") or [arm["sweep"], *[[r] for r in arm["runs"][1:]]]
    return sum(t["seconds"] for seed in tries for t in seed if not t.get("reused"))
