"""Loading and atomically saving ONNX models, inline or with external data."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ._io import atomic_write, refuse_overwrite_of_input
from ._tensors import external_info
from .exceptions import FormatError

# Protobuf cannot serialise a message of 2 GiB or more; leave headroom for metadata.
PROTO_LIMIT = 2**31 - 2**26


def load_model(path: str | os.PathLike[str], *, load_external: bool = True) -> onnx.ModelProto:
    """Load an ONNX model with a clear error for anything that is not one.

    Raises:
        FileNotFoundError: no such file.
        FormatError: not a valid ONNX model, or its external data is missing/out of range.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise FormatError(f"{path} is not a valid ONNX model: {exc}") from None
    if not model.HasField("graph") or not model.opset_import:
        raise FormatError(f"{path} is not a valid ONNX model (no graph or opset)")
    if load_external and external_files(model, path.parent):
        for t in _external_tensors(model):
            external_info(t, path.parent)  # bounds-check before onnx reads anything
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as exc:
            raise FormatError(f"cannot read the external data of {path}: {exc}") from None
    return model


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    from ._digest import iter_tensors

    return [t for t in iter_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]


def external_files(model: onnx.ModelProto, base_dir: str | os.PathLike[str]) -> list[Path]:
    """The external data files a (not yet loaded) model refers to."""
    files = []
    for t in _external_tensors(model):
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        if loc is not None:
            p = (Path(base_dir) / loc).resolve()
            if p not in files:
                files.append(p)
    return files


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool,
    protect: list[Path] | None = None,
) -> list[Path]:
    """Write a model atomically; with external data, beside it as ``<name>.data``.

    Returns the files written. ``protect`` lists input files that must not be touched.

    Raises:
        ValueError: an output path would overwrite a protected input.
    """
    path = Path(path)
    data_name = path.name + ".data"
    refuse_overwrite_of_input(path, list(protect or []))
    refuse_overwrite_of_input(path.parent / data_name, list(protect or []))
    if not external_data and model.ByteSize() < PROTO_LIMIT:
        atomic_write(path, model.SerializeToString())
        return [path]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        onnx.save_model(
            model,
            str(tmp / path.name),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        written = [path]
        if (tmp / data_name).exists():
            os.replace(tmp / data_name, path.parent / data_name)
            written.append(path.parent / data_name)
        os.replace(tmp / path.name, path)
        return written
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)


def model_inputs(path: str | os.PathLike[str]) -> tuple[list[str], list[int | str]]:
    """Names of the model's data inputs, and the first one's shape (ints where fixed)."""
    model = load_model(path, load_external=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        raise FormatError(f"{path} has no data input")
    dims = inputs[0].type.tensor_type.shape.dim
    shape: list[int | str] = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                              for d in dims]
    return [i.name for i in inputs], shape
