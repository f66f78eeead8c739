"""DnCNN Gaussian denoisers (sigma 25 and 50), trained on this CPU and exported to ONNX.

The paper's second task (Tian et al., CVPR 2021, after Zhang et al., TIP 2017): a
17-layer, 64-channel grayscale DnCNN with residual learning (the network predicts the
noise; output = input - predicted noise). Pixels are in [0, 1]; noise std is sigma/255.

Data (offline): photographs shipped inside scikit-image and scikit-learn, converted to
8-bit grayscale. Training uses :data:`TRAIN_IMAGES`; evaluation uses the centre
256x256 crop of each of :data:`TEST_IMAGES`, which are never used for training. This
is far less (and less varied) data than the paper's 400 BSD images, and training is
only 1,200 Adam steps of 16 40x40 patches (about 0.45 s a step on 2 idle cores; 18-22 min
per sigma were measured on the shared machine), so PSNRs are below published DnCNN numbers.

Command line::

    python -m samples.paper.dncnn [--sigma 25 50] [--smoke] [--force]
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

SIGMAS = (25, 50)
# skimage.data names, or "sklearn:<file>" for sklearn.datasets.load_sample_images().
TRAIN_IMAGES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "moon",
    "page",
    "text",
    "grass",
    "gravel",
    "brick",
    "sklearn:flower.jpg",
)
TEST_IMAGES = ("camera", "coins", "stereo_motorcycle", "sklearn:china.jpg")
TEST_CROP = 256
RECIPE = 1  # bump when the training code changes in a way the config does not show
ONNX_NAME = "dncnn.onnx"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained DnCNN (hashed into the cache key).

    Attributes:
        sigma: noise std on the 0..255 scale.
        steps: optimizer steps (a fixed count, not a time budget, for reproducibility).
        batch: patches per step.
        patch: patch side in pixels.
        lr: Adam learning rate at the start (cosine decay to ``lr_min``).
        lr_min: learning rate at the last step.
        depth: conv layers.
        channels: feature maps per hidden layer.
        seed: seeds weights, patch sampling and noise.
    """

    sigma: int
    steps: int = 1200
    batch: int = 16
    patch: int = 40
    lr: float = 1e-3
    lr_min: float = 1e-5
    depth: int = 17
    channels: int = 64
    seed: int = 0

    def cache_key(self) -> dict[str, Any]:
        """The hashed description: the config plus the data and recipe identity."""
        return {
            **dataclasses.asdict(self),
            "train_images": list(TRAIN_IMAGES),
            "recipe": RECIPE,
        }


def smoke_config(sigma: int) -> TrainConfig:
    """Same architecture, 20 steps of 8 patches: exercises the whole pipeline in seconds."""
    return TrainConfig(sigma=sigma, steps=20, batch=8)


