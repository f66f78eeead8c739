"""The performance benchmark behind ``python -m benchmarks.run``, in three parts.

* :mod:`benchmarks.perf.results` – what a run records (:class:`ModelResult`,
  :class:`Settings`), the constants it runs with, and its JSON file.
* :mod:`benchmarks.perf.timing` – interleaved timing and fresh-process measurements.
* :mod:`benchmarks.perf.measure` – everything measured on one model.
* :mod:`benchmarks.perf.machine` – the machine line (CPU, memory, load, versions).
* :mod:`benchmarks.perf.render` – the Markdown sections of BENCHMARKS.md, from results
  alone (``--render`` re-renders a saved JSON file without measuring).

The prose that explains the tables and does not depend on a run is plain text in
BENCHMARKS.md, between the generated sections, so a new run leaves it in place.
"""
