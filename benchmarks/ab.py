"""Before/after: the same figures for another revision of onnx_selenc, run alternately.

``python -m benchmarks.ab --before REV [--models NAME ...] [--rounds N]``

Exports ``onnx_selenc`` as it was at git revision ``REV`` into a temporary folder and
measures, for it and for the working tree in turn (alternating child processes, so
load from other jobs hits both alike): ``load_session`` at the top level (session
build, median of a few builds per child; not with ``--encrypt-only``), data-free
``encrypt`` (wall and CPU time), and the peak resident memory of each
(``benchmarks.peak``). The encrypted files are made once by
each implementation itself (the format may differ). This is how the improvements table in
BENCHMARKS.md was measured; it prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import models as bench_models
from benchmarks import peak

ROOT = Path(__file__).resolve().parents[1]
BUILDS_PER_CHILD = 5


def _env(impl_root: Path) -> dict[str, str]:
    # The implementation's folder first, then the repository (benchmarks, samples).
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(impl_root), str(ROOT)])}


def _child(spec: dict[str, Any], impl_root: Path) -> list[float]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ab", "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),  # not the repository: it would shadow impl_root
        env=_env(impl_root),
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(spec: dict[str, Any]) -> list[float]:
    """In the child: time the task with whichever onnx_selenc comes first on the path."""
    import onnxruntime as ort

    import onnx_selenc as se

    ort.set_default_logger_severity(3)
    warnings.simplefilter("ignore")
    if spec["task"] == "make":  # the encrypted file this implementation will load
        out = Path(spec["out"])
        se.encrypt(
            spec["model"],
            out / Path(spec["model"]).name,
            key_file=out / "k.key",
            options=se.EncryptOptions(seed=0),
        )
        return []
    if spec["task"] == "load":
        se.load_session(spec["model"], key=spec["key"], providers=["CPUExecutionProvider"])
        times = []
        for _ in range(BUILDS_PER_CHILD):
            start = time.perf_counter()
            se.load_session(spec["model"], key=spec["key"], providers=["CPUExecutionProvider"])
            times.append(time.perf_counter() - start)
        return times
    out = Path(tempfile.mkdtemp())
    start, cpu = time.perf_counter(), time.process_time()
    se.encrypt(
        spec["model"],
        out / Path(spec["model"]).name,
        key_file=out / "k.key",
        options=se.EncryptOptions(seed=0),
    )
    # CPU time of every thread of the process too: other jobs stretch wall time far more.
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    subprocess.run(["rm", "-rf", str(out)], check=False)
    return [elapsed, cpu]


def main(argv: Sequence[str] | None = None) -> int:
    """Measure before and after, alternately; print one JSON line per figure."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--before", help="git revision to compare with")
    parser.add_argument(
        "--models", nargs="+", default=["vgg19_cifar"], choices=bench_models.ALL_MODELS
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--encrypt-only", action="store_true", help="only the encryption figures (no loads)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if not args.before:
        parser.error("--before is required")

    with tempfile.TemporaryDirectory(prefix="ab-") as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(
            ["git", "archive", args.before, "onnx_selenc"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        impls = {"before": before, "after": ROOT}
        for name in args.models:
            bm = bench_models.get_model(name)
            # Each implementation loads a file it encrypted itself (formats may differ).
            loads = {}
            for impl, root in impls.items() if not args.encrypt_only else ():
                enc_dir = Path(tmp) / name / impl
                enc_dir.mkdir(parents=True)
                _child({"task": "make", "model": str(bm.path), "out": str(enc_dir)}, root)
                loads[impl] = {
                    "task": "load",
                    "model": str(enc_dir / bm.path.name),
                    "key": str(enc_dir / "k.key"),
                }
            encrypt = {"task": "encrypt", "model": str(bm.path)}
            figures: dict[str, dict[str, list[float]]] = {}
            big = bm.size_bytes > 2**31
            rounds = 1 if big else args.rounds
            for rnd in range(rounds):
                order = list(impls) if rnd % 2 == 0 else list(impls)[::-1]
                for impl in order:
                    root = impls[impl]
                    f = figures.setdefault(impl, {})
                    load = loads.get(impl)
                    if load is not None:
                        f.setdefault("load_s", []).append(statistics.median(_child(load, root)))
                    wall, cpu = _child(encrypt, root)
                    f.setdefault("encrypt_s", []).append(wall)
                    f.setdefault("encrypt_cpu_s", []).append(cpu)
                    if rnd == 0:
                        if load is not None:
                            spec = {**load, "task": "load", "providers": ["CPUExecutionProvider"]}
                            peak_mb = peak.spawn(spec, Path(tmp), _env(root))["peak_mb"]
                            f["load_peak_mb"] = [peak_mb]
                        out = Path(tmp) / f"out-{impl}"
                        out.mkdir(exist_ok=True)
                        spec = {**encrypt, "task": "encrypt", "out": str(out)}
                        f["encrypt_peak_mb"] = [peak.spawn(spec, Path(tmp), _env(root))["peak_mb"]]
                        subprocess.run(["rm", "-rf", str(out)], check=False)
            for figure in figures["before"]:
                row = {
                    "model": name,
                    "figure": figure,
                    **{impl: statistics.median(figures[impl][figure]) for impl in impls},
                    **{f"{impl}_all": figures[impl][figure] for impl in impls},
                }
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
