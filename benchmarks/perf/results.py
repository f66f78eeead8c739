"""What a performance run records, the constants it runs with, and its JSON file.

Rendering reads only what is here, so a saved JSON file renders the same tables again
without measuring anything (``python -m benchmarks.run --render JSON``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_selenc as se
from benchmarks.report import Stat

ROOT = Path(__file__).resolve().parents[2]
LEVELS = 5
MIDDLE = 2
# The package's default, which every encryption here uses (it passes no budget).
BUDGET = se.EncryptOptions.budget
CALIBRATION_SAMPLES = 16
# On the model over 2 GB: at most this many session builds, and one encryption each.
BIG_BUILD_REPEATS = 3
BIG_ENCRYPT_REPEATS = 1
# The data-driven encryption runs the model many times per conv layer: once per model.
DATA_DRIVEN_RUNS = 1


@dataclass
class ModelResult:
    """Everything measured on one model.

    Attributes:
        name: the model's name.
        size_mb: model file plus external data, in MB.
        build: session-build wall times by variant (``plain``, ``whole-file``,
            ``L<m>``), and ``sha256``: one hash pass over the model's bytes.
        build_cpu: process CPU time of the same builds.
        inference: per-run wall and CPU (``<name> cpu``) times, plain and restored.
        encrypt: ``load+save``, ``data-free`` and ``data-driven`` times.
        memory: peak RSS (MB) of each operation, and the imports' footprint.
        outputs_equal: the top level's outputs equal the plain model's, bit for bit.
        level0_differs: level 0 gives other outputs (the encryption does something).
        providers_used: ``get_providers()`` of the plain and the restored session.
        notes: what was not measured, and why.
        calibration: the data-driven encryption's calibration shape, e.g. ``16x3x32x32``.
        build_sequence: ``(variant, seconds)`` of the timed builds in the order they ran.
    """

    name: str
    size_mb: float
    build: dict[str, Stat] = field(default_factory=dict)
    build_cpu: dict[str, Stat] = field(default_factory=dict)
    inference: dict[str, Stat] = field(default_factory=dict)
    encrypt: dict[str, Stat] = field(default_factory=dict)
    memory: dict[str, Stat] = field(default_factory=dict)
    outputs_equal: bool | None = None
    level0_differs: bool | None = None
    providers_used: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    calibration: str = ""
    build_sequence: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ModelResult:
        """Inverse of :meth:`as_dict`.

        Args:
            doc: one entry of a results file's ``results``.

        Returns:
            The result it records.
        """

        def stats(d: dict[str, list[float]]) -> dict[str, Stat]:
            return {k: Stat(list(v)) for k, v in d.items()}

        return cls(
            name=doc["name"],
            size_mb=doc["size_mb"],
            build=stats(doc["build"]),
            build_cpu=stats(doc["build_cpu"]),
            inference=stats(doc["inference"]),
            encrypt=stats(doc["encrypt"]),
            memory=stats(doc["memory"]),
            outputs_equal=doc["outputs_equal"],
            level0_differs=doc["level0_differs"],
            providers_used=doc["providers_used"],
            notes=list(doc["notes"]),
            calibration=doc.get("calibration", ""),
            build_sequence=[(str(n), float(t)) for n, t in doc.get("build_sequence", [])],
        )

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data: every figure with all its samples."""

        def stats(d: dict[str, Stat]) -> dict[str, list[float]]:
            return {k: v.samples for k, v in d.items()}

        return {
            "name": self.name,
            "size_mb": self.size_mb,
            "build": stats(self.build),
            "build_cpu": stats(self.build_cpu),
            "inference": stats(self.inference),
            "encrypt": stats(self.encrypt),
            "memory": stats(self.memory),
            "outputs_equal": self.outputs_equal,
            "level0_differs": self.level0_differs,
            "providers_used": self.providers_used,
            "notes": self.notes,
            "calibration": self.calibration,
            "build_sequence": [list(x) for x in self.build_sequence],
        }


@dataclass(frozen=True)
class Settings:
    """Command-line choices.

    Attributes:
        repeats: session-build repetitions (at most :data:`BIG_BUILD_REPEATS` on the
            model over 2 GB).
        encrypt_repeats: repetitions of the data-free encryption and of load + save.
        inference_seconds: about how long the alternated inference runs take.
        providers: execution providers for every session; None: ONNX Runtime's default.
        quick: the model over 2 GB skipped, fewer repetitions.
        data_driven: the data-driven encryption is timed too.
    """

    repeats: int
    encrypt_repeats: int
    inference_seconds: float
    providers: list[str] | None
    quick: bool
    data_driven: bool


@dataclass(frozen=True)
class Run:
    """A whole run, as its JSON file keeps it.

    Attributes:
        machine: the machine line's fields (see :func:`benchmarks.perf.machine.machine`).
        load_after: the load average at the end (``?`` while the run goes on).
        command: the command line, with only the options that change what is measured.
        settings: the run's choices.
        results: one entry per model, in the order measured.
    """

    machine: dict[str, str]
    load_after: str
    command: str
    settings: Settings
    results: list[ModelResult]


def write_json(path: Path, run: Run) -> None:
    """Write ``run`` (all samples, so it can be rendered again).

    Args:
        path: the JSON file, replaced.
        run: what to write.
    """
    doc = {
        "machine": run.machine,
        "load_after": run.load_after,
        "command": run.command,
        "settings": dataclasses.asdict(run.settings),
        "results": [r.as_dict() for r in run.results],
    }
    path.write_text(json.dumps(doc, indent=1))


def read_json(path: Path) -> Run:
    """Inverse of :func:`write_json`.

    Args:
        path: a file :func:`write_json` wrote.

    Returns:
        The run it records.
    """
    doc = json.loads(path.read_text(encoding="utf-8"))
    return Run(
        machine=doc["machine"],
        load_after=doc["load_after"],
        command=doc["command"],
        settings=Settings(**doc["settings"]),
        results=[ModelResult.from_dict(r) for r in doc["results"]],
    )
