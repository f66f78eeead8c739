"""Key files: one level key of one encrypted model, in a small JSON file.

Format (see FORMAT.md): canonical JSON with ``format``, ``version``, ``key_id``,
``level``, ``levels``, ``chain``, ``owner_public`` (the owner's Ed25519 public key,
bound into the key id), and either ``key`` (hex; in the owner key file also
``signing_key``) or ``protected`` (scrypt + AES-GCM over both), plus ``check``, a digest
of all other fields that catches a corrupted or truncated file before it can be
mistaken for a wrong key. Written with 0600 permissions and never over an existing file.
Version 1 files (no owner key pair) are still read, for ``rekey``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from onnx_selenc._crypto import seal as _seal
from onnx_selenc._crypto import sign as _sign
from onnx_selenc._crypto import strict as _strict
from onnx_selenc._crypto.secret_text import secret_hex, shown_path
from onnx_selenc._onnx.files import (
    Staging,
    refuse_existing,
    staged_outputs,
    write_new_file,
)
from onnx_selenc.exceptions import KeyFileError

KEY_FORMAT = "onnx-selenc-key"
KEY_VERSION = 2
READ_VERSIONS = (1, 2)
MAX_KEY_FILE_BYTES = 64 * 1024
_FIELDS = {
    "format", "version", "key_id", "level", "levels", "chain", "owner_public", "key",
    "signing_key", "protected", "check",
}  # fmt: skip


@dataclass(frozen=True)
class LevelKey:
    """The key of one level of one encrypted model.

    A level-m key restores levels 0..m. ``material`` is secret and kept out of ``repr``.
    ``owner_public`` is the owner's Ed25519 public key, which every load checks the
    model's signature with (``None``: a format-1 key, from before owner signatures);
    ``signing_key``, the private half, is held by the owner key only.
    """

    key_id: str
    level: int
    levels: int
    material: bytes = field(repr=False)
    owner_public: bytes | None = None
    signing_key: bytes | None = field(default=None, repr=False)

    @property
    def is_owner(self) -> bool:
        """Whether this is the owner key (the top level, able to sign)."""
        return self.level == self.levels and self.signing_key is not None

    def derive(self, level: int) -> LevelKey:
        """Return the key of a lower (or the same) level.

        Raises:
            LevelNotGranted: ``level`` is above this key's level.
        """
        from onnx_selenc.exceptions import LevelNotGranted

        if level > self.level:
            raise LevelNotGranted(
                f"this key is for level {self.level}; level {level} was asked for"
            )
        if level < 0:
            raise ValueError(f"levels start at 0, got {level}")
        return LevelKey(
            self.key_id,
            level,
            self.levels,
            _seal.chain_down(self.material, self.level, level),
            self.owner_public,
            self.signing_key if level == self.level else None,  # never below the owner
        )

    def level0(self) -> bytes:
        return _seal.chain_down(self.material, self.level, 0)


def new_owner_key(levels: int) -> LevelKey:
    """A fresh top-level key (chain and Ed25519 pair) for a model with ``levels`` levels."""
    top = _seal.generate_key()
    signing = _sign.new_signing_key()
    public = _sign.public_key(signing)
    key_id = _seal.key_id(_seal.chain_down(top, levels, 0), public)
    return LevelKey(key_id, levels, levels, top, public, signing)


def _header(key: LevelKey) -> dict[str, object]:
    if key.owner_public is None:
        raise ValueError(
            "this key predates owner signatures (key file version 1): only `rekey` reads "
            "it, and nothing writes it"
        )
    return {
        "format": KEY_FORMAT,
        "version": KEY_VERSION,
        "key_id": key.key_id,
        "level": key.level,
        "levels": key.levels,
        "chain": _seal.CHAIN_ID,
        "owner_public": key.owner_public.hex(),
    }


def _secret(key: LevelKey) -> bytes:
    """What a protected key file wraps: the level key, then the owner's signing key."""
    return key.material + (key.signing_key or b"")


