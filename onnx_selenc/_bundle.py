"""The bundle: manifest and sealed level payloads carried inside the encrypted .onnx.

Two ``metadata_props`` entries (FORMAT.md has the byte-level description):

- ``onnx_selenc.manifest``: canonical JSON, public (no secrets, no kernel positions);
- ``onnx_selenc.sealed``: base64 of the sealed blobs, one per level 0..M, back to back
  at the offsets the manifest lists. Blob 0 seals nothing; it authenticates the
  manifest for any key holder. Blob m seals the originals level m adds.

Every blob's associated data is the SHA-256 of the exact manifest bytes plus its
level, so a blob moved to another model or level fails to open, and the manifest
(with the model digest in it) is authenticated before anything in it is trusted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from . import _seal
from .exceptions import FormatError, NotEncrypted

MANIFEST_KEY = "onnx_selenc.manifest"
SEALED_KEY = "onnx_selenc.sealed"
BUNDLE_KEYS = frozenset({MANIFEST_KEY, SEALED_KEY})
MODEL_FORMAT = "onnx-selenc-model"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20
_MANIFEST_FIELDS = {
    "format",
    "version",
    "cipher",
    "chain",
    "key_id",
    "levels",
    "model_digest",
    "model_tags",
    "blobs",
    "encrypted",
    "level_weights",
    "selection",
    "tool",
}
_PAYLOAD_MAGIC = b"SELENCP1"
_DOMAIN = b"onnx-selenc/v1/blob/"


@dataclass(frozen=True)
class Manifest:
    """The public manifest of an encrypted model (parsed and range-checked)."""

    key_id: str
    levels: int
    model_digest: str
    model_tags: tuple[str, ...]
    blobs: tuple[tuple[int, int], ...]
    encrypted: dict[str, float]
    level_weights: tuple[int, ...]
    selection: dict[str, object]
    tool: str
    raw: bytes

    def as_dict(self) -> dict[str, object]:
        return json.loads(self.raw)


@dataclass(frozen=True)
class TensorPatch:
    """Originals of one tensor's kernels, as sealed for one level."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    kernels: np.ndarray
    values: np.ndarray


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def manifest_bytes(fields: dict[str, object]) -> bytes:
    doc = {
        "format": MODEL_FORMAT,
        "version": FORMAT_VERSION,
        "cipher": _seal.CIPHER_ID,
        "chain": _seal.CHAIN_ID,
        **fields,
    }
    return canonical_json(doc)


def blob_aad(manifest_raw: bytes, level: int) -> bytes:
    return _DOMAIN + hashlib.sha256(manifest_raw).digest() + level.to_bytes(2, "big")


def blob_layout(lengths: Sequence[int]) -> list[tuple[int, int]]:
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
    return [(int(o), int(n)) for o, n in zip(offsets, lengths, strict=True)]


def attach(model: onnx.ModelProto, manifest_raw: bytes, blobs: Sequence[bytes]) -> None:
    """Store the manifest and sealed blobs in the model's metadata (replacing old ones)."""
    strip(model)
    model.metadata_props.add(key=MANIFEST_KEY, value=manifest_raw.decode("ascii"))
    model.metadata_props.add(key=SEALED_KEY, value=base64.b64encode(b"".join(blobs)).decode())


