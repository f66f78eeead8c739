"""Model digest: one SHA-256 over everything that defines an encrypted model.

Covers the graph structure, every attribute, all metadata except the onnx-selenc
entries themselves, and every tensor's bytes, wherever they are stored. The digest
is the same whether tensor data is inline or in an external file, so a model can be
checked without loading its external data into memory. Any edit after encryption
(a masked weight, a BatchNorm scale, a node) changes it.

The skeleton (the model without tensor storage) is rebuilt beside the model, never by
clearing its tensors, and large buffers are hashed on a worker thread (docs/DESIGN.md,
"Digest and loader").

The same byte stream can feed level tags (``_seal.ModelTagger``, AES-GMAC) in the
same pass: the encryptor computes the digest and every level's tag at once; the
loader computes only its level's tag (ten times cheaper than SHA-256).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_selenc._crypto import seal as _seal
from onnx_selenc._crypto.skeleton import (
    STORAGE_FIELDS,
    HasUnknownFields,
    metadata_pairs,
    normalise,
    skeleton_model,
)
from onnx_selenc._onnx.tensors import Region, external_info, iter_tensors
from onnx_selenc.exceptions import FormatError

_DOMAIN = b"onnx-selenc/v1/model-digest\0"
_CHUNK = 1 << 24
_THREAD_MIN = 1 << 20  # smaller buffers are hashed inline: a hand-off costs more
# Pieces under _SMALL_PIECE bytes are gathered and hashed in batches of _SMALL_BATCH.
_SMALL_PIECE = 1 << 16
_SMALL_BATCH = 1 << 16


@dataclass(frozen=True)
class ExternalData:
    """Where an external tensor's bytes are, resolved and bounds-checked."""

    name: str
    path: Path
    offset: int
    length: int


# What the digest hashes for one tensor: its bytes, the tensor itself when they are
# external (resolved when the hash reaches it), or an already resolved location.
Source = bytes | memoryview | onnx.TensorProto | ExternalData | Region


