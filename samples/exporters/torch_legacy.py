"""PyTorch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``).

Variants: ``plain`` (opset 17, BN folded into the convs) and ``functions``
(``export_modules_as_functions``: each conv block becomes a model-local function, its
Conv inside ``model.functions``).
"""

from __future__ import annotations

from pathlib import Path

from samples.exporters._tiny import cli, export_legacy, tiny_cnn


def plain(out: Path) -> None:
    export_legacy(out)


def functions(out: Path) -> None:
    block = type(tiny_cnn().block1)
    export_legacy(out, export_modules_as_functions={block})


if __name__ == "__main__":
    raise SystemExit(cli({"plain": plain, "functions": functions}))
