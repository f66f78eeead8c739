"""Small PyTorch nets with convolution edge cases, shared by several exporters (fixed seeds).

They come from a blind conformance test on models not in the corpus:

- :func:`img_net`: BN, a grouped + dilated strided conv, a depthwise conv without bias,
  Dropout and a grouped ``ConvTranspose2d`` with ``output_padding``; input ``[1, 3, 32, 32]``;
- :func:`shared_net`: one conv applied twice, its weight reused by ``F.conv_transpose2d``,
  a grouped dilated ``Conv3d`` and a ``ConvTranspose3d`` with ``output_padding``; inputs
  ``[1, 1, 16, 16]`` and ``[1, 4, 6, 6, 6]``;
- :func:`pad_net`: ``padding_mode`` reflect and circular, a dilated conv; input ``[1, 3, 32, 32]``.

:func:`export` runs the TorchScript exporter (``dynamo=False``) on one of them.
"""

from __future__ import annotations

from pathlib import Path

IMG_SHAPE = (1, 3, 32, 32)
SHARED_SHAPES = ((1, 1, 16, 16), (1, 4, 6, 6, 6))


def img_net(seed: int = 0):  # -> torch.nn.Module (eval mode)
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)

    class Img(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3, padding=1)
            self.bn = nn.BatchNorm2d(16)
            self.c2 = nn.Conv2d(16, 32, 3, stride=2, padding=2, dilation=2, groups=4)
            self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
            self.drop = nn.Dropout(0.3)
            self.up = nn.ConvTranspose2d(32, 8, 3, stride=2, padding=1, output_padding=1, groups=2)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = F.relu(self.bn(self.c1(x)))
            y = F.relu(self.c2(y))
            y = self.drop(self.dw(y))
            return self.head(F.relu(self.up(y)))

    model = Img().eval()
    with torch.no_grad():  # non-trivial BN statistics
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model


def shared_net(seed: int = 0):  # -> torch.nn.Module (eval mode)
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(8, 8, 3, padding=1)
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.c3 = nn.Conv3d(4, 8, 3, padding=2, dilation=2, groups=2)
            self.t3 = nn.ConvTranspose3d(8, 4, 3, stride=2, padding=1, output_padding=1)

        def forward(self, x, v):
            y = self.c(F.relu(self.c(self.stem(x))))
            z = F.conv_transpose2d(y, self.c.weight, padding=1)  # tied to self.c
            w = self.t3(F.relu(self.c3(v)))
            return z, w

    return Shared().eval()


def pad_net(seed: int = 0):  # -> torch.nn.Module (eval mode)
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class PadModes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.r = nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect")
            self.c = nn.Conv2d(6, 6, 3, padding=1, padding_mode="circular")
            self.z = nn.Conv2d(6, 3, 3, padding=2, dilation=2)

        def forward(self, x):
            return self.z(self.c(self.r(x)))

    return PadModes().eval()


def inputs(net: str, seed: int = 0) -> tuple:
    """Seeded example inputs for ``img``, ``shared`` or ``pad``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    shapes = SHARED_SHAPES if net == "shared" else (IMG_SHAPE,)
    return tuple(torch.randn(*s, generator=gen) for s in shapes)


def export(net: str, path: Path, *, train: bool = False, **kwargs: object) -> None:
    """``torch.onnx.export(dynamo=False)`` of ``img``, ``shared`` or ``pad`` (eval mode
    unless ``train``); ``kwargs`` go to the exporter."""
    import warnings

    import torch

    model = {"img": img_net, "shared": shared_net, "pad": pad_net}[net]()
    if train:
        model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs(net), str(path), dynamo=False, **kwargs)
