"""The bundle: manifest and sealed level payloads carried inside the encrypted .onnx.

Three ``metadata_props`` entries (FORMAT.md has the byte-level description):

- ``onnx_selenc.manifest``: canonical JSON, public (no secrets, no kernel positions);
- ``onnx_selenc.sealed``: base64 of the sealed blobs, one per level 0..M, back to back
  at the offsets the manifest lists. Blob 0 seals nothing; it authenticates the
  manifest for any key holder. Blob m seals the originals level m adds, padded to a
  size bucket so that its length says little about what it holds;
- ``onnx_selenc.signature``: hex of the owner's Ed25519 signature of the manifest
  (format 2; see ``sign``), which every key holder checks first.

Every blob's associated data is the SHA-256 of the exact manifest bytes plus its
level, so a blob moved to another model or level fails to open, and the manifest
(with the model digest in it) is authenticated before anything in it is trusted.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_selenc._crypto import seal as _seal
from onnx_selenc._crypto import sign as _sign
from onnx_selenc._crypto import strict as _strict
from onnx_selenc._crypto.payload import (  # noqa: F401  (the bundle's payload API)
    TensorPatch,
    decode_payload,
    encode_payload,
    wiring_patch,
)
from onnx_selenc._onnx.metadata import (
    BUNDLE_KEYS,
    MANIFEST_KEY,
    SEALED_KEY,
    SIGNATURE_KEY,
    strip_bundle,
)
from onnx_selenc.exceptions import FormatError, NotEncrypted

MODEL_FORMAT = "onnx-selenc-model"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
MAX_MANIFEST_BYTES = 1 << 20
_V1_FIELDS = frozenset(
    {
        "format", "version", "cipher", "chain", "key_id", "levels", "model_digest",
        "model_tags", "blobs", "encrypted", "level_weights", "selection", "tool",
    }
)  # fmt: skip
# Version 2: signed by the owner, whose public key it names.
_V2_FIELDS = _V1_FIELDS | {"owner_public", "signature"}
_SIGNATURE_HEX = re.compile(r"[0-9a-f]{128}")
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
    version: int = FORMAT_VERSION
    owner_public: bytes | None = None  # version 2: the key the signature verifies with
    signature: bytes | None = None  # the metadata entry beside the manifest (read_bundle)

    def as_dict(self) -> dict[str, object]:
        return json.loads(self.raw)


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def manifest_bytes(fields: dict[str, object], owner_public: bytes) -> bytes:
    """The canonical manifest of format :data:`FORMAT_VERSION`, naming its signer."""
    doc = {
        "format": MODEL_FORMAT,
        "version": FORMAT_VERSION,
        "cipher": _seal.CIPHER_ID,
        "chain": _seal.CHAIN_ID,
        "signature": _sign.SIGNATURE_ID,
        "owner_public": owner_public.hex(),
        **fields,
    }
    return canonical_json(doc)


def blob_aad(manifest_raw: bytes, level: int) -> bytes:
    return _DOMAIN + hashlib.sha256(manifest_raw).digest() + level.to_bytes(2, "big")


def blob_layout(lengths: Sequence[int]) -> list[tuple[int, int]]:
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
    return [(int(o), int(n)) for o, n in zip(offsets, lengths, strict=True)]


def attach(
    model: onnx.ModelProto, manifest_raw: bytes, blobs: Sequence[bytes], signature: bytes
) -> None:
    """Store the manifest, sealed blobs and owner signature in the model's metadata."""
    strip(model)
    model.metadata_props.add(key=MANIFEST_KEY, value=manifest_raw.decode("ascii"))
    model.metadata_props.add(key=SEALED_KEY, value=base64.b64encode(b"".join(blobs)).decode())
    model.metadata_props.add(key=SIGNATURE_KEY, value=signature.hex())


def padded_size(length: int) -> int:
    """The size bucket a sealed payload is padded to: at least 4 KiB, then the next
    ``2^k`` or ``1.5 * 2^k`` (at most a third is padding)."""
    size = 4096
    while size < length:
        size = size * 3 // 2 if size & (size - 1) == 0 else size // 3 * 4
    return size


def pad_payload(payload: bytes) -> bytes:
    """A payload with zero padding to its bucket (decoding stops at its table's end)."""
    return payload + bytes(padded_size(len(payload)) - len(payload))


def strip(model: onnx.ModelProto) -> None:
    """Remove the bundle entries from the model's metadata."""
    strip_bundle(model)


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
    manifest = parse_manifest(_entry_bytes(entries[MANIFEST_KEY]))
    if SIGNATURE_KEY in entries:
        if manifest.version < 2:
            raise FormatError("a version 1 manifest cannot carry a signature")
        sig = _entry_bytes(entries[SIGNATURE_KEY]).decode("ascii", "replace")
        if not _SIGNATURE_HEX.fullmatch(sig):
            raise FormatError("the owner signature is malformed (truncated or edited)")
        manifest = dataclasses.replace(manifest, signature=bytes.fromhex(sig))
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


