"""ONNX Runtime's offline graph optimiser (``SessionOptions.optimized_model_filepath``).

The tiny CNN from the TorchScript exporter, optimised at ``ORT_ENABLE_EXTENDED`` on the
CPU provider and saved: Conv + Relu become ``com.microsoft:FusedConv``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from samples.exporters._tiny import cli, export_legacy


def extended(out: Path) -> None:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "float.onnx"
        export_legacy(raw)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(out)
        ort.InferenceSession(str(raw), opts, providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    raise SystemExit(cli({"extended": extended}))
