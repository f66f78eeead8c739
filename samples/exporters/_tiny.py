"""The tiny PyTorch CNN that the torch-based exporters share (fixed seed)."""

from __future__ import annotations

import sys
from pathlib import Path

INPUT_SHAPE = (1, 3, 32, 32)


def tiny_cnn(seed: int = 0):  # -> torch.nn.Module
    """A small CNN: conv stem, two conv+BN+ReLU blocks (one depthwise), a head. Eval mode."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Block(nn.Module):
        def __init__(self, c: int, groups: int = 1) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1, groups=groups)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)))

    class TinyCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.block1 = Block(16)
            self.block2 = Block(16, groups=16)
            self.proj = nn.Conv2d(16, 24, 1)
            self.head = nn.Linear(24, 5)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            x = self.proj(self.block2(self.block1(x)))
            return self.head(torch.relu(x).mean((2, 3)))

    model = TinyCNN().eval()
    with torch.no_grad():  # non-trivial BN statistics, so that folding them changes weights
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


def example_input(seed: int = 0):
    import torch

    return torch.randn(*INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))


def export_legacy(path: Path, opset: int = 17, **kwargs: object) -> None:
    """The tiny CNN through the TorchScript exporter (``dynamo=False``)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tiny_cnn(), (example_input(),), str(path), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **kwargs,
        )  # fmt: skip


def cli(variants: dict, argv: list[str] | None = None) -> int:
    """``<variant> <output.onnx>`` -> ``variants[variant](Path(output))``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in variants:
        print(f"usage: <{'|'.join(variants)}> OUTPUT.onnx", file=sys.stderr)
        return 2
    out = Path(args[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    variants[args[0]](out)
    return 0