def _canonical(obj: dict[str, object]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _check(doc: dict[str, object]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in doc.items() if k != "check"})).hexdigest()[
        :32
    ]


def key_file_bytes(key: LevelKey, *, passphrase: str | None = None) -> bytes:
    """Serialise a key file (indented canonical JSON, human-inspectable)."""
    if key.signing_key is not None and key.level != key.levels:
        raise ValueError("only the top-level (owner) key may hold the signing key")
    doc = _header(key)
    if passphrase is None:
        doc["key"] = key.material.hex()
        if key.signing_key is not None:
            doc["signing_key"] = key.signing_key.hex()
    else:
        doc["protected"] = _seal.wrap_with_passphrase(
            _secret(key), passphrase, _canonical(_header(key))
        )
    doc["check"] = _check(doc)
    return json.dumps(doc, sort_keys=True, indent=2).encode("utf-8") + b"\n"


def write_key_file(
    path: str | os.PathLike[str], key: LevelKey, *, passphrase: str | None = None
) -> Path:
    """Write a key file with 0600 permissions, atomically; never over an existing file.

    Raises:
        FileExistsError: ``path`` exists (losing an owner key loses the model).
    """
    refuse_existing(path, "key file")
    with staged_outputs() as stage:
        stage_key_file(stage, path, key, passphrase=passphrase)
    return Path(path)


def stage_key_file(
    stage: Staging,
    path: str | os.PathLike[str],
    key: LevelKey,
    *,
    passphrase: str | None = None,
    replace: bool = False,
) -> Path:
    """Add a key file (0600) to a set of outputs: it appears when the set is committed.

    ``replace``: over an existing file (tier keys only, see :func:`export_key`); else
    the commit fails if one has appeared meanwhile.
    """
    write_new_file(stage.path(path), key_file_bytes(key, passphrase=passphrase), mode=0o600)
    stage.place(path, replace=replace)
    return Path(path)


