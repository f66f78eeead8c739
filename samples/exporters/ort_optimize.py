"""ONNX Runtime's offline graph optimiser (``SessionOptions.optimized_model_filepath``).

Variants, on the CPU provider:

- ``extended``: the tiny CNN from the TorchScript exporter at ``ORT_ENABLE_EXTENDED``:
  Conv + Relu become ``com.microsoft:FusedConv``;
- ``all``: the shared-weight net of :mod:`._edge_nets` (TorchScript, opset 13) at
  ``ORT_ENABLE_ALL``: 2-D convs become ``com.microsoft.nchwc:Conv`` with reordered
  (blocked) weights, which onnx-selenc reports unsupported; the NCHWc block size is the
  CPU's vector width, so the file depends on the machine that made it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from samples.exporters import _edge_nets
from samples.exporters._tiny import cli, export_legacy


def _optimise(raw: Path, out: Path, level: str) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(raw), opts, providers=["CPUExecutionProvider"])


def extended(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "float.onnx"
        export_legacy(raw)
        _optimise(raw, out, "ORT_ENABLE_EXTENDED")


def all_levels(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "float.onnx"
        _edge_nets.export("shared", raw, opset_version=13, input_names=["x", "v"])
        _optimise(raw, out, "ORT_ENABLE_ALL")


if __name__ == "__main__":
    raise SystemExit(cli({"extended": extended, "all": all_levels}))
