"""Issue 15's second architecture: a small ResNet with batch norm folded into its convs.

Stem conv (16) + three stages of one basic block each (16, 32, 64 channels; the second
and third stride 2 with a 1x1 projection on the skip path), global average pooling and
one linear layer: 9 convs, 3 residual adds. Trained with batch norm on the same 8,000
MNIST digits as the VGG19 study, then every batch norm is folded into the conv before it
(``torch.nn.utils.fusion.fuse_conv_bn_eval``), so the exported ONNX graph has only
Conv, Relu, Add, ReduceMean, Reshape and Gemm: the form many exporters produce.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

WIDTHS = (16, 32, 64)
TRAIN = {"epochs": 4, "batch": 64, "lr": 1e-3, "seed": 0}


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + (x if self.proj is None else self.proj(x)))

    def fold(self) -> nn.Module:
        """The same block in eval mode with each batch norm folded into its conv."""
        proj = None
        if self.proj is not None:
            proj = fuse_conv_bn_eval(self.proj[0], self.proj[1])  # type: ignore[index]
        conv1 = fuse_conv_bn_eval(self.conv1, self.bn1)
        return _FoldedBlock(conv1, fuse_conv_bn_eval(self.conv2, self.bn2), proj)


class _FoldedBlock(nn.Module):
    # Submodules are set in __init__: a class-level ``proj = None`` default would shadow
    # the registered module on attribute lookup and silently drop the skip projection.
    def __init__(self, conv1: nn.Module, conv2: nn.Module, proj: nn.Module | None) -> None:
        super().__init__()
        self.conv1, self.conv2, self.proj = conv1, conv2, proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(h + (x if self.proj is None else self.proj(x)))


class ResNet(nn.Module):
    """The trainable network (with batch norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, WIDTHS[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(WIDTHS[0])
        blocks, c = [], WIDTHS[0]
        for i, w in enumerate(WIDTHS):
            blocks.append(_Block(c, w, 1 if i == 0 else 2))
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        for b in self.blocks:
            h = b(h)
        return self.fc(nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))

    def fold(self) -> nn.Module:
        """Eval-mode copy with batch norm folded into the convs (same outputs)."""
        self.eval()
        stem = fuse_conv_bn_eval(self.stem, self.bn)
        return _Folded(stem, [b.fold() for b in self.blocks], self.fc)


class _Folded(nn.Module):
    def __init__(self, stem: nn.Module, blocks: list[nn.Module], fc: nn.Module) -> None:
        super().__init__()
        self.stem, self.blocks, self.fc = stem, nn.ModuleList(blocks), fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        for b in self.blocks:
            h = b(h)
        return self.fc(nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))


def train_and_export(x: Any, y: Any, x_check: Any, path: Path) -> dict[str, Any]:
    """Train on ``(x, y)``, fold, export to ``path``; return the training stats.

    Raises if the folded network's logits differ from the trained one's on ``x_check``
    by more than float32 reordering noise (a folding bug would silently change the study).
    """
    from samples.paper import _common, vgg19

    _common.setup_torch(1, TRAIN["seed"])
    model = ResNet()
    steps = TRAIN["epochs"] * math.ceil(len(x) / TRAIN["batch"])
    stats = vgg19.fit(
        model,
        x,
        y,
        steps=steps,
        batch=TRAIN["batch"],
        lr=TRAIN["lr"],
        seed=TRAIN["seed"],
        desc="resnet",
    )
    model.eval()
    folded = model.fold().eval()
    with torch.no_grad():
        xc = torch.from_numpy(x_check)
        diff = float((model(xc) - folded(xc)).abs().max())
    if diff > 1e-3:
        raise RuntimeError(f"batch-norm folding changed the logits by {diff}")
    _common.export_onnx(folded, xc[:2], path, external_data=False)
    return {**stats, "fold_max_abs_logit_diff": diff}