def build_model(depth: int = 17, channels: int = 64) -> torch.nn.Module:
    """DnCNN: Conv+ReLU, (depth-2) x (Conv+BN+ReLU), Conv; returns ``x - noise(x)``."""
    from torch import nn

    class DnCNN(nn.Module):
        """Residual DnCNN (grayscale)."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(inplace=True)]
            for _ in range(depth - 2):
                layers += [
                    nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(channels),
                    nn.ReLU(inplace=True),
                ]
            last = nn.Conv2d(channels, 1, 3, padding=1)
            layers.append(last)
            self.body = nn.Sequential(*layers)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            # Start from the identity map (predicted noise ~ 0): a Kaiming-scaled last layer
            # would predict unit-variance "noise" and waste the first hundreds of steps.
            last.weight.data.mul_(1e-2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x - self.body(x)  # residual learning: body(x) estimates the noise

    return DnCNN()


# --------------------------------------------------------------------------- data


def gray_image(name: str) -> np.ndarray:
    """One source photograph as 8-bit-quantised grayscale float32 in [0, 1], shape (H, W).

    Args:
        name: a ``skimage.data`` function name, or ``"sklearn:<file>"``.
    """
    from skimage import color, data

    if name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        files = [Path(f).name for f in bunch.filenames]
        img = bunch.images[files.index(name.split(":", 1)[1])]
    else:
        img = getattr(data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
            img = img[0]
    img = np.asarray(img)
    gray = color.rgb2gray(img[..., :3]) if img.ndim == 3 else img.astype(np.float64) / 255.0
    # Quantise like an 8-bit grayscale file: the clean target is what a camera would store.
    return (np.round(gray * 255.0) / 255.0).astype(np.float32)


def _center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape
    top, left = (h - size) // 2, (w - size) // 2
    return img[top : top + size, left : left + size]


def load_test_images(sigma: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Held-out photos (centre 256x256 crops of :data:`TEST_IMAGES`) and their noisy copies.

    The noise is ``N(0, (sigma/255)^2)``, drawn from a generator seeded by ``(seed, sigma)``,
    and not clipped (the usual DnCNN protocol).

    Args:
        sigma: noise std on the 0..255 scale.
        seed: noise seed.

    Returns:
        ``(clean, noisy)``, both float32 ``[N, 1, 256, 256]``.
    """
    clean = np.stack([_center_crop(gray_image(n), TEST_CROP) for n in TEST_IMAGES])[:, None]
    rng = np.random.default_rng([seed, sigma])
    noisy = clean + rng.standard_normal(clean.shape) * (sigma / 255.0)
    return clean, noisy.astype(np.float32)


def psnr(clean: np.ndarray, estimate: np.ndarray, data_range: float = 1.0) -> float:
    """Mean over images of the per-image PSNR in dB (arrays ``[N, 1, H, W]`` or ``[H, W]``)."""
    c = clean.reshape(-1, clean.shape[-2] * clean.shape[-1]).astype(np.float64)
    e = estimate.reshape(c.shape).astype(np.float64)
    mse = np.mean((c - e) ** 2, axis=1)
    return float(np.mean(10.0 * np.log10(data_range**2 / np.maximum(mse, 1e-20))))


def ssim(clean: np.ndarray, estimate: np.ndarray, data_range: float = 1.0) -> float:
    """Mean over images of ``skimage.metrics.structural_similarity`` (default 7x7 window)."""
    from skimage.metrics import structural_similarity

    c = clean.reshape(-1, clean.shape[-2], clean.shape[-1])
    e = estimate.reshape(c.shape)
    return float(
        np.mean(
            [
                structural_similarity(
                    a.astype(np.float64), b.astype(np.float64), data_range=data_range
                )
                for a, b in zip(c, e, strict=True)
            ]
        )
    )


class PatchSampler:
    """Random training patches with the 8 flips/rotations, from a seeded numpy generator."""

    def __init__(self, images: Sequence[np.ndarray], patch: int, seed: int) -> None:
        self.images = [im for im in images if min(im.shape) >= patch]
        self.patch = patch
        # Pick images in proportion to their area, so every pixel is about equally likely.
        area = np.array([im.size for im in self.images], dtype=np.float64)
        self.weights = area / area.sum()
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> np.ndarray:
        """``n`` patches, float32 ``[n, 1, patch, patch]``."""
        p = self.patch
        which = self.rng.choice(len(self.images), size=n, p=self.weights)
        out = np.empty((n, 1, p, p), dtype=np.float32)
        for i, k in enumerate(which):
            im = self.images[k]
            top = self.rng.integers(0, im.shape[0] - p + 1)
            left = self.rng.integers(0, im.shape[1] - p + 1)
            crop = im[top : top + p, left : left + p]
            mode = self.rng.integers(0, 8)
            crop = np.rot90(crop, k=int(mode % 4))
            out[i, 0] = crop[:, ::-1] if mode >= 4 else crop
        return out


