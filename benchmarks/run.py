"""Benchmark suite: onnx-selenc against plain ONNX Runtime and whole-file AES-GCM.

Usage::

    python -m benchmarks.run [--quick] [--repeats N] [--models NAME ...]
                             [--providers PROVIDER ...] [--no-data-driven]
                             [--no-write] [--json PATH] [--output BENCHMARKS.md]
    python -m benchmarks.run --render benchmarks/results/perf.json [--no-write]

For each model it measures, side by side in one process and interleaving the variants
in every repetition (so load from other jobs hits all of them alike):

- session build: plain ``InferenceSession(path)``, the whole-file AES-GCM baseline
  (read + decrypt + ``InferenceSession(bytes)``), and ``load_session`` at level 0, a
  middle level and the top level;
- inference latency of the restored session against the plain one (one fixed input;
  outputs must be bit-identical at the top level);
- encryption time, data-free and data-driven, against ``onnx.load`` + ``onnx.save``;
- peak resident memory (``ru_maxrss``) of each operation in a fresh child process.

It rewrites only the generated sections of BENCHMARKS.md (``<!-- perf-*:begin -->``
to ``<!-- perf-*:end -->``; the explanations between them are hand-written and stay),
then prints that part of the file. ``--quick`` skips the model over 2 GB and takes
fewer repetitions; ``--render`` measures nothing and renders a file ``--json`` wrote.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks import models as bench_models
from benchmarks import report
from benchmarks.perf import render
from benchmarks.perf.machine import load_average, machine
from benchmarks.perf.measure import bench_model
from benchmarks.perf.results import ROOT, Run, Settings, read_json, write_json


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, rewrite the perf sections of BENCHMARKS.md, print them.

    Args:
        argv: the command line without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 1 when no model was measured.
    """
    args = _parser().parse_args(argv)
    if args.render:
        return rerender(args.render, args.output, write=not args.no_write)

    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # every session alike: no warning spam on stderr
    settings = Settings(
        repeats=args.repeats or (3 if args.quick else 15),
        encrypt_repeats=2 if args.quick else 3,
        inference_seconds=2.0 if args.quick else 5.0,
        providers=args.providers,
        quick=args.quick,
        data_driven=not args.no_data_driven,
    )
    names = args.models or [
        n for n in bench_models.ALL_MODELS if not (args.quick and n == "huge_2gb")
    ]
    info = machine()
    command = _command(args)
    results = []
    for name in names:
        bm = bench_models.get_model(name)
        if name == "huge_2gb":
            free = shutil.disk_usage(tempfile.gettempdir()).free
            if free < 3 * bm.size_bytes:
                print(
                    f"skipping {name}: {free / 1e9:.1f} GB free in {tempfile.gettempdir()}",
                    file=sys.stderr,
                )
                continue
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            results.append(bench_model(bm, settings, Path(tmp)))
        if args.json:  # after every model: a crash later keeps what was measured
            write_json(args.json, Run(info, "?", command, settings, results))
    if not results:
        return 1
    run = Run(info, load_average(), command, settings, results)
    if args.json:
        write_json(args.json, run)
    publish(run, args.output, write=not args.no_write)
    return 0


def rerender(path: Path, output: Path, *, write: bool) -> int:
    """Render the sections again from saved samples, without measuring anything.

    For after editing the rendering or the improvements table.

    Args:
        path: a results file ``--json`` wrote.
        output: the Markdown file whose perf sections are rewritten.
        write: rewrite ``output`` (else only print).

    Returns:
        The exit status.
    """
    publish(read_json(path), output, write=write)
    return 0


def publish(run: Run, output: Path, *, write: bool) -> None:
    """Print the perf part of ``output`` as it reads with ``run``'s sections; write it.

    Args:
        run: what to render.
        output: the Markdown file; where it lacks a section, the section is appended.
        write: rewrite the sections of ``output`` (else only print).
    """
    sections = render.sections(run)
    text = output.read_text(encoding="utf-8") if output.exists() else ""
    print(report.span(report.replace_sections(text, sections), list(sections)))
    if write:
        report.write_sections(output, sections)


def _parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="skip the model over 2 GB; fewer repetitions"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="session-build repetitions (default 15; 3 quick; at most 3 on the model over 2 GB)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=bench_models.ALL_MODELS,
        metavar="NAME",
        help=f"any of: {', '.join(bench_models.ALL_MODELS)}",
    )
    parser.add_argument(
        "--providers",
        nargs="+",
        metavar="PROVIDER",
        help="execution providers for every session (default: ONNX Runtime's)",
    )
    parser.add_argument(
        "--no-data-driven",
        action="store_true",
        help="skip the data-driven encryption (minutes per model)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: render (and write) the sections from a file --json wrote",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "BENCHMARKS.md",
        help="the Markdown file whose perf sections are rewritten",
    )
    return parser


def _command(args: argparse.Namespace) -> str:
    """The command line, with only the options that change what is measured."""
    parts = ["python -m benchmarks.run"]
    if args.quick:
        parts.append("--quick")
    if args.repeats:
        parts.append(f"--repeats {args.repeats}")
    if args.models:
        parts.append("--models " + " ".join(args.models))
    if args.providers:
        parts.append("--providers " + " ".join(args.providers))
    if args.no_data_driven:
        parts.append("--no-data-driven")
    return " ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