def _entry_bytes(value: str | bytes) -> bytes:
    """A metadata value as bytes: protobuf hands over ``bytes`` when it is not UTF-8."""
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


# Text fields of the manifest, as docs/manifest.schema.json states them.
_KEY_ID = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_TAG = re.compile(r"[0-9a-f]{24}:[0-9a-f]{32}")
_COUNTS = frozenset({"weights", "conv_weights", "layers", "fraction"})


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and type-check a manifest exactly as docs/manifest.schema.json states it.

    Nothing is coerced: a level count of ``2.0`` or ``true``, a string where a number
    belongs, a blob table of the wrong length are all refused.

    Raises:
        FormatError: not ASCII JSON, a field unknown, missing or of the wrong type or
            range, an unknown version.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise FormatError("the manifest is too large")
    doc = _strict.load(raw, "the manifest", ascii_only=True)
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        raise FormatError("the manifest is not an onnx-selenc manifest")
    version = doc.get("version")
    if not _strict.is_int(version) or version not in READ_VERSIONS:
        raise FormatError(
            f"encrypted-model format version {_strict.show(version)} is unknown; "
            f"this onnx-selenc reads versions {', '.join(map(str, READ_VERSIONS))}"
        )
    fields = _V2_FIELDS if version == 2 else _V1_FIELDS
    unknown = set(doc) - fields
    missing = fields - set(doc)
    if unknown or missing:
        raise FormatError(
            f"the manifest has unknown fields {sorted(unknown)} or lacks {sorted(missing)}"
        )
    if doc["cipher"] != _seal.CIPHER_ID or doc["chain"] != _seal.CHAIN_ID:
        raise FormatError(
            f"unsupported cipher {_strict.show(doc['cipher'])} / chain {_strict.show(doc['chain'])}"
        )
    levels = _strict.integer(doc["levels"], "the manifest's levels", 1, 255)
    return Manifest(
        _strict.string(doc["key_id"], "the manifest's key_id", _KEY_ID),
        levels,
        _strict.string(doc["model_digest"], "the manifest's model_digest", _DIGEST),
        tuple(
            _strict.string(t, "a model tag in the manifest", _TAG)
            for t in _strict.array(doc["model_tags"], "the manifest's model_tags", levels + 1)
        ),
        _blob_table(doc["blobs"], levels),
        _encrypted_counts(doc["encrypted"], version),
        _level_weights(doc["level_weights"], levels),
        _strict.mapping(doc["selection"], "the manifest's selection"),
        _strict.string(doc["tool"], "the manifest's tool"),
        raw,
        version,
        _owner_public(doc) if version == 2 else None,
    )


def _owner_public(doc: dict[str, object]) -> bytes:
    if doc["signature"] != _sign.SIGNATURE_ID:
        raise FormatError(f"unsupported signature {_strict.show(doc['signature'])}")
    return bytes.fromhex(_strict.string(doc["owner_public"], "the manifest's owner_public", _HEX64))


def _blob_table(value: object, levels: int) -> tuple[tuple[int, int], ...]:
    """``[offset, length]`` per level; read_bundle checks they tile the sealed data."""
    blobs = []
    for pair in _strict.array(value, "the manifest's blobs", levels + 1):
        offset, length = _strict.array(pair, "a blob entry in the manifest", 2)
        blobs.append(
            (
                _strict.integer(offset, "a blob offset in the manifest"),
                _strict.integer(length, "a blob length in the manifest"),
            )
        )
    return tuple(blobs)


def _encrypted_counts(value: object, version: int) -> dict[str, float]:
    fields = _COUNTS if version == 1 else _COUNTS - {"layers"}
    counts = _strict.mapping(value, "the manifest's encrypted counts", fields)
    for k in sorted(fields - {"fraction"}):
        _strict.integer(counts[k], f"the manifest's encrypted.{k}")
    _strict.number(counts["fraction"], "the manifest's encrypted.fraction", 0, 1)
    return dict(counts)


def _level_weights(value: object, levels: int) -> tuple[int, ...]:
    """Weights restored at each level: cumulative, so from 0 and never decreasing."""
    weights = tuple(
        _strict.integer(w, "a level_weights entry in the manifest")
        for w in _strict.array(value, "the manifest's level_weights", levels + 1)
    )
    if weights[0] != 0 or list(weights) != sorted(weights):
        raise FormatError("the manifest's level_weights must start at 0 and never decrease")
    return weights
