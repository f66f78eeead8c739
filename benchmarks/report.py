"""Rendering the results, and rewriting only the performance section of BENCHMARKS.md."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BEGIN = "<!-- perf:begin -->"
END = "<!-- perf:end -->"


@dataclass
class Stat:
    """Repeated measurements of one figure (seconds, or MB for memory)."""

    samples: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.samples.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile of the samples."""
        return float(np.percentile(self.samples, q))

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def ms(self) -> str:
        """``median (min-max)`` in milliseconds, with a precision that suits the size."""
        return f"{_num(self.median * 1e3)} ({_num(self.low * 1e3)}-{_num(self.high * 1e3)})"

    def seconds(self) -> str:
        return f"{self.median:.2f} ({self.low:.2f}-{self.high:.2f})"

    def mb(self) -> str:
        if len(self.samples) == 1:
            return f"{self.median:.0f}"
        return f"{self.median:.0f} ({self.low:.0f}-{self.high:.0f})"


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    """``a / b`` to two decimals, or ``n/a``."""
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(text: str, body: str) -> str:
    """``text`` with the perf section replaced by ``body`` (appended if absent)."""
    block = f"{BEGIN}\n{body.strip()}\n{END}"
    start = text.find(BEGIN)
    end = text.find(END, start + len(BEGIN)) if start >= 0 else -1
    if start >= 0 and end >= 0:
        return text[:start] + block + text[end + len(END) :]
    if not text.strip():
        text = "# Benchmarks\n"
    return text.rstrip("\n") + "\n\n" + block + "\n"


def write_section(path: Path, body: str) -> None:
    """Rewrite only the perf section of ``path``, atomically.

    The file is re-read right before writing (other sections belong to others and
    may have changed during a long run), then replaced in one ``os.replace``.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    updated = replace_section(text, body)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(updated)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
