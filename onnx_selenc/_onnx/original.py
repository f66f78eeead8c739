"""The plain file as it was: what ``decrypt`` needs to give it back byte for byte.

``encrypt`` records it from the plain model as read, before its external data is
loaded, and stores it in the encrypted model's metadata (``onnx_selenc.original``,
public, covered by the model digest like any other metadata). Weight values are not in
it: the sealed originals give those back. It holds how each tensor was stored (an
explicit ``data_location``, the ``external_data`` entries in their order), each external
data file's name, size and SHA-256, the model file's SHA-256, and, where the file cannot
come back byte for byte, why (said at encrypt time).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import EncodeError

from onnx_selenc._onnx.tensors import every_tensor, external_info
from onnx_selenc.exceptions import FormatError

ORIGINAL_KEY = "onnx_selenc.original"
_FORMAT = "onnx-selenc-original"
_VERSION = 1
_CHUNK = 16 << 20


@dataclass(frozen=True)
class TensorStorage:
    """How one tensor was stored, where that is not the default (inline, no location).

    Attributes:
        index: its position in :func:`_tensors.every_tensor`.
        data_location: the field's value where the file sets it, else ``None``.
        entries: its ``external_data`` key/value pairs, in the file's order.
    """

    index: int
    data_location: int | None
    entries: tuple[tuple[str, str], ...]

    @property
    def external(self) -> bool:
        return self.data_location == onnx.TensorProto.EXTERNAL

    def place(self) -> tuple[str, int, int | None]:
        """``(file, offset, length)`` of an external tensor (length ``None``: to the end)."""
        found = dict(self.entries)
        length = found.get("length")
        return (
            data_file_name(found.get("location", "")),
            int(found.get("offset", "0")),
            None if length is None else int(length),
        )


@dataclass(frozen=True)
class DataFile:
    """An external data file of the plain model: its name beside the model, size, digest."""

    location: str
    size: int
    sha256: str


@dataclass(frozen=True)
class OriginalFile:
    """The plain model file, as :func:`record_original` found it.

    Attributes:
        sha256: hex digest of the model file.
        tensor_count: how many tensors :func:`every_tensor` walks; ``None`` when the
            encrypted model is restructured (the storage then does not apply).
        tensors: the tensors stored otherwise than inline without a location.
        files: its external data files.
        problem: why ``decrypt`` cannot give the file back byte for byte; ``None``: it can.
    """

    sha256: str
    tensor_count: int | None
    tensors: tuple[TensorStorage, ...]
    files: tuple[DataFile, ...]
    problem: str | None

    @property
    def byte_identical(self) -> bool:
        return self.problem is None

    def to_json(self) -> str:
        doc = {
            "format": _FORMAT,
            "version": _VERSION,
            "sha256": self.sha256,
            "tensor_count": self.tensor_count,
            "tensors": [[t.index, t.data_location, [list(e) for e in t.entries]]
                        for t in self.tensors],
            "files": [[f.location, f.size, f.sha256] for f in self.files],
            "problem": self.problem,
        }  # fmt: skip
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def record_original(
    model: onnx.ModelProto, path: str | os.PathLike[str], *, restructured: str | None = None
) -> OriginalFile:
    """What the model file at ``path`` is made of (``model``: as parsed, external data
    not loaded), and whether ``decrypt`` can write it back byte for byte.

    ``restructured``: why the encrypted model's graph will differ from this one (say,
    inlined functions), or ``None``.

    Raises:
        FormatError: an external data location that is outside the model's folder or
            missing, or an offset or length past its file.
    """
    path = Path(path)
    problems = [] if restructured is None else [restructured]
    text_format = onnx.serialization.registry.get_format_from_file_extension(path.suffix)
    binary = text_format in (None, "protobuf")
    sha, same = _digest_and_compare(path, _reserialised(model) if binary else None)
    if not binary:
        problems.append(f"it is in {text_format} text form (decrypt writes binary protobuf)")
    elif not same:
        problems.append("it does not re-serialise to the same bytes (an unusual encoding)")
    if any(p.key == ORIGINAL_KEY for p in model.metadata_props):
        problems.append(f"its metadata already has an entry {ORIGINAL_KEY}")
    if restructured is not None:
        return OriginalFile(sha, None, (), (), "; ".join(problems))
    tensors: list[TensorStorage] = []
    spans: dict[str, list[tuple[int, int | None]]] = {}
    folder = path.parent
    for i, t in enumerate(every_tensor(model)):
        if not t.HasField("data_location") and not len(t.external_data):
            continue
        storage = TensorStorage(
            i,
            t.data_location if t.HasField("data_location") else None,
            tuple((e.key, e.value) for e in t.external_data),
        )
        tensors.append(storage)
        if storage.external:
            info = external_info(t, folder)  # checked: inside the folder, within the file
            name = data_file_name(dict(storage.entries).get("location", ""))
            spans.setdefault(name, []).append((info.offset, info.length))
    files = []
    for name, places in spans.items():
        if not _safe_name(name):
            problems.append(f"its external data location {name!r} is not a name in its folder")
        size, digest, stray = _scan_data_file(folder / name, places)
        if stray:
            problems.append(f"{name} holds bytes that no tensor refers to")
        files.append(DataFile(name, size, digest))
    total = sum(1 for _ in every_tensor(model))
    return OriginalFile(sha, total, tuple(tensors), tuple(files), "; ".join(problems) or None)


def data_file_name(location: str) -> str:
    """A location as the file name it is, relative to the model's folder (``a/../b`` is
    ``b``): two spellings of one file are one file."""
    return posixpath.normpath(location.replace(os.sep, "/")) if location else ""


def _safe_name(name: str) -> bool:
    """A relative name that stays inside the folder (``decrypt`` writes it there)."""
    return (
        bool(name)
        and not posixpath.isabs(name)
        and name.split("/")[0] != ".."
        and ("\0" not in name)
    )


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _reserialised(model: onnx.ModelProto) -> bytes | None:
    """The parsed model as protobuf writes it back (None past 2 GB: protobuf cannot
    write it in one piece)."""
    try:
        return model.SerializeToString()
    except (EncodeError, ValueError):
        return None


def _digest_and_compare(path: Path, data: bytes | None) -> tuple[str, bool]:
    """The SHA-256 (hex) of a file and whether its bytes are ``data``, in one read
    (comparing the bytes costs a fraction of hashing a second copy of them)."""
    digest = hashlib.sha256()
    same, start = data is not None, 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            # (a bytes slice compares by memcmp; a memoryview compares item by item)
            if same and data is not None:
                same = data[start : start + len(chunk)] == chunk
            start += len(chunk)
    return digest.hexdigest(), same and data is not None and start == len(data)


def _scan_data_file(path: Path, places: list[tuple[int, int | None]]) -> tuple[int, str, bool]:
    """Size and SHA-256 of a data file, and whether a byte no tensor covers is not zero
    (``decrypt`` writes the tensors into a file of zeros)."""
    size = path.stat().st_size
    covered = sorted(
        (offset, size if length is None else offset + length) for offset, length in places
    )
    digest = hashlib.sha256()
    stray = False
    gaps = list(_gaps(covered, size))
    with open(path, "rb") as fh:
        start = 0
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            stop = start + len(chunk)
            for lo, hi in gaps:
                lo, hi = max(lo, start), min(hi, stop)
                if lo < hi and np.frombuffer(chunk, np.uint8, hi - lo, lo - start).any():
                    stray = True
            start = stop
    return size, digest.hexdigest(), stray


def _gaps(covered: list[tuple[int, int]], size: int) -> Iterator[tuple[int, int]]:
    end = 0
    for lo, hi in covered:
        if lo > end:
            yield end, lo
        end = max(end, hi)
    if end < size:
        yield end, size


def attach_record(model: onnx.ModelProto, record: OriginalFile) -> None:
    """Store the record in the model's metadata (where the model digest covers it)."""
    if not any(p.key == ORIGINAL_KEY for p in model.metadata_props):
        model.metadata_props.add(key=ORIGINAL_KEY, value=record.to_json())


