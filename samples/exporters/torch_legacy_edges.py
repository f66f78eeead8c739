"""PyTorch's TorchScript exporter on convolution edge cases (:mod:`._edge_nets`).

Variants:

- ``op9``: opset 9 (IR 4) of the image net: grouped + dilated conv, depthwise conv
  without bias, grouped ``ConvTranspose2d`` with ``output_padding``, BN folded;
- ``training``: opset 14, ``training=TrainingMode.TRAINING`` and
  ``do_constant_folding=False``: BatchNormalization in training mode (batch statistics,
  extra running-stat outputs) and Dropout stay in the graph;
- ``shared3d``: opset 13, one conv weight used by two Convs and a ConvTranspose, a
  grouped dilated Conv3d and a ConvTranspose3d with ``output_padding``.
"""

from __future__ import annotations

from pathlib import Path

from samples.exporters._edge_nets import export
from samples.exporters._tiny import cli


def op9(out: Path) -> None:
    export("img", out, opset_version=9, input_names=["x"], output_names=["y"])


def training(out: Path) -> None:
    import torch

    export(
        "img", out, train=True, opset_version=14, input_names=["x"], output_names=["y"],
        training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
    )  # fmt: skip


def shared3d(out: Path) -> None:
    export("shared", out, opset_version=13, input_names=["x", "v"], output_names=["z", "w"])


if __name__ == "__main__":
    raise SystemExit(cli({"op9": op9, "training": training, "shared3d": shared3d}))
