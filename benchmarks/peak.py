"""Peak resident memory of one operation, in a fresh process.

``python -m benchmarks.peak '<json>'`` imports the same modules for every task (so
the import footprint is equal), records the resident set, performs the one task the
JSON names, and prints ``{"peak_mb": ..., "imports_mb": ..., "hwm_mb": ...,
"seconds": ..., "cpu_seconds": ...}``: ``ru_maxrss``, the resident set after the
imports, ``VmHWM``, and the task's wall and process CPU time.

Start it through :func:`spawn`: Linux carries ``ru_maxrss`` across ``fork`` +
``exec`` (a child exec'd straight from the benchmark would report at least the
benchmark's own size), so it goes through a small shell that forks it.

Tasks (``"task"`` in the JSON):

- ``plain``: ``onnxruntime.InferenceSession(model)``;
- ``load``: ``onnx_selenc.load_session(model, key=key)`` at the key's level, or at
  ``"level"`` when the JSON gives one;
- ``whole``: the whole-file AES-GCM baseline (``benchmarks.wholefile.load_session``);
- ``encrypt``: ``onnx_selenc.encrypt(model, out, key_file=...)`` (data-free defaults);
- ``load_save``: ``onnx.load(model)`` then ``onnx.save`` (external data when the
  input has it).
"""

from __future__ import annotations

import json
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any


def _rss_mb() -> float:
    """Current resident set in MB (from /proc; ru_maxrss only gives the peak)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run(spec: dict[str, Any]) -> dict[str, float]:
    """Perform one task; return the peak and the footprint of the imports, in MB."""
    import numpy as np  # noqa: F401  (all tasks pay for the same imports)
    import onnx
    import onnxruntime as ort

    import onnx_selenc as se
    from benchmarks import wholefile

    ort.set_default_logger_severity(3)
    warnings.simplefilter("ignore")
    imports_mb = _rss_mb()
    task, model = spec["task"], Path(spec["model"])
    providers = spec.get("providers")
    keep: object = None  # the result stays alive until the peak is read
    start, start_cpu = time.perf_counter(), time.process_time()
    if task == "plain":
        keep = ort.InferenceSession(str(model), providers=providers)
    elif task == "load":
        keep = se.load_session(model, key=spec["key"], level=spec.get("level"), providers=providers)
    elif task == "whole":
        keep = wholefile.load_session(model, bytes.fromhex(spec["aes_key"]), providers)
    elif task == "encrypt":
        out = Path(spec["out"])
        se.encrypt(model, out / model.name, key_file=out / "owner.key", seed=0)
    elif task == "load_save":
        out = Path(spec["out"])
        loaded = onnx.load(str(model))
        if spec.get("external"):
            onnx.save(
                loaded,
                str(out / model.name),
                save_as_external_data=True,
                location=model.name + ".data",
            )
        else:
            onnx.save(loaded, str(out / model.name))
        keep = loaded
    else:
        raise ValueError(f"unknown task {task!r}")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    del keep
    return {
        "peak_mb": peak_mb,
        "imports_mb": imports_mb,
        "hwm_mb": _hwm_mb(),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


def _hwm_mb() -> float:
    """VmHWM: the peak resident set of this address space (a cross-check of ru_maxrss)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def spawn(spec: dict[str, Any], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Run one task in a fresh interpreter whose ``ru_maxrss`` starts from zero.

    ``sh`` is forked from this (large) process and inherits its peak, but the
    interpreter it forks in turn starts from the shell's small one.

    Raises:
        RuntimeError: the child failed.
    """
    import subprocess

    cmd = ["/bin/sh", "-c", '"$0" "$@"', sys.executable, "-m", "benchmarks.peak", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"peak child {spec['task']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    """Entry point: one JSON argument in, one JSON line out."""
    print(json.dumps(run(json.loads(sys.argv[1]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