def key_file_levels(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(level, levels)`` of the key file at ``path``; ``None`` if it is not one."""
    try:
        with open(path, "rb") as fh:
            doc = _parse(fh.read(MAX_KEY_FILE_BYTES + 1), str(path))
        return int(doc["level"]), int(doc["levels"])  # type: ignore[call-overload]
    except (OSError, KeyFileError, KeyError, ValueError, TypeError):
        return None


def refuse_replacing_key_file(path: str | os.PathLike[str]) -> None:
    """Refuse to write a model over a key file (a mistyped ``-o`` with ``--overwrite``).

    Raises:
        FileExistsError: ``path`` holds an onnx-selenc key file.
    """
    if os.path.isfile(path) and key_file_levels(path) is not None:
        raise FileExistsError(
            f"{path} is an onnx-selenc key file; refusing to replace it, even with "
            "overwrite=True (losing a key loses access): choose another output path"
        )


def is_protected(path: str | os.PathLike[str]) -> bool:
    """Whether a key file needs a passphrase."""
    return "protected" in _parse(Path(path).read_bytes()[: MAX_KEY_FILE_BYTES + 1], str(path))


def read_key_file(path: str | os.PathLike[str], *, passphrase: str | None = None) -> LevelKey:
    """Read and validate a key file.

    Raises:
        KeyFileError: malformed, truncated, corrupted, unknown version, or a wrong
            or missing passphrase.
        FileNotFoundError: no such file.
    """
    with open(path, "rb") as fh:
        data = fh.read(MAX_KEY_FILE_BYTES + 1)
    return parse_key_file(data, source=str(path), passphrase=passphrase)


def parse_key_file(
    data: bytes, *, source: str = "key file", passphrase: str | None = None
) -> LevelKey:
    """Parse key-file bytes (see :func:`read_key_file`).

    Every field is type-checked as docs/keyfile.schema.json states it, nothing coerced:
    ``"level": 1.9``, ``"version": true`` or ``"levels": "3"`` are refused, not rounded.

    Raises:
        KeyFileError: see :func:`read_key_file`.
    """
    doc = _verified(data, source)
    key_id, level, levels = _header_fields(doc, source)
    public = _owner_public(doc, source)
    header = {k: doc[k] for k in _HEADER if k in doc}
    signing: bytes | None = None
    if "protected" in doc:
        protected = _protected_fields(doc["protected"], source)
        if passphrase is None:
            raise KeyFileError(f"{source} is passphrase-protected: a passphrase is needed")
        secret = _seal.unwrap_with_passphrase(protected, passphrase, _canonical(header))
        material, signing = secret[: _seal.KEY_BYTES], secret[_seal.KEY_BYTES :] or None
    else:
        # Never echoed in errors (secret_hex): these are the secrets themselves.
        material = secret_hex(doc["key"], f"the 'key' of {source}", 2 * _seal.KEY_BYTES)
        if "signing_key" in doc:
            what = f"the 'signing_key' of {source}"
            signing = secret_hex(doc["signing_key"], what, 2 * _sign.PRIVATE_BYTES)
    if len(material) != _seal.KEY_BYTES or (
        signing is not None and len(signing) != _sign.PRIVATE_BYTES
    ):
        raise KeyFileError(f"{source} holds a key of the wrong size")
    if signing is not None and (
        public is None or level != levels or _sign.public_key(signing) != public
    ):
        raise KeyFileError(f"{source} is corrupted (its signing key does not match its owner)")
    key = LevelKey(key_id, level, levels, material, public, signing)
    if _seal.key_id(key.level0(), public) != key_id:
        raise KeyFileError(f"{source} is corrupted (its key does not match its key id)")
    return key


def _hex(value: object, what: str) -> bytes:
    return bytes.fromhex(_strict.string(value, what, _HEX64, error=KeyFileError))


def _owner_public(doc: dict[str, object], source: str) -> bytes | None:
    """The owner's public key: required from version 2 on, absent before."""
    if doc["version"] == 1:
        if "owner_public" in doc or "signing_key" in doc:
            raise KeyFileError(f"{source} is a version 1 key file with version 2 fields")
        return None
    if "owner_public" not in doc:
        raise KeyFileError(f"{source} is malformed (it lacks owner_public)")
    return _hex(doc["owner_public"], f"the 'owner_public' of {source}")


_REQUIRED = frozenset({"format", "version", "key_id", "level", "levels", "chain", "check"})
_HEADER = ("format", "version", "key_id", "level", "levels", "chain", "owner_public")
_PROTECTED = frozenset({"kdf", "n", "r", "p", "salt", "nonce", "wrapped"})
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SALT = re.compile(r"(?:[0-9a-f]{2}){16,64}")
_NONCE = re.compile(r"[0-9a-f]{24}")
# A 32-byte key (and, in an owner key, the 32-byte signing key) and the 16-byte GCM tag.
_WRAPPED_DIGITS = (96, 160)


def _header_fields(doc: dict[str, object], source: str) -> tuple[str, int, int]:
    """``key_id``, ``level`` and ``levels``, type- and range-checked."""
    key_id = _strict.string(doc["key_id"], f"the 'key_id' of {source}", _HEX32, error=KeyFileError)
    level = _strict.integer(doc["level"], f"the 'level' of {source}", 0, 255, error=KeyFileError)
    levels = _strict.integer(doc["levels"], f"the 'levels' of {source}", 1, 255, error=KeyFileError)
    if level > levels:
        raise KeyFileError(f"{source} is for level {level} of a model with {levels} levels")
    if doc["chain"] != _seal.CHAIN_ID:
        raise KeyFileError(
            f"{source} uses the key chain {_strict.show(doc['chain'])}; "
            f"this onnx-selenc knows {_seal.CHAIN_ID}"
        )
    return key_id, level, levels


def _protected_fields(value: object, source: str) -> dict[str, object]:
    """The scrypt parameters and wrapped key, checked before any work is spent on them."""
    what = f"the 'protected' entry of {source}"
    fields = _strict.mapping(value, what, _PROTECTED, error=KeyFileError)
    if fields["kdf"] != "scrypt":
        raise KeyFileError(f"{source} uses the unknown KDF {_strict.show(fields['kdf'])}")
    n, r, p = (
        _strict.integer(fields[k], f"scrypt {k} in {what}", error=KeyFileError)
        for k in ("n", "r", "p")
    )
    # Bounded to what this tool writes plus a margin: scrypt costs 128 * n * r bytes.
    if not _seal.scrypt_in_bounds(n, r, p):
        bad = next(
            (k for k, v in (("n", n), ("r", r), ("p", p)) if not 1 <= v <= _seal.SCRYPT_MAX[k]),
            "n",
        )
        limits = ", ".join(f"{k} <= {v}" for k, v in _seal.SCRYPT_MAX.items())
        raise KeyFileError(
            f"scrypt {bad} in {what} is out of range (n={n}, r={r}, p={p}; this tool reads "
            f"{limits}, n a power of two): refused before any work is spent on it"
        )
    for name, pattern in (("salt", _SALT), ("nonce", _NONCE)):
        _strict.string(fields[name], f"the {name} in {what}", pattern, error=KeyFileError)
    # The wrapped key (the key and signing key, encrypted, and the GCM tag): not echoed.
    secret_hex(fields["wrapped"], f"the wrapped key in {what}", _WRAPPED_DIGITS)
    return fields


def _verified(data: bytes, source: str) -> dict[str, object]:
    """The parsed key file, its check digest matched (a corrupted file is said to be one)."""
    doc = _parse(data, source)
    if doc["check"] != _check(doc):
        raise KeyFileError(f"{source} is corrupted (its check digest does not match)")
    return doc


def _parse(data: bytes, source: str) -> dict[str, object]:
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{source} is too large to be an onnx-selenc key file")
    doc = _strict.load(data, source, error=KeyFileError)
    if not isinstance(doc, dict) or doc.get("format") != KEY_FORMAT:
        raise KeyFileError(f"{source} is not an onnx-selenc key file")
    version = doc.get("version")
    if not _strict.is_int(version) or version not in READ_VERSIONS:
        raise KeyFileError(
            f"{source} has key-file version {_strict.show(version)}; "
            f"this onnx-selenc reads versions {', '.join(map(str, READ_VERSIONS))}"
        )
    unknown = set(doc) - _FIELDS
    if unknown:
        raise KeyFileError(f"{source} has unknown fields: {', '.join(sorted(unknown))}")
    missing = _REQUIRED - set(doc)
    if missing:
        raise KeyFileError(f"{source} is malformed (it lacks {', '.join(sorted(missing))})")
    if ("key" in doc) == ("protected" in doc):
        raise KeyFileError(f"{source} is malformed (needs one of 'key'/'protected')")
    if "signing_key" in doc and "protected" in doc:
        raise KeyFileError(f"{source} is malformed (a protected key wraps its signing key)")
    return doc


def key_from_env(variable: str, *, passphrase: str | None = None) -> LevelKey:
    """Read a key from an environment variable holding a key file's path or its content.

    Serving environments inject secrets either way (a mounted file or the value itself).

    Raises:
        KeyError: the variable is not set.
        KeyFileError: the content is not a valid key file.
        FileNotFoundError: the variable names no existing file (the message shows the
            value only if it cannot be key material).
    """
    try:
        value = os.environ[variable]
    except KeyError:
        raise KeyError(f"environment variable {variable} (onnx-selenc key) is not set") from None
    if value.lstrip().startswith("{"):
        # surrogateescape: bytes the OS could not decode come back as they were (and
        # are refused as not UTF-8) instead of raising UnicodeEncodeError here.
        content = value.encode("utf-8", "surrogateescape")
        return parse_key_file(content, source=f"${variable}", passphrase=passphrase)
    try:
        return read_key_file(value, passphrase=passphrase)
    except FileNotFoundError:
        # Python's message would repeat the value: a key pasted in place of its path.
        error = FileNotFoundError(
            f"environment variable {variable} names no existing key file: {shown_path(value)}"
        )
        error.filename = shown_path(value)
        raise error from None
