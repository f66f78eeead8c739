"""Level payloads: the plaintext sealed in blob m (docs/FORMAT.md 1.4).

A payload holds the original values of the kernels level m adds, by tensor address
and kernel index, and (level 1 of a wired model) the true order of each wired tensor's
channels. It is authenticated before it is decoded; decoding a malformed one still
raises nothing but :class:`FormatError`.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnx_selenc._crypto import strict as _strict
from onnx_selenc._onnx.graph import tensor_address
from onnx_selenc.exceptions import FormatError

# P2 tables address tensors by escaped key (``_graph.tensor_address``); P1, written by 0.1,
# joined path and name with "/" unescaped (read as such, for files that worked then).
_PAYLOAD_MAGIC = b"SELENCP2"
_LEGACY_PAYLOAD_MAGIC = b"SELENCP1"


@dataclass(frozen=True)
class TensorPatch:
    """Originals of one tensor's kernels, as sealed for one level; or, with ``order``,
    the true order of a wired tensor's first axis (``true = public[order]``; no kernels).
    """

    address: str
    dtype: str
    shape: tuple[int, ...]
    kernels: np.ndarray
    values: np.ndarray
    order: np.ndarray | None = None


def wiring_patch(
    address: str, dtype: str, shape: tuple[int, ...], order: np.ndarray
) -> TensorPatch:
    """The :class:`TensorPatch` that puts a wired tensor's first axis back in order."""
    ksize = math.prod(shape[2:]) if len(shape) > 2 else 1
    return TensorPatch(
        address,
        dtype,
        shape,
        np.empty(0, np.int64),
        np.empty((0, ksize), np.dtype(dtype)),
        np.asarray(order, np.int64),
    )


