"""Loading and atomically saving ONNX models, inline or with external data.

Parsing a model without the raw bytes of its large tensors is ``_onnx/stripped``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import google.protobuf.json_format
import google.protobuf.text_format
import numpy as np
import onnx
import onnx.parser
from google.protobuf.message import DecodeError, EncodeError

from onnx_selenc._onnx.files import (
    Staging,
    refuse_existing_outputs,
    refuse_overwrite_of_input,
    staged_outputs,
    write_new_file,
)
from onnx_selenc._onnx.graph import conv_functions, inline_conv_functions
from onnx_selenc._onnx.tensors import (
    all_tensors,
    external_info,
    external_location,
    initializer_tensors,
    iter_tensors,
)
from onnx_selenc.exceptions import FormatError, UnsupportedModel

# Protobuf cannot serialise a message of 2 GiB or more; leave headroom for metadata.
PROTO_LIMIT = 2**31 - 2**26
# onnx.save_model's default: tensors whose data reaches this size (as sys.getsizeof
# measures the bytes object) go to the external file.
_EXTERNAL_SIZE_THRESHOLD = 1024

Buffer = bytes | memoryview


def read_model_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read a model file in one piece.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    with open(path, "rb") as fh:
        return fh.read()


def read_model_buffer(path: str | os.PathLike[str]) -> memoryview:
    """Read a model file into a private, writable buffer (faster than ``read()``).

    The buffer is a numpy allocation: numpy asks for transparent huge pages, which
    halves the cost of first touching a large buffer (a ``bytes`` object faults in
    every 4 KiB page). Being private and writable, restored weights can be written
    into it in place.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        buffer = np.empty(size, dtype=np.uint8)
        view = buffer.data
        got = 0
        while got < size:
            n = fh.readinto(view[got:])
            if not n:
                break
            got += n
        rest = fh.read()
    if rest:  # the file grew while being read: take what is there now
        return memoryview(bytearray(view[:got]) + rest)
    return view[:got]


# What the text serialisations onnx picks by file suffix (.textproto, .json, .onnxtxt)
# raise on bytes they cannot parse: plain Exception subclasses, unlike DecodeError.
_TEXT_PARSE_ERRORS = (
    google.protobuf.text_format.Error,
    google.protobuf.json_format.Error,
    onnx.parser.ParseError,
)


