"""ONNX Runtime's input type names (``NodeArg.type``) and the numpy dtypes they take."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# Numeric and bool inputs only: string inputs take numpy arrays of ``str`` or ``object``,
# which callers treat on their own (never cast).
ORT_DTYPES: Mapping[str, np.dtype[Any]] = {
    f"tensor({name})": np.dtype(dtype)
    for name, dtype in (
        ("float", "float32"), ("double", "float64"), ("float16", "float16"),
        ("int8", "int8"), ("uint8", "uint8"), ("int16", "int16"), ("uint16", "uint16"),
        ("int32", "int32"), ("uint32", "uint32"), ("int64", "int64"), ("uint64", "uint64"),
        ("bool", "bool"),
    )
}  # fmt: skip
ORT_STRING = "tensor(string)"
FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")


def ort_dtype(type_name: str) -> np.dtype[Any] | None:
    """The numpy dtype of an ONNX Runtime input type; None for strings and unknown types."""
    return ORT_DTYPES.get(type_name)
