"""Shared by the benchmark scripts: the machine line and BENCHMARKS.md sections.

Each script owns one section of BENCHMARKS.md between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` and rewrites only that, atomically, re-reading the file first
so that sections written by other scripts survive.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from onnx_selenc._onnx.files import atomic_write


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line: CPU, cores, Python."""
    return f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def update_section(path: Path, name: str, body: str, *, after: str | None = None) -> None:
    """Replace the ``name`` section of a markdown file, atomically.

    A file without the section gets it right after the ``after`` section (when that is
    there), else at the end.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.strip()}\n{end}"
    start, stop = text.find(begin), text.find(end)
    anchor = f"<!-- {after}:end -->" if after else None
    if 0 <= start < stop:
        text = text[:start] + block + text[stop + len(end) :]
    elif anchor and anchor in text:
        before, _, rest = text.partition(anchor)
        text = before + anchor + "\n\n" + block + "\n" + rest
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write(path, text.encode("utf-8"))
