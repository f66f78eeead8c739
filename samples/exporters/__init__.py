"""Scripts that export small ONNX models with real exporters, for the conformance corpus.

Each module exports one framework's (or tool's) output; a module may offer several
variants. Every script is deterministic (fixed seeds) and writes one ``.onnx`` file
(plus its external data where the variant makes some)::

    python -m samples.exporters.<module> <variant> <output.onnx>

:func:`export` runs a script in a fresh interpreter (exporters print a lot and load heavy
frameworks) and raises with its output when it fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXPORTERS = (
    "torch_dynamo",
    "torch_legacy",
    "tf2onnx_keras",
    "ort_quantize",
    "fp16",
    "ort_optimize",
    "spox_cnn",
    "helper_edge",
    "torch_legacy_edges",
    "onnx_tools",
)


def script(module: str) -> Path:
    """The source file of an exporter module."""
    if module not in EXPORTERS:
        raise KeyError(f"unknown exporter {module!r}; known: {', '.join(EXPORTERS)}")
    return Path(__file__).with_name(f"{module}.py")


def export(module: str, variant: str, output: Path, *, timeout: float = 900) -> None:
    """Run ``python -m samples.exporters.<module> <variant> <output>``; raise if it fails."""
    script(module)  # validates the name
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", f"samples.exporters.{module}", variant, str(output)]
    proc = subprocess.run(
        cmd, cwd=root, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0 or not output.is_file():
        tail = (proc.stderr + proc.stdout).strip()[-3000:]
        raise RuntimeError(f"exporter {module} {variant} failed (exit {proc.returncode}):\n{tail}")
