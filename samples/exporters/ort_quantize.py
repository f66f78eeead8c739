"""ONNX Runtime's quantization tool (``onnxruntime.quantization``, producer ``onnx.quantize``).

The float model is the tiny CNN from the TorchScript exporter (opset 17). Variants:
``qdq`` (static, QDQ format: int8 weights behind ``DequantizeLinear``), ``qoperator``
(static, QOperator format: ``QLinearConv`` with uint8/int8 weights), ``dynamic``
(``quantize_dynamic`` of the convs: ``ConvInteger``), ``qdq_int16`` (static QDQ, per
channel, int16 weights and uint16 activations, on the padding-mode net of
:mod:`._edge_nets`: onnx-selenc masks float, float16 and 8-bit weights only, so it must
refuse). Calibration: 8 seeded random inputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from samples.exporters import _edge_nets
from samples.exporters._tiny import INPUT_SHAPE, cli, export_legacy


class _Reader:
    def __init__(self, name: str = "input") -> None:
        rng = np.random.default_rng(0)
        self._batches = iter(
            [{name: rng.standard_normal(INPUT_SHAPE).astype(np.float32)} for _ in range(8)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _float_model(folder: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    raw, prepared = folder / "float.onnx", folder / "float.prep.onnx"
    export_legacy(raw)
    quant_pre_process(str(raw), str(prepared), skip_symbolic_shape=True)
    return prepared


def _static(out: Path, fmt: str) -> None:
    from onnxruntime import quantization as q

    with tempfile.TemporaryDirectory() as tmp:
        q.quantize_static(
            str(_float_model(Path(tmp))), str(out), _Reader(),
            quant_format=q.QuantFormat.QDQ if fmt == "qdq" else q.QuantFormat.QOperator,
            activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
            per_channel=fmt == "qdq",
        )  # fmt: skip


def qdq(out: Path) -> None:
    _static(out, "qdq")


def qoperator(out: Path) -> None:
    _static(out, "qoperator")


def dynamic(out: Path) -> None:
    from onnxruntime import quantization as q

    with tempfile.TemporaryDirectory() as tmp:
        q.quantize_dynamic(
            str(_float_model(Path(tmp))), str(out), op_types_to_quantize=["Conv"],
            weight_type=q.QuantType.QUInt8,
        )  # fmt: skip


def qdq_int16(out: Path) -> None:
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        raw, prepared = Path(tmp) / "float.onnx", Path(tmp) / "float.prep.onnx"
        _edge_nets.export("pad", raw, opset_version=12, input_names=["x"], output_names=["y"])
        quant_pre_process(str(raw), str(prepared), skip_symbolic_shape=True)
        q.quantize_static(
            str(prepared), str(out), _Reader("x"), quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QUInt16, weight_type=q.QuantType.QInt16,
            per_channel=True,
        )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(
        cli({"qdq": qdq, "qoperator": qoperator, "dynamic": dynamic, "qdq_int16": qdq_int16})
    )
