"""The conformance benchmark's table and BENCHMARKS.md section (:mod:`benchmarks.conformance`)."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import onnxruntime as ort

import onnx_selenc as se
from samples._report import machine

if TYPE_CHECKING:
    from benchmarks.conformance import Outcome

ROOT = Path(__file__).resolve().parents[1]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(outcomes: Sequence[Outcome]) -> str:
    lines = [
        "| model | source | made by | producer in file | opset "
        "| conv nodes (candidates / all) | owner's decrypt vs original file | result |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        convs = f"{o.conv_candidates} / {o.conv_total}"
        if o.conv_unsupported:
            convs += f" ({o.conv_unsupported} unsupported)"
        lines.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in (
                    o.name,
                    o.source,
                    o.made_by,
                    o.producer,
                    o.opset,
                    convs,
                    o.decrypted,
                    o.summary,
                )
            )
            + " |"
        )
    return "\n".join(lines)


def product_rev() -> str:
    """The git commit of the onnx_selenc being measured (and whether it has local edits)."""
    import subprocess

    folder = Path(se.__file__).resolve().parent

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    rev = git("rev-parse", "--short", "HEAD")
    if not rev:
        return "unknown commit"
    dirty = git("status", "--porcelain", "--", ".")
    return f"commit {rev}" + (" with uncommitted changes" if dirty else "")


def section(outcomes: Sequence[Outcome], seconds: float, rev: str) -> str:
    counts = collections.Counter(o.status for o in outcomes)
    producers = {o.made_by.split(" ")[0].split("/")[0].lower() for o in outcomes}
    steps = collections.Counter(o.step for o in outcomes if o.status == "FAIL")
    parts = [
        "## Conformance on real-world models (issue 11)",
        "",
        f"`python -m benchmarks.conformance`: {len(outcomes)} models "
        f"({len(producers)} producers) from PyPI wheels (`samples/conformance.json`) and "
        "from exporter scripts (`samples/exporters/`). Per model, through the public API: "
        "inspect; a plain ONNX Runtime run on one seeded batch; encrypt with 3 levels and "
        "budget 0.01; the encrypted file runs in plain ONNX Runtime with outputs that "
        "differ; the owner key restores every weight and the outputs bit for bit; tier "
        "keys 1 and 2 load and differ from the next tier; every conv node is a candidate "
        "or reported unsupported; `decrypt` with the owner key, and again after `rekey`, "
        "writes the model file and its external data files with the original's SHA-256 "
        "(compared file by file), unless encrypt said it could not (then the table says "
        "why). A refusal must leave no file behind.",
        "",
        f"**{counts['pass']} pass, {counts['refused']} refused before writing, "
        f"{counts['FAIL']} FAIL** "
        + (f"(first failing step: {', '.join(f'{s} {n}' for s, n in steps.most_common())}). "
           if steps else "")
        + f"onnx-selenc at {rev}. "
        f"Whole run {seconds:.0f} s on {machine()}, onnxruntime {ort.__version__}, "
        f"onnx {onnx.__version__}.",
        "",
        table(outcomes),
    ]  # fmt: skip
    return "\n".join(parts)