def strip(model: onnx.ModelProto) -> None:
    """Remove the bundle entries from the model's metadata."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in BUNDLE_KEYS]
    del model.metadata_props[:]
    for k, v in kept:
        model.metadata_props.add(key=k, value=v)


def is_encrypted(model: onnx.ModelProto) -> bool:
    return any(p.key == MANIFEST_KEY for p in model.metadata_props)


def read_bundle(model: onnx.ModelProto) -> tuple[Manifest, list[bytes]]:
    """Parse and range-check the bundle; nothing in it is trusted until blob 0 opens.

    Raises:
        NotEncrypted: the model has no bundle.
        FormatError: malformed manifest, unknown version, blobs out of range.
    """
    entries = {p.key: p.value for p in model.metadata_props if p.key in BUNDLE_KEYS}
    if MANIFEST_KEY not in entries:
        raise NotEncrypted("this model was not encrypted by onnx-selenc (no manifest found)")
    if SEALED_KEY not in entries:
        raise FormatError("the encrypted model has a manifest but no sealed data")
    raw = entries[MANIFEST_KEY].encode("utf-8")
    manifest = parse_manifest(raw)
    try:
        sealed = base64.b64decode(entries[SEALED_KEY], validate=True)
    except (binascii.Error, ValueError):
        raise FormatError("the sealed data is not valid base64 (truncated or edited)") from None
    expected = 0
    for offset, length in manifest.blobs:
        if offset != expected or length < _seal.SEAL_OVERHEAD:
            raise FormatError("the manifest's blob table is malformed")
        expected += length
    if expected != len(sealed):
        raise FormatError(
            f"the sealed data has {len(sealed)} bytes; the manifest "
            f"describes {expected} (truncated or edited)"
        )
    return manifest, [sealed[o : o + n] for o, n in manifest.blobs]


def parse_manifest(raw: bytes) -> Manifest:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise FormatError("the manifest is too large")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FormatError("the manifest is not valid JSON (truncated or edited)") from None
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        raise FormatError("the manifest is not an onnx-selenc manifest")
    if doc.get("version") != FORMAT_VERSION:
        raise FormatError(
            f"encrypted-model format version {doc.get('version')!r} is unknown; "
            f"this onnx-selenc reads version {FORMAT_VERSION}"
        )
    unknown = set(doc) - _MANIFEST_FIELDS
    missing = _MANIFEST_FIELDS - set(doc)
    if unknown or missing:
        raise FormatError(
            f"the manifest has unknown fields {sorted(unknown)} or lacks {sorted(missing)}"
        )
    if doc["cipher"] != _seal.CIPHER_ID or doc["chain"] != _seal.CHAIN_ID:
        raise FormatError(f"unsupported cipher {doc['cipher']!r} / chain {doc['chain']!r}")
    try:
        levels = int(doc["levels"])
        blobs = tuple((int(o), int(n)) for o, n in doc["blobs"])
        level_weights = tuple(int(x) for x in doc["level_weights"])
        tags = doc["model_tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("model_tags is not a list of strings")
        if (
            not 1 <= levels <= 255
            or len(blobs) != levels + 1
            or len(level_weights) != levels + 1
            or len(tags) != levels + 1
        ):
            raise ValueError("level counts disagree")
        return Manifest(
            str(doc["key_id"]),
            levels,
            str(doc["model_digest"]),
            tuple(tags),
            blobs,
            dict(doc["encrypted"]),
            level_weights,
            dict(doc["selection"]),
            str(doc["tool"]),
            raw,
        )
    except (TypeError, ValueError) as exc:
        raise FormatError(f"the manifest is malformed: {exc}") from None


def encode_payload(patches: Sequence[TensorPatch]) -> bytes:
    """Serialise one level's originals: magic, u64 JSON length, JSON table, raw arrays."""
    table = []
    chunks: list[bytes] = []
    offset = 0
    for p in patches:
        idx = np.ascontiguousarray(p.kernels, dtype="<i8").tobytes()
        val = np.ascontiguousarray(p.values, dtype=np.dtype(p.dtype).newbyteorder("<")).tobytes()
        table.append(
            {
                "key": p.key,
                "dtype": p.dtype,
                "shape": list(p.shape),
                "count": len(p.kernels),
                "offset": offset,
            }
        )
        chunks += [idx, val]
        offset += len(idx) + len(val)
    head = canonical_json(table)
    return _PAYLOAD_MAGIC + struct.pack("<Q", len(head)) + head + b"".join(chunks)


def decode_payload(data: bytes) -> list[TensorPatch]:
    """Inverse of :func:`encode_payload`, bounds-checked (it is authenticated already)."""
    if data[:8] != _PAYLOAD_MAGIC or len(data) < 16:
        raise FormatError("sealed payload has an unknown layout")
    (n,) = struct.unpack("<Q", data[8:16])
    if n > len(data) - 16:
        raise FormatError("sealed payload table is out of range")
    table = json.loads(data[16 : 16 + n])
    body = memoryview(data)[16 + n :]
    size = len(body)
    patches = []
    # Per dtype code: (dtype, its name, the stored little-endian dtype, whether they
    # differ). numpy's dtype.name and astype are slow next to hundreds of small entries.
    dtypes: dict[str, tuple[np.dtype, str, np.dtype, bool]] = {}
    index_dtype = np.dtype("<i8")
    native_index = index_dtype == np.dtype(np.int64)
    for entry in table:
        code = entry["dtype"]
        if code not in dtypes:
            dt = np.dtype(code)
            stored_dt = dt.newbyteorder("<")
            dtypes[code] = (dt, dt.name, stored_dt, stored_dt != dt)
        dtype, dtype_name, stored, swap = dtypes[code]
        shape = tuple(map(int, entry["shape"]))
        count, offset = int(entry["count"]), int(entry["offset"])
        ksize = math.prod(shape[2:])
        end_idx = offset + 8 * count
        end = end_idx + count * ksize * dtype.itemsize
        if offset < 0 or count < 0 or end > size:
            raise FormatError("sealed payload entry is out of range")
        # Views of the payload where the byte order allows (no copy per entry).
        kernels = np.frombuffer(body, index_dtype, count, offset)
        if not native_index:
            kernels = kernels.astype(np.int64)
        values = np.frombuffer(body, stored, count * ksize, end_idx)
        if swap:
            values = values.astype(dtype)
        patches.append(
            TensorPatch(str(entry["key"]), dtype_name, shape, kernels, values.reshape(count, ksize))
        )
    return patches
