"""Figures, Markdown tables, and rewriting only given sections of BENCHMARKS.md.

A section lies between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``; the text
outside the markers is hand-written and survives every rewrite.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


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


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of section ``name`` (``<!-- NAME:begin -->``, ...)."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with section ``name`` replaced by ``body`` (appended if absent).

    Args:
        text: the Markdown document.
        name: the section's marker name.
        body: its new content, without the markers.

    Returns:
        The updated document; what lies outside the markers is kept as it was.
    """
    begin, end = markers(name)
    block = f"{begin}\n{body.strip()}\n{end}"
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if start >= 0 and stop >= 0:
        return text[:start] + block + text[stop + len(end) :]
    if not text.strip():
        text = "# Benchmarks\n"
    return text.rstrip("\n") + "\n\n" + block + "\n"


def replace_sections(text: str, sections: dict[str, str]) -> str:
    """``text`` with every section of ``sections`` replaced (see :func:`replace_section`)."""
    for name, body in sections.items():
        text = replace_section(text, name, body)
    return text


def span(text: str, names: Sequence[str]) -> str:
    """The part of ``text`` from the first section's begin marker to the last's end marker.

    Args:
        text: the Markdown document, holding every section of ``names``.
        names: the sections, in document order.

    Returns:
        The generated sections with the hand-written text between them.
    """
    start = text.find(markers(names[0])[0])
    end_marker = markers(names[-1])[1]
    stop = text.find(end_marker, max(start, 0))
    return text[max(start, 0) : stop + len(end_marker)] if stop >= 0 else text


def write_sections(path: Path, sections: dict[str, str]) -> None:
    """Rewrite only the given sections of ``path``, atomically.

    The file is re-read right before writing (other sections belong to others and
    may have changed during a long run), then replaced in one ``os.replace``.

    Args:
        path: the Markdown file (created when missing).
        sections: section name to its new body.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    updated = replace_sections(text, sections)
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