def take_record(model: onnx.ModelProto) -> OriginalFile | None:
    """Remove the record from a model's metadata and return it (``None``: the model has
    none, e.g. it was encrypted before records existed).

    Raises:
        FormatError: a malformed record, or more than one.
    """
    text = drop_record(model)
    return None if text is None else parse_record(text)


def record_text(model: onnx.ModelProto) -> str | None:
    """The record's text, unread and left in place (``None``: the model has none).

    Raises:
        FormatError: more than one.
    """
    values = [p.value for p in model.metadata_props if p.key == ORIGINAL_KEY]
    if len(values) > 1:
        raise FormatError(f"the model has {len(values)} {ORIGINAL_KEY} entries")
    return values[0] if values else None


def drop_record(model: onnx.ModelProto) -> str | None:
    """Remove the record from a model's metadata, unread; return its text (or ``None``).

    Raises:
        FormatError: more than one.
    """
    text = record_text(model)
    if text is None:
        return None
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != ORIGINAL_KEY]
    del model.metadata_props[:]
    for k, v in kept:
        model.metadata_props.add(key=k, value=v)
    return text


def parse_record(text: str | bytes) -> OriginalFile:
    """Read a record, every field type-checked.

    Raises:
        FormatError: not a record of this format, or a field of the wrong type.
    """
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise FormatError(f"the {ORIGINAL_KEY} entry is not JSON") from None
    fields = {"format", "version", "sha256", "tensor_count", "tensors", "files", "problem"}
    if not isinstance(doc, dict) or set(doc) != fields or doc["format"] != _FORMAT:
        raise FormatError(f"the {ORIGINAL_KEY} entry is not a record of the original file")
    if doc["version"] != _VERSION or type(doc["version"]) is not int:
        raise FormatError(f"the {ORIGINAL_KEY} entry has an unknown version")
    try:
        tensors = tuple(
            TensorStorage(_int(i), None if loc is None else _int(loc),
                          tuple((_str(k), _str(v)) for k, v in entries))
            for i, loc, entries in doc["tensors"]
        )  # fmt: skip
        files = tuple(DataFile(_str(n), _int(s), _str(h)) for n, s, h in doc["files"])
        count = doc["tensor_count"]
        problem = doc["problem"]
        record = OriginalFile(
            _str(doc["sha256"]),
            None if count is None else _int(count),
            tensors,
            files,
            None if problem is None else _str(problem),
        )
        for t in record.tensors:
            if t.external:
                t.place()  # offset and length are integers
    except (TypeError, ValueError):
        raise FormatError(f"the {ORIGINAL_KEY} entry is malformed") from None
    return record


def _int(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError("not a non-negative integer")
    return value


def _str(value: object) -> str:
    if type(value) is not str:
        raise TypeError("not a string")
    return value
