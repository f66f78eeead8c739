"""Timing helpers: interleaved repetitions in one process, and fresh-process runs.

Every variant of a comparison is timed in the same repetitions, in an order that
changes from one repetition to the next, so load from other jobs on a shared machine,
and what one build leaves behind for the next, hit all variants alike.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks import peak
from benchmarks.perf.results import ROOT, ModelResult
from benchmarks.report import Stat


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Collect first, then keep the collector out of the timed region."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Time one call.

    Args:
        fn: the call.

    Returns:
        The seconds ``fn()`` took, and its result.
    """
    with no_gc():
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out


def interleaved(
    variants: dict[str, Callable[[], Any]],
    repeats: int,
    results: dict[str, Stat],
    cpu: dict[str, Stat] | None = None,
    sequence: list[tuple[str, float]] | None = None,
) -> None:
    """Time every variant once per repetition, changing the order each time.

    The order is rotated by one per repetition and reversed on every other one, so no
    variant always follows the same other variant (what the previous build left
    behind, such as memory to reuse, can change the next one's time).

    Args:
        variants: the calls to time, by name.
        repeats: repetitions of every variant.
        results: receives the wall seconds of each call, by name.
        cpu: receives the process CPU time (all threads) of each call: the work done,
            which other jobs on the machine disturb less than the wall time.
        sequence: receives ``(variant, seconds)`` in the order the calls ran.
    """
    for rep in range(repeats):
        for name in build_order(list(variants), rep):
            start_cpu = time.process_time()
            seconds, out = timed(variants[name])
            used = time.process_time() - start_cpu
            del out
            results.setdefault(name, Stat()).add(seconds)
            if cpu is not None:
                cpu.setdefault(name, Stat()).add(used)
            if sequence is not None:
                sequence.append((name, seconds))


def build_order(names: list[str], rep: int) -> list[str]:
    """Repetition ``rep``'s order: rotated by ``rep``, reversed on odd repetitions.

    Args:
        names: the variants.
        rep: the repetition, from 0.

    Returns:
        The variants in the order to run them.
    """
    order = names[rep % len(names) :] + names[: rep % len(names)]
    return order[::-1] if rep % 2 else order


def mapped_then_in_memory(mapping: list[str], in_memory: list[str], rep: int) -> list[str]:
    """Repetition ``rep``'s order: each in-memory build right after a mapping build.

    Pairs ``(mapping[i], in_memory[i])``, rotated by ``rep``: every in-memory build
    follows a build that freed little memory, so none of them gets memory the previous
    one freed (see :func:`fresh_process_builds`). With fewer mapping builds than
    in-memory ones, the mapping builds repeat in turn (each run is one more sample).

    Args:
        mapping: builds that map the external data file (at least one).
        in_memory: builds that hand tensors over in memory.
        rep: the repetition, from 0.

    Returns:
        The builds in the order to run them.
    """
    pairs = [(mapping[i % len(mapping)], name) for i, name in enumerate(in_memory)]
    k = rep % len(pairs)
    return [name for pair in pairs[k:] + pairs[:k] for name in pair]


def child_peak(spec: dict[str, Any]) -> dict[str, float]:
    """Run ``benchmarks.peak`` in a fresh interpreter.

    Args:
        spec: the task (see :mod:`benchmarks.peak`).

    Returns:
        Its measurements: ``peak_mb``, ``imports_mb``, ``seconds``, ``cpu_seconds``, ...
    """
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return peak.spawn(spec, ROOT, {**os.environ, "PYTHONPATH": path})


def fresh_process_builds(
    specs: dict[str, dict[str, Any]], in_memory: list[str], repeats: int, result: ModelResult
) -> None:
    """Time each build in a fresh process (``benchmarks.peak``), in a balanced order.

    For the model over 2 GB: an in-memory build (a level with restored kernels) that
    follows another runs seconds faster than one that follows a build which only
    mapped the file, in one process and, less so, across processes (the memory the
    previous build freed is reused; fresh memory is faulted in, slowly in a virtual
    machine). Fresh processes, as a user's one load, and each in-memory build right
    after a mapping one keep the order out of the levels' times.

    Args:
        specs: the ``benchmarks.peak`` task of each build, by variant.
        in_memory: the variants that hand tensors over in memory.
        repeats: repetitions of every build.
        result: receives the wall and CPU times, the order they ran in, and each
            build's peak resident memory (``memory["<variant> build"]``).
    """
    mapping = [name for name in specs if name not in in_memory]
    for rep in range(repeats):
        for name in mapped_then_in_memory(mapping, in_memory, rep):
            measured = child_peak(specs[name])
            result.build.setdefault(name, Stat()).add(measured["seconds"])
            result.build_cpu.setdefault(name, Stat()).add(measured["cpu_seconds"])
            result.build_sequence.append((name, measured["seconds"]))
            result.memory.setdefault(f"{name} build", Stat()).add(measured["peak_mb"])