# ----------------------------------------------------------------------- training


@dataclass(frozen=True)
class Artifacts:
    """A trained, exported DnCNN in the cache.

    Attributes:
        sigma: the noise level it was trained for.
        folder: its cache folder.
        onnx: the single-file ONNX model (dynamic batch, H and W).
        checkpoint: the PyTorch state dict (with its config).
        meta: training time, PyTorch-vs-ONNX check and held-out metrics.
    """

    sigma: int
    folder: Path
    onnx: Path
    checkpoint: Path
    meta: dict[str, Any]


def cache_folder(config: TrainConfig, smoke: bool = False) -> Path:
    """The cache folder for one config (smoke runs live in their own subtree)."""
    parts = ("samples", "smoke", "dncnn") if smoke else ("samples", "dncnn")
    return cache_dir(*parts, f"sigma{config.sigma}-{_common.config_hash(config.cache_key())}")


def train(
    config: TrainConfig, *, threads: int | None = 2, show_progress: bool = True
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one DnCNN from scratch.

    Args:
        config: the training config.
        threads: torch CPU threads (2 on the reference machine).
        show_progress: tqdm bar on stderr.

    Returns:
        The model (eval mode) and training statistics.
    """
    import torch

    _common.setup_torch(threads, config.seed)
    model = build_model(config.depth, config.channels)
    # channels_last: 16 us/pixel-step vs 20-80 us contiguous for 64-channel convs on this CPU.
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    sampler = PatchSampler([gray_image(n) for n in TRAIN_IMAGES], config.patch, config.seed)
    noise_rng = np.random.default_rng([config.seed, config.sigma, 1])
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps, eta_min=config.lr_min)
    std = config.sigma / 255.0
    model.train()
    start = time.perf_counter()
    losses = []
    bar = _common.progress(
        range(config.steps), desc=f"DnCNN sigma={config.sigma}", enabled=show_progress
    )
    for step in bar:
        clean = sampler.batch(config.batch)
        noisy = clean + (noise_rng.standard_normal(clean.shape) * std).astype(np.float32)
        x = torch.from_numpy(noisy).to(memory_format=torch.channels_last)
        y = torch.from_numpy(clean).to(memory_format=torch.channels_last)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if show_progress and step % 20 == 0 and hasattr(bar, "set_postfix"):
            recent = float(np.mean(losses[-50:]))
            bar.set_postfix(psnr=f"{10 * math.log10(1 / max(recent, 1e-12)):.2f}")
    seconds = time.perf_counter() - start
    model.eval()
    tail = float(np.mean(losses[-100:]))
    stats = {
        "train_seconds": round(seconds, 1),
        "final_train_mse": tail,
        "final_train_psnr": round(10 * math.log10(1 / tail), 3),
        "threads": threads,
    }
    return model.to(memory_format=torch.contiguous_format), stats


def denoise_onnx(model: str | Path | ort.InferenceSession, noisy: np.ndarray) -> np.ndarray:
    """Denoise ``[N, 1, H, W]`` images with an ONNX DnCNN (one image per run)."""
    sess = model if not isinstance(model, str | Path) else _common.ort_session(model)
    return _common.run_session(sess, noisy.astype(np.float32), batch=1)


def evaluate(
    model: str | Path | ort.InferenceSession, sigma: int, seed: int = 0
) -> dict[str, float]:
    """PSNR/SSIM of an ONNX DnCNN on the held-out photos (output clipped to [0, 1]).

    Returns:
        ``psnr``/``ssim`` of the denoised images and ``noisy_psnr``/``noisy_ssim`` of the input.
    """
    clean, noisy = load_test_images(sigma, seed)
    out = np.clip(denoise_onnx(model, noisy), 0.0, 1.0)
    return {
        "psnr": round(psnr(clean, out), 3),
        "ssim": round(ssim(clean, out), 4),
        "noisy_psnr": round(psnr(clean, noisy), 3),
        "noisy_ssim": round(ssim(clean, np.clip(noisy, 0.0, 1.0)), 4),
    }


def get_model(
    sigma: int,
    *,
    smoke: bool = False,
    force: bool = False,
    threads: int | None = 2,
    show_progress: bool = True,
) -> Artifacts:
    """Return the cached DnCNN for ``sigma``, training and exporting it on a cache miss.

    Args:
        sigma: 25 or 50 (any positive value works).
        smoke: the tiny :func:`smoke_config` run, cached separately.
        force: retrain even if the cache is complete.
        threads: torch CPU threads for training.
        show_progress: progress bar on stderr.

    Returns:
        The cached artifacts; ``meta`` holds timings, the ONNX check and PSNR/SSIM.
    """
    import torch

    config = smoke_config(sigma) if smoke else TrainConfig(sigma=sigma)
    folder = cache_folder(config, smoke)
    onnx_path, ckpt = folder / ONNX_NAME, folder / "dncnn.pt"
    meta = _common.read_json(folder / _common.META_FILE)
    if meta and not force and onnx_path.exists() and ckpt.exists():
        return Artifacts(sigma, folder, onnx_path, ckpt, meta)

    model, stats = train(config, threads=threads, show_progress=show_progress)
    _common.save_torch_atomic(
        {"config": dataclasses.asdict(config), "state_dict": model.state_dict()}, ckpt
    )
    _common.export_onnx(
        model,
        torch.rand(1, 1, 64, 64),
        onnx_path,
        external_data=False,
        dynamic_axes=(0, 2, 3),
        input_name="noisy",
        output_name="denoised",
    )
    sess = _common.ort_session(onnx_path)
    noisy = load_test_images(sigma)[1]
    # Check an odd size too: H and W must really be dynamic.
    odd = noisy[:1, :, :97, :131]
    diffs = [
        np.max(np.abs(_common.run_session(sess, x, batch=1) - _common.torch_forward(model, x, 1)))
        for x in (noisy, odd)
    ]
    meta = {
        "model": "DnCNN",
        "sigma": sigma,
        "config": config.cache_key(),
        "config_hash": _common.config_hash(config.cache_key()),
        "smoke": smoke,
        "train": stats,
        "onnx_vs_torch_max_abs_diff": float(max(diffs)),
        "test_images": list(TEST_IMAGES),
        "test_crop": TEST_CROP,
        "heldout_onnx": evaluate(sess, sigma),
        "versions": _common.versions(),
    }
    _common.write_json(folder / _common.META_FILE, meta)  # written last: marks the cache complete
    return Artifacts(sigma, folder, onnx_path, ckpt, meta)


def describe(art: Artifacts) -> str:
    """One human-readable line of results."""
    m = art.meta
    h = m["heldout_onnx"]
    return (
        f"DnCNN sigma={art.sigma}: held-out PSNR {h['psnr']:.2f} dB / SSIM {h['ssim']:.4f} "
        f"(noisy input {h['noisy_psnr']:.2f} dB / {h['noisy_ssim']:.4f}); "
        f"trained {m['train']['train_seconds']:.0f} s; ONNX vs PyTorch max |diff| "
        f"{m['onnx_vs_torch_max_abs_diff']:.2e}; {art.onnx}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Train (or load) the DnCNN models and print their held-out metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigma", type=int, nargs="+", default=list(SIGMAS))
    parser.add_argument("--smoke", action="store_true", help="tiny run, separate cache")
    parser.add_argument("--force", action="store_true", help="retrain even if cached")
    args = parser.parse_args(argv)
    print(
        f"held-out photos (never trained on): {', '.join(TEST_IMAGES)} "
        f"(centre {TEST_CROP}x{TEST_CROP} crops)"
    )
    for sigma in args.sigma:
        print(describe(get_model(sigma, smoke=args.smoke, force=args.force)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
