"""Train (or load cached) sample models and export them to ONNX.

Seeded, CPU only, one thread by default; progress bars on stderr. A trained model is
cached as ``cache_dir("samples")/blockwise-<name>-<config hash>.{pt,onnx}`` so later
runs skip training. Export: ``torch.onnx.export(..., dynamo=True, external_data=False)``
(the dynamo exporter, which needs onnxscript) with a dynamic batch dimension.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from samples._cache import cache_dir

from .models import IMAGENET_MEAN, IMAGENET_STD, ConvMixer, TinyViT


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained sample model (hashed for the cache name)."""

    arch: str  # "convmixer" | "vit"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 8
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    train_limit: int | None = None
    seed: int = 0

    def digest(self) -> str:
        """Short hash of the configuration."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TrainedModel:
    """A trained, exported sample model."""

    name: str
    onnx_path: Path
    normalise_outside: bool
    train_seconds: float
    cached: bool
    config: TrainConfig


def build(config: TrainConfig) -> nn.Module:
    """Instantiate the architecture of ``config``."""
    if config.arch == "convmixer":
        return ConvMixer(**config.arch_kwargs)
    if config.arch == "vit":
        return TinyViT(**config.arch_kwargs)
    raise ValueError(f"unknown architecture {config.arch!r}")


def model_input(arch: str) -> Callable[[np.ndarray], np.ndarray]:
    """Map float pixels in [0, 1] to what the plain model takes (the ViT needs normalising)."""
    if arch != "vit":
        return lambda x: x
    mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    return lambda x: ((x - mean) / std).astype(np.float32)


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, config: TrainConfig, desc: str) -> None:
    """Train with AdamW and a one-cycle schedule (progress on stderr)."""
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = config.epochs * ((len(x) + config.batch - 1) // config.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    model.train()
    with tqdm(total=steps, desc=desc, file=sys.stderr, unit="batch", leave=True) as bar:
        for _ in range(config.epochs):
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), config.batch):
                idx = order[start : start + config.batch]
                loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    model.eval()


def export(model: nn.Module, path: Path) -> None:
    """Export to a single-file ONNX model with a dynamic batch dimension."""
    import onnx

    model.eval()
    example = torch.zeros(2, 3, 32, 32)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model,
        (example,),
        str(tmp),
        dynamo=True,
        external_data=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    onnx.checker.check_model(onnx.load(str(tmp)))
    tmp.replace(path)


def train_or_load(
    name: str, config: TrainConfig, x: np.ndarray, y: np.ndarray, *, cache: Path | None = None
) -> TrainedModel:
    """Return the exported model for ``config``, training it only when not cached.

    Args:
        name: Display name (also the cache-file prefix).
        config: Training configuration.
        x: Training images, float32 ``[N, 3, 32, 32]`` in [0, 1].
        y: Training labels.
        cache: Cache folder (default ``cache_dir("samples")``).
    """
    folder = cache or cache_dir("samples")
    stem = folder / f"blockwise-{name}-{config.digest()}"
    onnx_path, ckpt = stem.with_suffix(".onnx"), stem.with_suffix(".pt")
    meta = stem.with_suffix(".json")
    if onnx_path.exists() and ckpt.exists() and meta.exists():
        seconds = float(json.loads(meta.read_text())["train_seconds"])
        return TrainedModel(name, onnx_path, config.arch == "vit", seconds, True, config)
    torch.manual_seed(config.seed)
    model = build(config)
    if config.train_limit is not None:
        x, y = x[: config.train_limit], y[: config.train_limit]
    start = time.perf_counter()
    fit(model, model_input(config.arch)(x), y, config, desc=f"train {name}")
    seconds = time.perf_counter() - start
    torch.save(model.state_dict(), ckpt)
    export(model, onnx_path)
    meta.write_text(json.dumps({"config": asdict(config), "train_seconds": seconds}, indent=2))
    return TrainedModel(name, onnx_path, config.arch == "vit", seconds, False, config)
