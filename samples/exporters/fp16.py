"""onnxconverter-common's float16 conversion (``convert_float_to_float16``).

The tiny CNN from the TorchScript exporter, every float tensor converted to float16;
``keep_io_types``: the graph still takes and returns float32 (through Cast nodes).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from samples.exporters._tiny import cli, export_legacy


def fp16(out: Path) -> None:
    import onnx
    from onnxconverter_common.float16 import convert_float_to_float16

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "float.onnx"
        export_legacy(raw)
        model = convert_float_to_float16(onnx.load(str(raw)), keep_io_types=True)
    onnx.save(model, str(out))


if __name__ == "__main__":
    raise SystemExit(cli({"fp16": fp16}))