class PatchGate:
    """Lets tensors be patched in place in the buffer the digest is still hashing.

    The digest must see every tensor as the file has it, but copying each restored
    tensor only to keep the original bytes for the hash costs their whole size in
    memory and time. Instead, before the loader overwrites rows of a region it calls
    :meth:`before_patch`: if the hasher is inside that region, it waits until the
    hasher is done with it; if the hasher has not reached it yet, the original rows
    are kept, and the hasher later hashes a copy of the region with them put back.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._hashing: int | None = None
        self._done: set[int] = set()
        self._saved: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def before_patch(self, start: int, rows_view: np.ndarray, rows: np.ndarray) -> None:
        """Call before writing ``rows_view[rows]``, a 2-D view of the region at ``start``."""
        with self._cond:
            while self._hashing == start:
                self._cond.wait()
            if start not in self._done:
                original = np.ascontiguousarray(rows_view[rows])
                self._saved[start] = (rows, original.view(np.uint8).reshape(len(rows), -1))

    def _begin(self, start: int) -> tuple[np.ndarray, np.ndarray] | None:
        with self._cond:
            self._hashing = start
            return self._saved.pop(start, None)

    def _end(self, start: int) -> None:
        with self._cond:
            self._hashing = None
            self._done.add(start)
            self._cond.notify_all()


def model_digest(
    model: onnx.ModelProto,
    base_dir: str | os.PathLike[str] | None,
    *,
    exclude_metadata: frozenset[str] = frozenset(),
    taggers: Sequence[_seal.ModelTagger] = (),
) -> str:
    """SHA-256 of a model, independent of where its tensor bytes are stored.

    Args:
        model: the model; external data may be loaded or not.
        base_dir: folder of the model file, for tensors whose data is external.
        exclude_metadata: ``metadata_props`` keys left out (the bundle itself).
        taggers: level taggers fed the same bytes in the same pass.

    Returns:
        ``"sha256:<hex>"``.
    """
    skeleton = skeleton_bytes(model, exclude_metadata)
    normalise(model)
    return hash_model(skeleton, tensor_sources(model), base_dir, overlap=True, taggers=taggers)


def skeleton_bytes(
    model: onnx.ModelProto, exclude_metadata: frozenset[str], *, rebuild: bool = True
) -> bytes:
    """Deterministic serialisation of the model without tensor storage or excluded metadata.

    Every tensor :func:`iter_tensors` yields loses ``raw_data``, ``external_data`` and
    ``data_location``; the metadata entries kept are rewritten as plain key/value
    pairs. The model itself is not modified.

    Args:
        model: the model.
        exclude_metadata: ``metadata_props`` keys left out.
        rebuild: build the skeleton field by field beside the model (no copy of the
            tensor data); else copy the whole model and clear the copy (faster when
            the model holds little data).
    """
    try:
        if not rebuild:
            raise HasUnknownFields
        skeleton = skeleton_model(model, exclude_metadata)
    # Unknown fields would be dropped by rebuilding; text that is not UTF-8 (protobuf
    # gives bytes) cannot be set field by field: copy everything, then clear.
    except (HasUnknownFields, UnicodeDecodeError):
        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(model)
        for t in iter_tensors(skeleton.graph):
            for name in STORAGE_FIELDS:
                t.ClearField(name)
        kept = metadata_pairs(skeleton, exclude_metadata)
        del skeleton.metadata_props[:]
        for k, v in kept:
            skeleton.metadata_props.add(key=k, value=v)
    return skeleton.SerializeToString(deterministic=True)


def prepare_digest(
    model: onnx.ModelProto,
    base_dir: str | os.PathLike[str] | None,
    *,
    exclude_metadata: frozenset[str] = frozenset(),
    raw_of: Callable[[onnx.TensorProto], memoryview | Region | None] | None = None,
    tensors: list[onnx.TensorProto] | None = None,
) -> tuple[bytes, list[Source]]:
    """Everything of :func:`model_digest` that reads the model, done now.

    ``tensors``: ``list(iter_tensors(model.graph))``, if already listed.

    The result can be hashed (:func:`hash_model`) on another thread while the model
    is changed: small tensors' bytes are copied, external locations resolved, and
    ``raw_of`` must return views of an immutable buffer.

    Raises:
        ValueError: an external tensor but no ``base_dir``.
        FormatError: external data missing or out of range.
    """
    # The model is small here (its large tensors are elsewhere): copying it and clearing
    # the copy is much cheaper than rebuilding it field by field in Python.
    skeleton = skeleton_bytes(model, exclude_metadata, rebuild=False)
    if tensors is None:
        tensors = list(iter_tensors(model.graph))
    normalise(model, tensors)
    sources: list[Source] = []
    for src in tensor_sources(model, raw_of, tensors):
        if isinstance(src, onnx.TensorProto):
            if base_dir is None:
                raise ValueError(f"tensor '{src.name}' is external but no model folder was given")
            src = _resolve_external(src, base_dir)
        sources.append(src)
    return skeleton, sources


def tensor_sources(
    model: onnx.ModelProto,
    raw_of: Callable[[onnx.TensorProto], memoryview | Region | None] | None = None,
    tensors: Iterable[onnx.TensorProto] | None = None,
) -> Iterator[Source]:
    """What the digest hashes for each tensor, in :func:`iter_tensors` order.

    Args:
        model: the model.
        raw_of: returns a tensor's raw bytes when they are held outside the model
            (see ``_onnx/stripped.StrippedModel.raw``), else ``None``.
        tensors: ``iter_tensors(model.graph)``, if already listed.

    Yields:
        The tensor itself when its data is external, else its raw bytes (copied out
        of protobuf one tensor at a time, only as the hash reaches it).
    """
    for t in iter_tensors(model.graph) if tensors is None else tensors:
        if t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL:
            yield t
            continue
        held = raw_of(t) if raw_of is not None else None
        if held is not None:
            yield held
        else:
            yield t.raw_data if t.HasField("raw_data") else b""


def hash_model(
    skeleton: bytes,
    sources: Iterable[Source],
    base_dir: str | os.PathLike[str] | None,
    *,
    overlap: bool = False,
    gate: PatchGate | None = None,
    taggers: Sequence[_seal.ModelTagger] = (),
    sha256: bool = True,
) -> str:
    """The digest of a skeleton and its tensors' bytes (see :func:`model_digest`).

    The same bytes can go to level taggers (``_seal.ModelTagger``) in the same pass;
    read their results from them afterwards.

    Args:
        skeleton: from :func:`skeleton_bytes`.
        sources: from :func:`tensor_sources`.
        base_dir: folder of the model file, for external tensors.
        overlap: hash large buffers on a worker thread while the next source is
            produced (pays off when producing means copying or reading a file).
        gate: coordinates with a loader patching :class:`Region` sources in place.
        taggers: level taggers fed the same bytes.
        sha256: compute the SHA-256 digest too (else ``""`` is returned).

    Raises:
        ValueError: an external tensor but no ``base_dir``.
        FormatError: external data missing, out of range or truncated.
    """
    sink = _Sink(hashlib.sha256(_DOMAIN) if sha256 else None, taggers)
    sink.update(len(skeleton).to_bytes(8, "little"))
    sink.update(skeleton)
    with _Feeder(sink, overlap) as feed:
        for src in sources:
            if type(src) is bytes:  # the many small tensors first: one call each
                feed.with_length(src)
            elif isinstance(src, onnx.TensorProto):
                if base_dir is None:
                    raise ValueError(
                        f"tensor '{src.name}' is external but no model folder was given"
                    )
                _hash_external(feed, _resolve_external(src, base_dir))
            elif isinstance(src, ExternalData):
                _hash_external(feed, src)
            elif isinstance(src, Region):
                feed((src.stop - src.start).to_bytes(8, "little"))
                if gate is None:
                    feed(src.data[src.start : src.stop])
                else:
                    _hash_gated(feed, src, gate)
            else:
                feed(len(src).to_bytes(8, "little"))
                feed(src)
    return sink.digest()


class _Sink:
    """One byte stream into SHA-256 and any level taggers."""

    def __init__(self, sha: Any, taggers: Sequence[_seal.ModelTagger]) -> None:
        self._sha = sha
        self._taggers = tuple(taggers)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._sha is not None:
            self._sha.update(data)
        for t in self._taggers:
            t.update(data)

    def digest(self) -> str:
        return "" if self._sha is None else "sha256:" + self._sha.hexdigest()


def _hash_gated(feed: _Feeder, region: Region, gate: PatchGate) -> None:
    """Hash a region the loader may be patching: as it was before any patch."""
    saved = gate._begin(region.start)
    try:
        if saved is None:  # untouched so far; the loader waits for us before patching
            feed(region.data[region.start : region.stop])
            feed.flush()
            return
        rows, original = saved
        order = np.argsort(rows, kind="stable")
        rows, original = rows[order], original[order]
        width = original.shape[1]
        per_chunk = max(1, _CHUNK // width)
        scratch = [np.empty(per_chunk * width, np.uint8) for _ in range(2)]
        source = np.frombuffer(region.data, np.uint8, region.stop - region.start, region.start)
        n_rows = (region.stop - region.start) // width
        for turn, first in enumerate(range(0, n_rows, per_chunk)):
            last = min(n_rows, first + per_chunk)
            out = scratch[turn % 2][: (last - first) * width]
            # Copy what is there now, then put the original rows back over any patched ones.
            np.copyto(out, source[first * width : last * width])
            lo, hi = np.searchsorted(rows, [first, last])
            out.reshape(-1, width)[rows[lo:hi] - first] = original[lo:hi]
            feed(out.data)
        feed.flush()
    finally:
        gate._end(region.start)


class _Feeder:
    """Feeds a hash in order; with ``overlap``, large buffers go to one worker thread.

    At most one update is in flight: a call waits for the previous one, so the caller
    may reuse a buffer once the *next* call has returned. Small pieces (lengths, the
    many tiny tensors of exported models) are copied into one buffer and hashed
    together: the same byte stream, a fraction of the calls.
    """

    def __init__(self, h: _Sink, overlap: bool) -> None:
        self._h = h
        self._pool = ThreadPoolExecutor(1, "selenc-digest") if overlap else None
        self._pending: Future[None] | None = None
        self._small = bytearray()

    def __enter__(self) -> _Feeder:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown()

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _push_small(self) -> None:
        if self._small:
            self._wait()
            small, self._small = self._small, bytearray()
            self._h.update(small)

    def flush(self) -> None:
        """Wait until everything fed so far is hashed."""
        self._push_small()
        self._wait()

    def with_length(self, data: bytes) -> None:
        """Feed ``len(data)`` (8 bytes, little-endian), then ``data``."""
        if len(data) < _SMALL_PIECE:
            small = self._small
            small += len(data).to_bytes(8, "little")
            small += data
            if len(small) >= _SMALL_BATCH:
                self._push_small()
            return
        self(len(data).to_bytes(8, "little"))
        self(data)

    def __call__(self, data: bytes | memoryview) -> None:
        if len(data) < _SMALL_PIECE:
            self._small += data  # a copy: the caller may change its buffer afterwards
            if len(self._small) >= _SMALL_BATCH:
                self._push_small()
            return
        self._push_small()
        self._wait()
        if self._pool is not None and len(data) >= _THREAD_MIN:
            self._pending = self._pool.submit(self._h.update, data)
        else:
            self._h.update(data)


def _resolve_external(tensor: onnx.TensorProto, base_dir: str | os.PathLike[str]) -> ExternalData:
    """Where an external tensor's bytes are; without a stored length, its shape's size.

    Raises:
        FormatError: see ``_tensors.external_info``; no length and a data type of no
            known size, or a negative dimension.
    """
    info = external_info(tensor, base_dir)
    length = info.length if info.length is not None else _stored_size(tensor)
    return ExternalData(tensor.name, info.path, info.offset, length)


def _stored_size(tensor: onnx.TensorProto) -> int:
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        raise FormatError(
            f"external tensor '{tensor.name}' has no length and a data type "
            f"({tensor.data_type}) of no known size"
        ) from None
    if any(d < 0 for d in tensor.dims):
        raise FormatError(f"external tensor '{tensor.name}' has a negative dimension")
    count = 1
    for d in tensor.dims:
        count *= int(d)
    return count * itemsize


def _hash_external(feed: _Feeder, data: ExternalData) -> None:
    feed(data.length.to_bytes(8, "little"))
    size = min(_CHUNK, data.length)
    # Two buffers in turn: one is read into while the worker hashes the other.
    buffers = [bytearray(size), bytearray(size)] if size else []
    with open(data.path, "rb", buffering=0) as fh:
        fh.seek(data.offset)
        left, turn = data.length, 0
        while left:
            view = memoryview(buffers[turn])[: min(size, left)]
            n = fh.readinto(view)
            if not n:
                raise FormatError(f"external data of '{data.name}' is truncated")
            feed(view[:n])
            left -= n
            turn ^= 1
