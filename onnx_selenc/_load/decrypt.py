"""Decrypt: the owner's plain model back on disk, as the file it was.

The one place restored weights are written to a file, and only because the owner asked:
tier keys, the top tier's included, never get a file (they restore in memory). The
model is opened and checked as every load checks it (the owner signature, the key id,
the manifest, the model's tag), restored to the top level, and written with each
tensor stored as the plain file stored it and its external data beside it under the
original names (the record ``encrypt`` kept, ``_onnx/original``). Each file's SHA-256
is then compared with the original's, as recorded, before anything is moved into place.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import EncodeError

from onnx_selenc._crypto.keys import refuse_replacing_key_file
from onnx_selenc._load.opened import KeySource, _open, open_key, resolve_model_path
from onnx_selenc._load.restore import restore_opened
from onnx_selenc._onnx.files import (
    refuse_existing_outputs,
    refuse_overwrite_of_input,
    staged_outputs,
    write_new_file,
)
from onnx_selenc._onnx.modelio import save_model, serialise_if_small
from onnx_selenc._onnx.original import OriginalFile, file_sha256, parse_record, record_text
from onnx_selenc._onnx.tensors import every_tensor
from onnx_selenc.exceptions import ByteIdentityWarning, FormatError

_REPLACE = "pass overwrite=True to replace it"


@dataclass(frozen=True)
class DecryptResult:
    """Outcome of :func:`decrypt`.

    Attributes:
        model_files: what was written: the model, then its external data files.
        key_id: the model's key id.
        sha256: hex SHA-256 of the model file written.
        byte_identical: every file written has the SHA-256 the original had (as
            ``encrypt`` recorded it).
        problem: why the files are not the original's bytes (``None`` when they are);
            the weights are the original's bit for bit either way.
    """

    model_files: tuple[Path, ...]
    key_id: str
    sha256: str
    byte_identical: bool
    problem: str | None = None


def decrypt(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    key: KeySource,
    passphrase: str | None = None,
    overwrite: bool = False,
) -> DecryptResult:
    """Write the plain model an encrypted one was made from, with the owner key.

    The model is checked as every load checks it (owner signature, key id, manifest,
    the model's tag) before anything is restored. Its external data files go beside
    ``output_path`` under the names the original gave them. All files are written under
    temporary names and appear together as the last step: an error, Ctrl-C or SIGTERM
    leaves no file behind.

    Args:
        model_path: the encrypted model (or a packaged folder).
        output_path: the plain model to write; never an input.
        key: the owner key file (or its :class:`LevelKey`); a tier key is refused.
        passphrase: of a protected key file.
        overwrite: replace existing files at ``output_path`` and the data file names
            (never an input, never a key file).

    Returns:
        What was written, and whether it is the original's bytes (SHA-256 compared).

    Warns:
        ByteIdentityWarning: the files written are not the original's bytes (the model
            was encrypted before such records were kept, or ``encrypt`` warned then).

    Raises:
        ValueError: ``key`` is a tier key, or ``output_path`` is an input.
        FileExistsError: an output exists (unless ``overwrite``), or is a key file.
        KeyMismatch, InvalidBundle, FormatError, NotEncrypted: as for ``restore_model``.
    """
    model_path, output_path = resolve_model_path(model_path), Path(output_path)
    owner = open_key(key, passphrase=passphrase)
    if not owner.is_owner:
        raise ValueError(
            f"decrypt needs the model's owner key; this is a level-{owner.level} tier key "
            f"(of {owner.levels}): tier keys, the top tier's too, never get a plain file; "
            "they restore the model in memory only"
        )
    key_files = [Path(key)] if isinstance(key, str | os.PathLike) else []
    opened = _open(model_path, owner, None, None)
    inputs = [model_path, *key_files, *opened.files]
    _refuse_output(output_path, inputs, overwrite)
    opened.inline = True  # every weight into the model: it is written out below
    # Read before restoring (which drops it); trusted once the model's tag checks out.
    text = record_text(opened.stripped.model)
    model = restore_opened(opened).model
    record = None if text is None else parse_record(text)
    writes = _lay_out(model, record)
    if writes is None:
        return _write_as_restored(model, output_path, inputs, overwrite, record, owner.key_id)
    assert record is not None
    folder = output_path.parent
    data_paths = [_data_path(folder, f.location, output_path) for f in record.files]
    for path in data_paths:
        _refuse_output(path, inputs, overwrite)
    serialised = _serialise(model)
    sha = hashlib.sha256(serialised).hexdigest()
    same = sha == record.sha256
    with staged_outputs() as stage:
        for path, data_file in zip(data_paths, record.files, strict=True):
            staged = stage.path(path)
            _write_data_file(staged, data_file.size, writes[data_file.location])
            same = same and file_sha256(staged) == data_file.sha256
            stage.place(path, replace=overwrite)
        write_new_file(stage.path(output_path), serialised)
        stage.place(output_path, replace=overwrite)
    problem = None if same else record.problem or _UNEXPECTED
    if problem is not None:
        _warn(problem)
    return DecryptResult((output_path, *data_paths), owner.key_id, sha, same, problem)


_UNEXPECTED = (
    "the files written differ from the original's SHA-256 recorded at encryption, "
    "which encrypt expected to match (a bug in onnx-selenc)"
)


def _warn(problem: str) -> None:
    warnings.warn(
        f"the decrypted files are not the original's bytes: {problem}; every weight is "
        "the original's bit for bit",
        ByteIdentityWarning,
        stacklevel=3,
    )


def _refuse_output(path: Path, inputs: list[Path], overwrite: bool) -> None:
    refuse_overwrite_of_input(path, inputs)
    refuse_existing_outputs([path], overwrite=overwrite, how=_REPLACE)
    refuse_replacing_key_file(path)


def _data_path(folder: Path, name: str, model_file: Path) -> Path:
    """Where an external data file goes: its name in the output's folder, never outside
    it (the record is authenticated, but a path is checked where it is used)."""
    path = folder / name
    if (
        not name
        or "\0" in name
        or posixpath.normpath(name) != name
        or posixpath.isabs(name)
        or name.split("/")[0] == ".."
        or folder.resolve() not in path.resolve().parents
    ):
        raise FormatError(f"external data location {name!r} is not a name in the model's folder")
    if path.resolve() == model_file.resolve():
        raise ValueError(
            f"the original's external data file {name} has the name of the output model: "
            "choose another output name"
        )
    return path


def _lay_out(
    model: onnx.ModelProto, record: OriginalFile | None
) -> dict[str, list[tuple[int, bytes]]] | None:
    """Store every tensor as the plain file did; returns each data file's ``(offset,
    bytes)`` writes, moved out of the model. ``None`` (model untouched): no record, or
    one of another structure (the encrypted graph was restructured)."""
    if record is None or record.tensor_count is None:
        return None
    tensors = list(every_tensor(model))
    if len(tensors) != record.tensor_count:
        return None
    storage = {s.index: s for s in record.tensors}
    writes: dict[str, list[tuple[int, bytes]]] = {f.location: [] for f in record.files}
    for i, tensor in enumerate(tensors):
        del tensor.external_data[:]
        s = storage.get(i)
        if s is None or s.data_location is None:
            tensor.ClearField("data_location")
        else:
            tensor.data_location = s.data_location  # type: ignore[assignment]
        if s is None:
            continue
        for k, v in s.entries:
            tensor.external_data.add(key=k, value=v)
        if s.external:
            name, offset, _ = s.place()
            if name not in writes:
                raise FormatError(f"the record of the original names no data file {name!r}")
            writes[name].append((offset, tensor.raw_data))
            tensor.ClearField("raw_data")
    return writes


def _serialise(model: onnx.ModelProto) -> bytes:
    try:
        return model.SerializeToString()
    except (EncodeError, ValueError):
        raise FormatError(
            "the restored model is over 2 GB without its external data: protobuf cannot "
            "write it in one piece"
        ) from None


def _write_data_file(path: Path, size: int, writes: list[tuple[int, bytes]]) -> None:
    """A new file of ``size`` bytes: zeros (sparse where the file system allows) with
    each tensor's bytes at its offset."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.truncate(size)
        for offset, data in sorted(writes, key=lambda w: w[0]):
            fh.seek(offset)
            fh.write(data)


def _write_as_restored(
    model: onnx.ModelProto,
    output_path: Path,
    inputs: list[Path],
    overwrite: bool,
    record: OriginalFile | None,
    key_id: str,
) -> DecryptResult:
    """The restored model as it is (inline, or past 2 GB with ``<output>.data``): no
    record says how the original was stored, or it no longer applies."""
    for tensor in every_tensor(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            tensor.ClearField("data_location")
    serialised = serialise_if_small(model)
    written = save_model(
        model,
        output_path,
        external_data=serialised is None,
        protect=inputs,
        replace=overwrite,
        serialised=serialised,
    )
    sha = file_sha256(output_path)
    same = record is not None and sha == record.sha256 and len(written) == 1
    problem = None
    if not same:
        problem = (
            record.problem or _UNEXPECTED
            if record is not None
            else "the model was encrypted by a version of onnx-selenc that kept no record "
            "of how the original file was stored"
        )
        _warn(problem)
    return DecryptResult(tuple(written), key_id, sha, same, problem)