def encode_payload(patches: Sequence[TensorPatch]) -> bytes:
    """Serialise one level's originals: magic, u64 JSON length, JSON table, raw arrays."""
    table = []
    chunks: list[bytes] = []
    shared: dict[int, int] = {}  # id of a wiring order -> where its bytes are
    offset = 0
    for p in patches:
        if p.order is not None:  # a wired tensor: its true order, one int64 per channel
            at = shared.get(id(p.order))
            if at is None:  # the first tensor of its layer: the order's bytes go here
                at = shared[id(p.order)] = offset
                idx = np.ascontiguousarray(p.order, dtype="<i8").tobytes()
                chunks.append(idx)
                offset += len(idx)
            table.append(
                {"key": p.address, "dtype": p.dtype, "shape": list(p.shape), "wiring": len(p.order),
                 "offset": at}
            )  # fmt: skip
            continue
        idx, values, field = _kernel_index(p)
        val = np.ascontiguousarray(values, dtype=np.dtype(p.dtype).newbyteorder("<")).tobytes()
        table.append(
            {
                "key": p.address,
                "dtype": p.dtype,
                "shape": list(p.shape),
                field: len(p.kernels),
                "offset": offset,
            }
        )
        chunks += [idx, val]
        offset += len(idx) + len(val)
    head = json.dumps(table, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return _PAYLOAD_MAGIC + struct.pack("<Q", len(head)) + head + b"".join(chunks)


_MASK_MIN_SAVING = 256  # bytes


def _kernel_index(p: TensorPatch) -> tuple[bytes, np.ndarray, str]:
    """The smaller index of a patch's kernels, its values in that index's order, and the
    entry's field: ``count`` int64 indices, or a ``mask`` of one bit per kernel where it
    is smaller by some bytes (more than one kernel in 64 restored, as with a base)."""
    n_kernels = math.prod(p.shape[:2])
    # A few bytes saved on a small entry are not worth decoding a bitmap on every load.
    if (n_kernels + 7) // 8 + _MASK_MIN_SAVING >= 8 * len(p.kernels):
        return np.ascontiguousarray(p.kernels, dtype="<i8").tobytes(), p.values, "count"
    order = np.argsort(p.kernels, kind="stable")
    flags = np.zeros(n_kernels, np.uint8)
    flags[p.kernels] = 1
    return np.packbits(flags, bitorder="little").tobytes(), p.values[order], "mask"


# Fixed-size numeric dtypes a payload may hold, with their sizes: anything else in a
# table is refused before numpy sees it (np.dtype parses far more than dtype names).
_PAYLOAD_DTYPES = {
    "float16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1, "int16": 2,
    "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8,
}  # fmt: skip
_ENTRY_FIELDS = frozenset({"key", "dtype", "shape", "count", "offset"})
_WIRING_FIELDS = frozenset({"key", "dtype", "shape", "wiring", "offset"})
_MASK_FIELDS = frozenset({"key", "dtype", "shape", "mask", "offset"})
_MAX_RANK = 16
_INT = frozenset({int})  # exactly int: bool is a subclass, and JSON's true is no size
_ENTRY = "a sealed payload entry"


def _payload_table(raw: bytes | memoryview) -> list[object]:
    """The JSON table of a payload, strictly parsed: a list (entries checked one by one)."""
    # No walk over the whole table: _payload_entry checks every value of every entry.
    table = _strict.load(raw, "the sealed payload table", walk=False)
    return _strict.array(table, "the sealed payload table")


def _payload_entry(
    entry: object, fields: frozenset[str] = _ENTRY_FIELDS
) -> tuple[str, str, tuple[int, ...], int, int]:
    """``(key, dtype, shape, count, offset)`` of a kernel entry (``count`` indices, or
    with :data:`_MASK_FIELDS` a ``mask``), type- and range-checked.

    The payload is authenticated, so only a key holder can write a bad one; decoding
    it must still raise nothing but FormatError. One expression checks the usual case
    (hundreds of entries per load); the field readers word what is wrong otherwise.
    """
    if type(entry) is dict and entry.keys() == fields:
        key, dtype, dims = entry["key"], entry["dtype"], entry["shape"]
        count, offset = entry["mask" if fields is _MASK_FIELDS else "count"], entry["offset"]
        if (
            type(key) is str
            and type(dtype) is str
            and dtype in _PAYLOAD_DTYPES
            and type(dims) is list
            and 1 <= len(dims) <= _MAX_RANK
            and _INT.issuperset(map(type, dims))  # in C: no generator per entry
            and min(dims) >= 0
            and type(count) is int
            and count >= 0
            and type(offset) is int
            and offset >= 0
        ):
            shape = tuple(dims)
            if math.prod(shape) * _PAYLOAD_DTYPES[dtype] <= _strict.INT64_MAX:
                return key, dtype, shape, count, offset
    raise FormatError(_entry_problem(entry, fields))


def _entry_problem(
    entry: object, fields: frozenset[str] = _ENTRY_FIELDS, legacy: bool = False
) -> str:
    """What is wrong with a table entry the one-expression checks refused: a kernel
    entry (``count`` or ``mask``) or, with :data:`_WIRING_FIELDS`, a wiring entry."""
    wiring = fields == _WIRING_FIELDS
    low = 1
    try:
        found = _strict.mapping(entry, _ENTRY, fields)
        _strict.string(found["key"], f"{_ENTRY}'s key")
        dtype = _strict.string(found["dtype"], f"{_ENTRY}'s dtype")
        if legacy or dtype not in _PAYLOAD_DTYPES:
            return f"{_ENTRY} has the unknown dtype {_strict.show(dtype)}"
        dims = _strict.array(found["shape"], f"{_ENTRY}'s shape")
        if not low <= len(dims) <= _MAX_RANK:
            return f"{_ENTRY}'s shape must have {low} to {_MAX_RANK} dimensions, not {len(dims)}"
        for d in dims:
            _strict.integer(d, f"a dimension of {_ENTRY}'s shape")
        count = "wiring" if wiring else ("mask" if fields == _MASK_FIELDS else "count")
        _strict.integer(found[count], f"{_ENTRY}'s count")
        _strict.integer(found["offset"], f"{_ENTRY}'s offset")
    except FormatError as exc:
        return str(exc)
    if wiring:
        return "sealed payload entry is out of range"
    return f"{_ENTRY}'s shape {dims} is too large"


def decode_payload(data: bytes) -> list[TensorPatch]:
    """Inverse of :func:`encode_payload`, bounds-checked (it is authenticated already)."""
    if data[:8] not in (_PAYLOAD_MAGIC, _LEGACY_PAYLOAD_MAGIC) or len(data) < 16:
        raise FormatError("sealed payload has an unknown layout")
    legacy = data[:8] == _LEGACY_PAYLOAD_MAGIC
    (n,) = struct.unpack("<Q", data[8:16])
    if n > len(data) - 16:
        raise FormatError("sealed payload table is out of range")
    table = _payload_table(data[16 : 16 + n])
    body = memoryview(data)[16 + n :]
    size = len(body)
    patches = []
    # Per dtype code: (dtype, its name, the stored little-endian dtype, whether they
    # differ). numpy's dtype.name and astype are slow next to hundreds of small entries.
    dtypes: dict[str, tuple[np.dtype, str, np.dtype, bool]] = {}
    orders: dict[tuple[int, int], np.ndarray] = {}
    index_dtype = np.dtype("<i8")
    native_index = index_dtype == np.dtype(np.int64)
    for entry in table:
        if type(entry) is dict and entry.keys() == _WIRING_FIELDS:
            patches.append(_wiring_entry(entry, body, legacy, orders))
            continue
        masked = type(entry) is dict and entry.keys() == _MASK_FIELDS and not legacy
        key, code, shape, count, offset = _payload_entry(
            entry, _MASK_FIELDS if masked else _ENTRY_FIELDS
        )
        if code not in dtypes:
            dt = np.dtype(code)
            stored_dt = dt.newbyteorder("<")
            dtypes[code] = (dt, dt.name, stored_dt, stored_dt != dt)
        dtype, dtype_name, stored, swap = dtypes[code]
        ksize = math.prod(shape[2:])
        n_kernels = math.prod(shape[:2])
        end_idx = offset + ((n_kernels + 7) // 8 if masked else 8 * count)
        end = end_idx + count * ksize * dtype.itemsize
        if offset < 0 or count < 0 or end > size:
            raise FormatError("sealed payload entry is out of range")
        # Views of the payload where the byte order allows (no copy per entry).
        if masked:
            kernels = _mask_kernels(body[offset:end_idx], n_kernels, count)
        else:
            kernels = np.frombuffer(body, index_dtype, count, offset)
            if not native_index:
                kernels = kernels.astype(np.int64)
        values = np.frombuffer(body, stored, count * ksize, end_idx)
        if swap:
            values = values.astype(dtype)
        patches.append(
            TensorPatch(
                _legacy_key(key) if legacy else key,
                dtype_name,
                shape,
                kernels,
                values.reshape(count, ksize),
            )
        )
    return patches


def _mask_kernels(bitmap: memoryview, n_kernels: int, count: int) -> np.ndarray:
    """The kernel indices a mask entry's bitmap sets, checked against its count."""
    bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")
    kernels = np.flatnonzero(bits)
    if len(kernels) != count or (count and kernels[-1] >= n_kernels):
        raise FormatError(f"{_ENTRY}'s mask does not set its count of kernels")
    return kernels


def _wiring_entry(
    entry: dict[str, object],
    body: memoryview,
    legacy: bool,
    orders: dict[tuple[int, int], np.ndarray],
) -> TensorPatch:
    """A wired tensor's true order, checked to be a permutation of its first axis.

    The tensors of one layer share one order (the same offset): ``orders`` keeps each
    one checked once.
    """
    key, dtype, dims = entry["key"], entry["dtype"], entry["shape"]
    count, offset = entry["wiring"], entry["offset"]
    if not (  # the usual case in one expression (a layer's tensors share an order)
        type(key) is str
        and type(dtype) is str
        and dtype in _PAYLOAD_DTYPES
        and not legacy
        and type(dims) is list
        and 1 <= len(dims) <= _MAX_RANK
        and all(type(d) is int and d >= 0 for d in dims)
        and type(count) is int
        and type(offset) is int
        and offset >= 0
        and count == dims[0]
        and offset + 8 * count <= len(body)
    ):
        raise FormatError(_entry_problem(entry, _WIRING_FIELDS, legacy))
    order = orders.get((offset, count))
    if order is None:
        order = np.frombuffer(body, np.dtype("<i8"), count, offset).astype(np.int64)
        if not np.array_equal(np.sort(order), np.arange(count)):
            raise FormatError(f"{_ENTRY}'s wiring is not a permutation of its channels")
        orders[(offset, count)] = order
    return wiring_patch(key, dtype, tuple(dims), order)


def _legacy_key(key: str) -> str:
    """A 0.1 payload key (``"<step>/.../<name>"``, unescaped) as a :func:`tensor_address`."""
    *path, name = key.split("/")
    return tensor_address(tuple(path), name)
