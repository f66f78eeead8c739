"""PyTorch's default exporter (``torch.onnx.export(..., dynamo=True)``, onnxscript).

Variants: ``inline`` (weights in the file), ``external`` (the exporter's default:
weights in ``<output>.data``), ``cond`` (``torch.cond``: the two branches' convs live in
the ``If`` node's subgraphs and read main-graph initializers).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

from samples.exporters._tiny import cli, example_input, tiny_cnn


def _export(model, out: Path, external: bool) -> None:
    import torch

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example_input(),), dynamo=True, external_data=external,
            input_names=["input"], output_names=["logits"], verbose=False,
        )  # fmt: skip
        program.save(str(out), external_data=external)


def inline(out: Path) -> None:
    _export(tiny_cnn(), out, external=False)


def external(out: Path) -> None:
    _export(tiny_cnn(), out, external=True)


def cond(out: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(1)

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.pos = nn.Conv2d(8, 8, 3, padding=1)
            self.neg = nn.Conv2d(8, 8, 5, padding=2)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            y = torch.cond(
                x.mean() > 0.1, lambda t: self.pos(t), lambda t: self.neg(t).relu(), (x,)
            )
            return self.head(y).mean((2, 3))

    _export(Branchy().eval(), out, external=False)


if __name__ == "__main__":
    raise SystemExit(cli({"inline": inline, "external": external, "cond": cond}))
