"""The command line the side-by-side cost benchmarks share (``benchmarks.wiring``,
``benchmarks.base_cost``): measure each model in a scratch folder, print the section,
and write the results and the BENCHMARKS.md section unless ``--no-write``."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.perf.machine import machine
from benchmarks.perf.results import ROOT
from samples._report import update_section


@dataclass(frozen=True)
class CostStudy:
    """What one cost benchmark measures and where its results go."""

    description: str
    models: Sequence[str]
    measure: Callable[[str, int, Path], dict[str, Any]]
    section: Callable[[Sequence[dict[str, Any]], dict[str, str], int], str]
    results: Path
    marker: str  # its BENCHMARKS.md section
    after: str  # the section it follows where it is new


def main(study: CostStudy, argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=study.description)
    p.add_argument("--models", nargs="+", default=list(study.models))
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    rows = []
    start = time.perf_counter()
    for name in args.models:
        print(f"{name} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix=f"selenc-{study.marker}-") as tmp:
            rows.append(study.measure(name, args.repeats, Path(tmp)))
    facts = machine()
    text = study.section(rows, facts, args.repeats)
    print(text)
    print(f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    if not args.no_write:
        study.results.parent.mkdir(parents=True, exist_ok=True)
        study.results.write_text(json.dumps({"machine": facts, "rows": rows}, indent=1) + "\n")
        update_section(ROOT / "BENCHMARKS.md", study.marker, text, after=study.after)
    return 0
