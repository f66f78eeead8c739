"""Serving inputs (arrays, mappings, DataFrames) to ONNX Runtime feeds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from onnx_selenc._onnx.ort_types import ORT_STRING, ort_dtype

if TYPE_CHECKING:
    import onnxruntime as ort


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, numpy dtype (``None``: not cast) and shape (``None``: free)."""

    name: str
    dtype: np.dtype[Any] | None
    shape: tuple[int | None, ...]


def input_specs(session: ort.InferenceSession) -> tuple[InputSpec, ...]:
    """The session's inputs, with the dtype each is cast to (strings: never cast)."""
    return tuple(
        InputSpec(
            i.name,
            np.dtype(object) if i.type == ORT_STRING else ort_dtype(i.type),
            tuple(d if isinstance(d, int) and d > 0 else None for d in i.shape),
        )
        for i in session.get_inputs()
    )


def to_feeds(model_input: Any, inputs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """Convert a pyfunc input to ONNX Runtime feeds.

    What is accepted is described in :meth:`onnx_selenc.mlflow.EncryptedOnnxModel.predict`.

    Raises:
        ValueError: the input does not fit ``inputs``.
    """
    names = [i.name for i in inputs]
    by_name = {i.name: i for i in inputs}
    if _is_dataframe(model_input):
        if set(names) <= {str(c) for c in model_input.columns}:
            arrays = {n: _column_array(model_input[n], by_name[n]) for n in names}
        elif len(inputs) == 1:
            arrays = {names[0]: _rows_array(model_input, inputs[0])}
        else:
            raise ValueError(
                f"the DataFrame needs one column per model input ({', '.join(names)}); "
                f"it has {', '.join(map(str, model_input.columns))}"
            )
    elif isinstance(model_input, Mapping):
        given = {str(k) for k in model_input}
        missing, extra = set(names) - given, given - set(names)
        if missing or extra:
            raise ValueError(
                f"the model's inputs are {', '.join(names)}; "
                + (f"missing {', '.join(sorted(missing))}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unknown {', '.join(sorted(extra))}" if extra else "")
            )
        arrays = {n: np.asarray(model_input[n]) for n in names}
    else:
        if len(inputs) != 1:
            raise ValueError(
                f"the model has {len(inputs)} inputs ({', '.join(names)}): pass a dict of "
                "name -> array or a DataFrame with one column per input"
            )
        arrays = {names[0]: np.asarray(model_input)}
    return {n: _cast(arrays[n], by_name[n]) for n in names}


def _is_dataframe(value: Any) -> bool:
    # Checked by name so that numpy-only callers never import pandas.
    return type(value).__name__ == "DataFrame" and hasattr(value, "columns")


def _sample_dims(spec: InputSpec, per_sample: int) -> tuple[int, ...]:
    """The dims after the batch dim for ``per_sample`` values; one free dim is inferred."""
    dims = spec.shape[1:]
    free = [i for i, d in enumerate(dims) if d is None]
    fixed = int(np.prod([d for d in dims if d is not None], dtype=np.int64))
    if len(free) > 1 or (not free and fixed != per_sample) or (free and per_sample % fixed):
        shape = ["N", *("?" if d is None else str(d) for d in dims)]
        raise ValueError(
            f"{per_sample} values per row do not fit input {spec.name} of shape "
            f"[{', '.join(shape)}]"
        )
    return tuple(per_sample // fixed if d is None else d for d in dims)


def _rows_array(frame: Any, spec: InputSpec) -> np.ndarray:
    values = np.asarray(frame.to_numpy())
    if values.dtype == object:
        raise ValueError(
            f"a DataFrame for input {spec.name} needs one scalar column per value, or a "
            f"column named {spec.name} holding one sample per row"
        )
    rows = values.shape[0]
    return values.reshape(rows, *_sample_dims(spec, int(np.prod(values.shape[1:]))))


def _column_array(column: Any, spec: InputSpec) -> np.ndarray:
    stacked = np.stack([np.asarray(cell) for cell in column])
    if len(spec.shape) <= 1 or stacked.ndim == len(spec.shape):
        return stacked
    rows = stacked.shape[0]
    return stacked.reshape(rows, *_sample_dims(spec, int(np.prod(stacked.shape[1:]))))


def _cast(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    if spec.dtype is None or array.dtype == spec.dtype:
        return array
    if not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
        raise ValueError(f"input {spec.name} is {spec.dtype}; got {array.dtype} values")
    return array.astype(spec.dtype)
