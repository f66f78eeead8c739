"""The generated sections of BENCHMARKS.md's performance part, from results alone.

:func:`sections` returns one Markdown body per ``<!-- NAME:begin/end -->`` pair, in
document order. Each holds only what a run computes: tables, and the sentences that
quote its figures or the constants it ran with. The explanations beside them are
plain text in BENCHMARKS.md, outside the markers, so a new run does not erase them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from benchmarks import models as bench_models
from benchmarks.perf.results import (
    BIG_BUILD_REPEATS,
    BIG_ENCRYPT_REPEATS,
    BUDGET,
    CALIBRATION_SAMPLES,
    DATA_DRIVEN_RUNS,
    LEVELS,
    MIDDLE,
    ModelResult,
    Run,
)
from benchmarks.report import ratio, table

GOAL_LOAD = 1.10
GOAL_INFERENCE = 0.02
GOAL_ENCRYPT = 2.0
GOAL_MEMORY = 1.5
LOW_PERCENTILE = 10
# The VGG19-size model carries the encryption goal; the model over 2 GB no load goal.
VGG = "vgg19_cifar"
HUGE = "huge_2gb"
IMPROVEMENTS = Path(__file__).resolve().parents[1] / "improvements.json"


def sections(run: Run) -> dict[str, str]:
    """Every generated section of the performance part, in document order.

    Args:
        run: the measurements, the machine and the settings they were taken with.

    Returns:
        Section name (the marker's ``NAME``) to its Markdown body.
    """
    results = run.results
    return {
        "perf-setup": setup(run),
        "perf-models": models(),
        "perf-build": build_table(results),
        "perf-build-cpu": build_cpu_table(results),
        "perf-inference": inference_table(results),
        "perf-encrypt": encryption(results),
        "perf-memory": memory_table(results),
        "perf-notes": notes(run),
        "perf-goals": goals(results),
        "perf-reasons": reasons(results),
        "perf-improvements": improvements(),
    }


def setup(run: Run) -> str:
    """The machine and the command of the run, with the repetitions it took."""
    info, settings = run.machine, run.settings
    big_builds = max(1, min(settings.repeats, BIG_BUILD_REPEATS))
    providers = ", ".join(settings.providers) if settings.providers else "default"
    return "\n".join(
        [
            f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']} RAM (load "
            f"average {info['load']} at the start, {run.load_after} at the end). "
            f"Python {info['python']}, onnx {info['onnx']}, onnxruntime {info['onnxruntime']}, "
            f"numpy {info['numpy']}, cryptography {info['cryptography']}. "
            f"Providers: {providers}.",
            "",
            f"Command: `{run.command}` ({settings.repeats} repetitions of each session build; "
            f"{settings.encrypt_repeats} of each data-free encryption and of load + save, "
            f"{_spelled(DATA_DRIVEN_RUNS)} data-driven encryption; on the model over 2 GB, "
            f"{big_builds} builds, each in a fresh process, and {BIG_ENCRYPT_REPEATS} "
            "encryption).",
        ]
    )


def models() -> str:
    """The synthetic models' shapes, and the encryption every model gets.

    The shapes come from the constants ``benchmarks.models`` builds the models by.
    """
    widths = [c for c in bench_models.VGG19_CFG if isinstance(c, int)]
    side = bench_models.HUGE_SPATIAL
    return "\n".join(
        [
            f"`vgg19_cifar`: {len(widths)} conv layers (3x3), {min(widths)}..{max(widths)} "
            f"channels; `huge_2gb`: {bench_models.HUGE_LAYERS} conv layers (3x3) at width "
            f"{bench_models.HUGE_WIDTH} on a {side}x{side} input.",
            "",
            f"All encrypted with the defaults: {LEVELS} levels, budget {BUDGET:g}, magnitude "
            f"importance, balanced allocation; the middle level is {MIDDLE}.",
        ]
    )


def build_table(results: Sequence[ModelResult]) -> str:
    """Session-build wall times, with the ratios the goals compare."""
    rows = []
    for r in results:
        b = r.build
        top, plain = b[f"L{LEVELS}"].median, b["plain"].median
        whole = b["whole-file"].median if "whole-file" in b else None
        rows.append(
            [
                r.name,
                f"{r.size_mb:.1f}",
                b["plain"].ms(),
                b["whole-file"].ms() if "whole-file" in b else "n/a",
                b["L0"].ms(),
                b[f"L{MIDDLE}"].ms(),
                b[f"L{LEVELS}"].ms(),
                ratio(top, plain),
                ratio(whole, plain),
                ratio(top, whole),
                b["gmac"].ms() if "gmac" in b else "n/a",
                b["sha256"].ms(),
            ]
        )
    header = ["model", "MB", "plain", "whole-file", "L0", f"L{MIDDLE}", f"L{LEVELS} (top)"]
    header += ["top / plain", "whole-file / plain", "top / whole-file"]
    return table([*header, "tag check (GMAC)", "SHA-256 pass"], rows)


def build_cpu_table(results: Sequence[ModelResult]) -> str:
    """Process CPU time of the same session builds."""
    rows = []
    for r in results:
        c = r.build_cpu
        whole = c["whole-file"].median if "whole-file" in c else None
        rows.append(
            [
                r.name,
                c["plain"].ms(),
                c["whole-file"].ms() if "whole-file" in c else "n/a",
                c["L0"].ms(),
                c[f"L{MIDDLE}"].ms(),
                c[f"L{LEVELS}"].ms(),
                ratio(c[f"L{LEVELS}"].median, c["plain"].median),
                ratio(c[f"L{LEVELS}"].median, whole),
            ]
        )
    header = ["model", "plain", "whole-file", "L0", f"L{MIDDLE}", f"L{LEVELS} (top)"]
    return table([*header, "top / plain", "top / whole-file"], rows)


def inference_table(results: Sequence[ModelResult]) -> str:
    """Inference latency of the restored session against the plain one, and its outputs."""
    rows = []
    for r in results:
        p, q = r.inference["plain"], r.inference["restored"]
        pc, qc = r.inference["plain cpu"], r.inference["restored cpu"]
        rows.append(
            [
                r.name,
                str(len(p.samples)),
                p.ms(),
                q.ms(),
                ratio(q.median, p.median),
                ratio(q.percentile(LOW_PERCENTILE), p.percentile(LOW_PERCENTILE)),
                ratio(qc.median, pc.median),
                "yes" if r.outputs_equal else "**NO**",
                "yes" if r.level0_differs else "no",
                _providers(r.providers_used),
            ]
        )
    header = ["model", "runs", "plain", "restored (top)", "ratio (medians)"]
    header += [f"ratio ({LOW_PERCENTILE}th percentiles)", "ratio (CPU time, medians)"]
    header += ["top output = plain, bit for bit", "level 0 output differs", "providers used"]
    return table(header, rows)


def encryption(results: Sequence[ModelResult]) -> str:
    """Encryption times against load + save, and the calibration each model got."""
    rows = []
    for r in results:
        e = r.encrypt
        ls = e["load+save"].median
        driven = "data-driven" in e
        rows.append(
            [
                r.name,
                e["load+save"].seconds(),
                e["data-free"].seconds(),
                ratio(e["data-free"].median, ls),
                e["data-driven"].seconds() if driven else "n/a",
                ratio(e["data-driven"].median, ls) if driven else "n/a",
            ]
        )
    header = ["model", "onnx.load + onnx.save", f"data-free (budget {BUDGET:g})", "ratio"]
    shapes = ", ".join(f"{r.name} {r.calibration}" for r in results if r.calibration)
    return "\n".join(
        [
            table([*header, "data-driven (calibration)", "ratio"], rows),
            "",
            f"Data-driven: `Calibration({{input: {CALIBRATION_SAMPLES} random normal "
            f"inputs}})`; calibration shapes: {shapes or 'none'}.",
        ]
    )


def memory_table(results: Sequence[ModelResult]) -> str:
    """Peak resident memory of each operation in a fresh process."""
    rows = []
    for r in results:
        m = r.memory
        plain, imports = m["plain"].median, m["plain (imports)"].median
        load = m["load_session"].median
        rows.append(
            [
                r.name,
                f"{imports:.0f}",
                f"{plain:.0f}",
                f"{m['whole-file'].median:.0f}" if "whole-file" in m else "n/a",
                f"{load:.0f}",
                ratio(load, plain),
                ratio(load - imports, plain - imports),
                f"{m['load+save'].median:.0f}",
                f"{m['encrypt'].median:.0f}",
                ratio(m["encrypt"].median, m["load+save"].median),
            ]
        )
    header = ["model", "imports", "plain session", "whole-file", "load_session"]
    header += ["load / plain", "load / plain above imports", "onnx.load + save", "encrypt"]
    return table([*header, "encrypt / load+save"], rows)


def notes(run: Run) -> str:
    """What was not measured, and why (empty when everything was)."""
    lines = [f"- {r.name}: {n}" for r in run.results for n in r.notes]
    if not run.settings.data_driven:
        lines.append("- data-driven encryption not run (`--no-data-driven`)")
    return "\n".join(["Notes:", "", *lines]) if lines else ""


def goals(results: Sequence[ModelResult]) -> str:
    """The issue's goals, each with its measured value."""
    rows = []
    for r in results:
        if r.name == HUGE:
            continue
        b = r.build
        top, plain = b[f"L{LEVELS}"].median, b["plain"].median
        goal = f"load_session top / plain <= {GOAL_LOAD:.2f}"
        rows.append([goal, r.name, f"{top / plain:.2f}", _ok(top / plain <= GOAL_LOAD)])
        if "whole-file" in b:
            whole = b["whole-file"].median
            rows.append(
                ["load_session top <= whole-file", r.name, f"{top / whole:.2f}", _ok(top <= whole)]
            )
    for r in results:
        q = r.inference["restored"].median / r.inference["plain"].median
        goal = f"inference after load / plain = 1.00 +- {GOAL_INFERENCE:.2f}"
        rows.append([goal, r.name, f"{q:.3f}", _ok(abs(q - 1) <= GOAL_INFERENCE)])
    for r in results:
        if r.name == VGG:
            e = r.encrypt["data-free"].median / r.encrypt["load+save"].median
            goal = f"data-free encryption / (onnx.load + onnx.save) <= {GOAL_ENCRYPT:g}"
            rows.append([goal, r.name, f"{e:.2f}", _ok(e <= GOAL_ENCRYPT)])
    for r in results:
        m = r.memory["load_session"].median / r.memory["plain"].median
        goal = f"peak memory load_session / plain session <= {GOAL_MEMORY:g}"
        rows.append([goal, r.name, f"{m:.2f}", _ok(m <= GOAL_MEMORY)])
    return table(["goal", "model", "measured", "met"], rows)


def reasons(results: Sequence[ModelResult]) -> str:
    """This run's figures for the explanations of missed goals (written beside them)."""
    by_name = {r.name: r for r in results}
    small = [r for r in results if r.name not in (VGG, HUGE)]
    lines = []
    if small:
        extra = [r.build[f"L{LEVELS}"].median - r.build["plain"].median for r in small]
        plains = [r.build["plain"].median for r in small]
        cpu = [r.build_cpu[f"L{LEVELS}"].median / r.build_cpu["plain"].median for r in small]
        lines.append(
            f"- Session build, small models: {1000 * min(extra):.0f} to "
            f"{1000 * max(extra):.0f} ms more than a plain build of {1000 * min(plains):.0f} "
            f"to {1000 * max(plains):.0f} ms; in process CPU time {min(cpu):.2f} to "
            f"{max(cpu):.2f}x plain."
        )
    vgg = by_name.get(VGG)
    if vgg is not None:
        b, c = vgg.build, vgg.build_cpu
        wall = b[f"L{LEVELS}"].median / b["plain"].median
        cpu_v = c[f"L{LEVELS}"].median / c["plain"].median
        tag = f"; tag check {ratio(b['gmac'].median, b['sha256'].median)}x a SHA-256 pass"
        lines.append(
            f"- Session build, {vgg.name} ({vgg.size_mb:.0f} MB): {wall:.2f}x plain in wall "
            f"time, {cpu_v:.2f}x in CPU time{tag if 'gmac' in b else ''}."
        )
    huge = by_name.get(HUGE)
    if huge is not None and "L0 build" in huge.memory:
        b, m = huge.build, huge.memory
        levels = [f"L{level}" for level in (0, MIDDLE, LEVELS) if f"L{level}" in b]
        lines.append(
            f"- Session build, {huge.name} ({huge.size_mb / 1000:.1f} GB): "
            + ", ".join(f"{v} {b[v].median:.1f} s" for v in levels)
            + f" against {b['plain'].median:.1f} s plain ("
            + ", ".join(f"{v} {ratio(b[v].median, b['plain'].median)}x" for v in levels)
            + "); peak resident memory of those builds: plain "
            + f"{m['plain build'].median:.0f} MB, "
            + ", ".join(f"{v} {m[v + ' build'].median:.0f} MB" for v in levels)
            + "."
        )
    off = [
        (r.name, r.inference["restored cpu"].median / r.inference["plain cpu"].median)
        for r in results
        if abs(r.inference["restored"].median / r.inference["plain"].median - 1) > GOAL_INFERENCE
        and "restored cpu" in r.inference
    ]
    if off:
        lines.append(
            f"- Inference, wall-time ratio off 1.00 by more than {GOAL_INFERENCE:.2f}; CPU time "
            "restored / plain: " + ", ".join(f"{name} {q:.2f}" for name, q in off) + "."
        )
    if vgg is not None:
        free, ls = vgg.encrypt["data-free"].median, vgg.encrypt["load+save"].median
        lines.append(
            f"- Data-free encryption, {vgg.name}: {free:.2f} s against {ls:.2f} s for "
            "`onnx.load` + `onnx.save`."
        )
    return "\n".join(["This run's figures for the list above:", "", *lines]) if lines else ""


def improvements(path: Path = IMPROVEMENTS) -> str:
    """The before/after table kept in ``benchmarks/improvements.json``.

    Args:
        path: the JSON file (``intro`` and ``improvements``: change, figure, before, after).

    Returns:
        Its intro and table; empty where the file is missing.
    """
    if not path.exists():
        return ""
    doc = json.loads(path.read_text(encoding="utf-8"))
    rows = [[e["change"], e["figure"], e["before"], e["after"]] for e in doc["improvements"]]
    return "\n".join(
        [doc.get("intro", ""), "", table(["change", "figure", "before", "after"], rows)]
    )


def _providers(used: dict[str, list[str]]) -> str:
    """The providers the sessions really run on (both, where they differ)."""
    plain, loaded = used.get("plain", []), used.get("load_session", [])
    if plain == loaded:
        return ", ".join(loaded)
    return f"plain: {', '.join(plain)}; load_session: {', '.join(loaded)}"


def _ok(flag: bool) -> str:
    """A goal's ``met`` cell."""
    return "yes" if flag else "**no**"


def _spelled(n: int) -> str:
    """Small counts in words, as the setup line reads best (``one``), others as digits."""
    return {1: "one", 2: "two", 3: "three"}.get(n, str(n))
