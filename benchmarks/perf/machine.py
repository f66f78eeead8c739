"""The machine a run measured on, as the report's machine line states it."""

from __future__ import annotations

import contextlib
import os
import platform

import numpy as np


def machine() -> dict[str, str]:
    """CPU model, cores, memory, load average and versions, as the report states them."""
    import cryptography
    import onnx
    import onnxruntime

    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2**20:.0f} GiB"
                break
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return {
        "cpu": cpu,
        "cores": f"{cores} ({usable} usable)",
        "memory": memory,
        "load": load_average(),
        "python": platform.python_version(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "cryptography": cryptography.__version__,
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, or ``?`` where the system gives none."""
    try:
        return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    except OSError:
        return "?"
