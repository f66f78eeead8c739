"""The onnx package's own model tools on TorchScript exports of :mod:`._edge_nets`.

Variant ``merged``: the padding-mode net (opset 12) and the opset-9 image net are each
brought to opset 13 by ``onnx.version_converter``, prefixed (``A/``, ``B/``) by
``onnx.compose.add_prefix`` and chained by ``onnx.compose.merge_models`` (producer
``onnx.compose.merge_models``): the first net's output feeds the second.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from samples.exporters._edge_nets import export
from samples.exporters._tiny import cli


def merged(out: Path) -> None:
    import onnx
    from onnx import compose, version_converter

    with tempfile.TemporaryDirectory() as tmp:
        pad, img = Path(tmp) / "pad.onnx", Path(tmp) / "img.onnx"
        export("pad", pad, opset_version=12, input_names=["x"], output_names=["y"])
        export("img", img, opset_version=9, input_names=["x"], output_names=["y"])
        a = version_converter.convert_version(onnx.load(str(pad)), 13)
        b = version_converter.convert_version(onnx.load(str(img)), 13)
    a.ir_version = b.ir_version = 8
    a = compose.add_prefix(a, "A/")
    b = compose.add_prefix(b, "B/")
    model = compose.merge_models(a, b, io_map=[(a.graph.output[0].name, b.graph.input[0].name)])
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


if __name__ == "__main__":
    raise SystemExit(cli({"merged": merged}))