def parse_model(data: Buffer, path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Parse serialised model bytes with a clear error for anything that is not a model.

    Raises:
        FormatError: not a valid ONNX model.
    """
    try:
        model = onnx.load_model_from_string(bytes(data), format=_file_format(path) or "protobuf")
    except (DecodeError, RuntimeWarning, ValueError, *_TEXT_PARSE_ERRORS) as exc:
        raise FormatError(f"{path} is not a valid ONNX model: {exc}") from None
    _check_model(model, path)
    return model


def _file_format(path: str | os.PathLike[str]) -> str | None:
    """The serialisation onnx infers from a file name (``None``: binary protobuf)."""
    return onnx.serialization.registry.get_format_from_file_extension(Path(path).suffix)


def _check_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    if not model.HasField("graph") or not model.opset_import:
        raise FormatError(f"{path} is not a valid ONNX model (no graph or opset)")


def load_model(path: str | os.PathLike[str], *, load_external: bool = True) -> onnx.ModelProto:
    """Load an ONNX model with a clear error for anything that is not one.

    Raises:
        FileNotFoundError: no such file.
        FormatError: not a valid ONNX model, text in it that is not UTF-8, or its
            external data is missing/out of range.
    """
    path = Path(path)
    model = parse_model(read_model_bytes(path), path)
    field_name = undecodable_text(model)
    if field_name is not None:
        raise FormatError(f"{path} is not a valid ONNX model: a {field_name} is not UTF-8 text")
    if load_external:
        load_external_data(model, path)
    return model


def undecodable_text(message: object) -> str | None:
    """The first string field, anywhere in the message, that is not UTF-8; else ``None``.

    protobuf parses such a field and hands it over as ``bytes`` where every reader
    expects ``str`` (``"conv" in op_type`` then raises TypeError). Checked on the paths
    that read a model's graph (encrypt, inspect); the loader needs no walk: its tag
    check refuses any model but the one encrypted.
    """
    stack: list[Any] = [message]
    while stack:
        m = stack.pop()
        for fd in m.DESCRIPTOR.fields:
            if fd.type == fd.TYPE_STRING:
                value = getattr(m, fd.name)
                if isinstance(value, bytes) or (
                    not isinstance(value, str) and any(isinstance(v, bytes) for v in value)
                ):
                    return fd.full_name
            elif fd.type == fd.TYPE_MESSAGE:
                if _is_repeated(fd):
                    stack.extend(getattr(m, fd.name))
                elif m.HasField(fd.name):
                    stack.append(getattr(m, fd.name))
    return None


def _is_repeated(fd: Any) -> bool:
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == fd.LABEL_REPEATED  # older protobuf


def with_conv_functions_inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its model-local functions that hold convolutions inlined (the
    walk finds weights only in graphs; see ``_onnx.graph``), or itself if none do.

    Raises:
        UnsupportedModel: such functions in a model over protobuf's 2 GB.
    """
    if not conv_functions(model):
        return model
    if model.ByteSize() >= PROTO_LIMIT:
        raise UnsupportedModel(
            "convolutions inside model-local functions of a model over 2 GB: inline them "
            "first (onnx.inliner.inline_local_functions) with external data"
        )
    return inline_conv_functions(model)


def load_external_data(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Read the external data of a model loaded from ``path`` into the model itself.

    Raises:
        FormatError: its external data is missing or out of range.
    """
    path = Path(path)
    if not external_files(model, path.parent):
        return
    for t in _external_tensors(model):
        external_info(t, path.parent)  # bounds-check before onnx reads anything
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise FormatError(f"cannot read the external data of {path}: {exc}") from None


def _external_tensors(
    model: onnx.ModelProto, tensors: Iterable[onnx.TensorProto] | None = None
) -> list[onnx.TensorProto]:
    every = iter_tensors(model.graph) if tensors is None else tensors
    return [t for t in every if t.data_location == onnx.TensorProto.EXTERNAL]


def external_files(
    model: onnx.ModelProto,
    base_dir: str | os.PathLike[str],
    tensors: Iterable[onnx.TensorProto] | None = None,
) -> list[Path]:
    """The external data files a (not yet loaded) model refers to.

    ``tensors``: ``iter_tensors(model.graph)``, if already listed.

    Raises:
        FormatError: a tensor names no file, or one outside ``base_dir`` or missing.
    """
    files: list[Path] = []
    seen: set[object] = set()
    for t in _external_tensors(model, tensors):
        # Each location is checked once: models hold hundreds of tensors in one file.
        loc = {e.key: e.value for e in t.external_data}.get("location")
        if loc not in seen:
            seen.add(loc)
            p = external_location(t, base_dir)
            if p not in files:
                files.append(p)
    return files


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool,
    protect: list[Path] | None = None,
    replace: bool = True,
    stage: Staging | None = None,
    serialised: bytes | None = None,
) -> list[Path]:
    """Write a model; with external data, beside it as ``<name>.data``.

    The model and its data are written under temporary names and appear together
    (see :func:`onnx_selenc._onnx.files.staged_outputs`): with ``stage``, when that set of
    outputs is committed (the caller adds its own files to it); without, before this
    returns. Replacing an earlier output also removes a ``<name>.data`` the new model
    does not use. With external data the model is left as written: its large
    initializers point to the data file and hold no raw data any more.

    Args:
        model: the model to write (its tensors' data in memory or already external).
        path: the model file; its data goes to ``<name>.data`` beside it.
        external_data: write large tensors to ``<name>.data``.
        protect: input files that must not be touched.
        replace: replace an existing model / ``<name>.data`` (else refuse them).
        stage: an open set of staged outputs to add these files to, or None.
        serialised: ``model.SerializeToString()`` if the caller has it already (the
            self-check does): written as it is when the model goes in one file.

    Returns:
        The files written (the model, then its data if any).

    Raises:
        ValueError: an output path would overwrite a protected input.
        FileExistsError: an output exists and ``replace`` is false, or is a folder.
    """
    path = Path(path)
    data_path = path.with_name(path.name + ".data")
    refuse_overwrite_of_input(path, list(protect or []))
    refuse_overwrite_of_input(data_path, list(protect or []))
    refuse_existing_outputs([path, data_path], overwrite=replace, how="choose another path")
    with contextlib.ExitStack() as stack:
        if stage is None:
            stage = stack.enter_context(staged_outputs())
        staged = stage.path(path)
        written = [path]
        if _write_model(
            model, staged, data_path.name, external_data=external_data, serialised=serialised
        ):
            assert stage.path(data_path) == staged.with_name(data_path.name)
            stage.place(data_path, replace=replace)  # the data first: the model needs it
            written.append(data_path)
        stage.place(path, replace=replace)
        if replace and len(written) == 1:
            stage.drop(data_path)  # an earlier model's data; after the model that used it
    return written


def _write_model(
    model: onnx.ModelProto,
    path: Path,
    data_name: str,
    *,
    external_data: bool,
    serialised: bytes | None = None,
) -> bool:
    """Write a model to the new file ``path``, its external data (if any) beside it.

    Returns:
        Whether the data file was written.
    """
    if not external_data:
        if serialised is None:
            serialised = serialise_if_small(model)
        if serialised is not None:
            write_new_file(path, serialised)
            return False
    if _plain_for_external(model) and _file_format(path) in (None, "protobuf"):
        return _save_external(model, path, data_name)
    # tensors already marked external: let onnx resolve them as it always has
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_name,
        size_threshold=_EXTERNAL_SIZE_THRESHOLD,
    )
    return (path.parent / data_name).exists()


def serialise_if_small(model: onnx.ModelProto) -> bytes | None:
    """The serialised model if it is under PROTO_LIMIT, else ``None``.

    ``ByteSize()`` costs a full encoding with upb, so the model is encoded once and
    measured; a lower bound from the raw tensors' shapes skips models that cannot fit
    (failing to encode one over 2 GiB takes as long as encoding it).
    """
    floor = 0
    for t in iter_tensors(model.graph):
        if t.HasField("raw_data"):
            try:
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            except (KeyError, ValueError, TypeError):
                continue
            floor += int(np.prod(t.dims, dtype=np.int64)) * itemsize
    if floor >= PROTO_LIMIT:
        return None
    try:
        data = model.SerializeToString()
    except (EncodeError, ValueError):
        return None
    return data if len(data) < PROTO_LIMIT else None


def _plain_for_external(model: onnx.ModelProto) -> bool:
    """No tensor is marked external yet (the only case :func:`_save_external` handles)."""
    return not any(
        t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL
        for t in all_tensors(model)
    )


def _save_external(model: onnx.ModelProto, path: Path, data_name: str) -> bool:
    """What ``onnx.save_model(save_as_external_data=True, all_tensors_to_one_file=True,
    location=data_name, size_threshold=1024)`` writes, reading each tensor's bytes once.

    Same tensors (initializers of every graph, in onnx's order), same threshold test,
    same offsets (back to back, no alignment) and ``external_data`` entries.

    Returns:
        Whether the data file was written.
    """
    from onnx.external_data_helper import set_external_data

    data_file = None
    try:
        for tensor in initializer_tensors(model.graph):
            if not tensor.HasField("raw_data"):
                continue
            raw = tensor.raw_data  # one copy out of protobuf, then straight to disk
            if sys.getsizeof(raw) < _EXTERNAL_SIZE_THRESHOLD:
                continue
            if data_file is None:
                data_file = open(path.with_name(data_name), "wb")  # noqa: SIM115
            offset = data_file.tell()
            data_file.write(raw)
            del raw
            set_external_data(tensor, data_name, offset, data_file.tell() - offset)
            tensor.ClearField("raw_data")
    finally:
        if data_file is not None:
            data_file.close()
    with open(path, "wb") as fh:
        fh.write(model.SerializeToString())
    return data_file is not None


def model_inputs(path: str | os.PathLike[str]) -> tuple[list[str], list[int | str]]:
    """Names of the model's data inputs, and the first one's shape (ints where fixed)."""
    model = load_model(path, load_external=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        raise FormatError(f"{path} has no data input")
    dims = inputs[0].type.tensor_type.shape.dim
    shape: list[int | str] = [
        d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in dims
    ]
    return [i.name for i in inputs], shape
