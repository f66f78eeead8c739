"""Sealing: AES-256-GCM, the one-way level-key chain, and passphrase wrapping.

The only module that touches ``AESGCM``. Nonces are always fresh 96-bit random
values drawn here; no public function takes one.

Key chain: the owner's top key ``k_M`` is random. ``k_{m-1} = HKDF(k_m, "chain", m)``,
so a level-m key yields every lower level and, HKDF being one-way, nothing above.
Each key is used through a separate HKDF output per purpose (sealing, key id), so
no raw chain key ever touches AES directly.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from onnx_selenc.exceptions import InvalidBundle, KeyFileError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES
CIPHER_ID = "AES-256-GCM"
CHAIN_ID = "HKDF-SHA256-chain-v1"
_DOMAIN = b"onnx-selenc/v1/"
_GMAC_PIECE = 1 << 30


def generate_key() -> bytes:
    """A fresh random 256-bit key."""
    return AESGCM.generate_key(bit_length=256)


def _hkdf(key: bytes, purpose: bytes) -> bytes:
    if len(key) != KEY_BYTES:
        raise ValueError(f"keys are {KEY_BYTES} bytes, got {len(key)}")
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_DOMAIN + purpose
    ).derive(key)


def chain_down(key: bytes, from_level: int, to_level: int) -> bytes:
    """Derive the level-``to_level`` key from a level-``from_level`` key (one way only)."""
    if not 0 <= to_level <= from_level:
        raise ValueError(f"cannot derive level {to_level} from level {from_level}")
    for level in range(from_level, to_level, -1):
        key = _hkdf(key, b"chain/" + level.to_bytes(2, "big"))
    return key


def key_id(level0_key: bytes, owner_public: bytes | None = None) -> str:
    """Public identifier of a key chain: from its level-0 key and, since format 2, the
    owner's signing public key (so a key file cannot name another owner and keep its id)."""
    if owner_public is None:
        return _hkdf(level0_key, b"key-id")[:16].hex()
    return _hkdf(level0_key, b"key-id/owner/" + owner_public)[:16].hex()


class ModelTagger:
    """A level's tag of a model: AES-256-GMAC (GCM over no plaintext) of a byte stream.

    The key is ``HKDF(k_m, "model-tag")``, the nonce fresh per encryption and stored
    beside the tag. At about 20 GB/s it costs a tenth of a SHA-256 pass, which is why
    the loader checks the model with it. Only a holder of the level-m key can compute
    the level-m tag, so a tampered model fails for every level above the tamperer's.
    """

    def __init__(self, level_key: bytes, nonce: bytes) -> None:
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"nonces are {NONCE_BYTES} bytes, got {len(nonce)}")
        self.nonce = nonce
        gmac = Cipher(algorithms.AES(_hkdf(level_key, b"model-tag")), modes.GCM(nonce))
        self._ctx = gmac.encryptor()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        # The binding takes at most 2**31 - 1 bytes per call (it panics past that).
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _GMAC_PIECE):
            self._ctx.authenticate_additional_data(view[start : start + _GMAC_PIECE])

    def result(self) -> str:
        """``"<nonce hex>:<tag hex>"``, as the manifest stores it."""
        self._ctx.finalize()
        return f"{self.nonce.hex()}:{self._ctx.tag.hex()}"


def checksum(data: bytes | bytearray | memoryview) -> bytes:
    """A fast checksum of a byte stream (GMAC under a fixed key and nonce).

    Not a MAC: anyone can compute it. Encrypt's self-check compares weights it cannot
    keep in memory with it, where only a bug, never an adversary, changes the bytes.
    """
    tagger = ModelTagger(b"onnx-selenc/v1/self-check".ljust(32, b"\0"), bytes(NONCE_BYTES))
    tagger.update(data)
    return bytes.fromhex(tagger.result().split(":")[1])


def new_model_tagger(level_key: bytes) -> ModelTagger:
    """A tagger with a fresh random nonce (encryption side)."""
    return ModelTagger(level_key, os.urandom(NONCE_BYTES))


def model_tagger_for(level_key: bytes, stored: str) -> ModelTagger:
    """A tagger that recomputes a stored tag (loader side).

    Raises:
        InvalidBundle: the stored tag is malformed.
    """
    try:
        nonce_hex, tag_hex = stored.split(":")
        nonce = bytes.fromhex(nonce_hex)
        if len(bytes.fromhex(tag_hex)) != TAG_BYTES:
            raise ValueError
        return ModelTagger(level_key, nonce)
    except ValueError:
        raise InvalidBundle("the model's tag in the manifest is malformed") from None


def seal(level_key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` under a level key: ``nonce || ciphertext``."""
    return _seal_with_nonce(level_key, os.urandom(NONCE_BYTES), plaintext, aad)


def _seal_with_nonce(level_key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    # Private seam for known-answer tests only; production nonces come from seal().
    return nonce + AESGCM(_hkdf(level_key, b"seal")).encrypt(nonce, plaintext, aad)


def open_sealed(level_key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Decrypt a blob made by :func:`seal`.

    Raises:
        InvalidBundle: wrong key, flipped byte, wrong associated data; never says which.
    """
    if len(blob) < SEAL_OVERHEAD:
        raise InvalidBundle("sealed data failed authentication")
    try:
        return AESGCM(_hkdf(level_key, b"seal")).decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad
        )
    except InvalidTag:
        raise InvalidBundle("sealed data failed authentication") from None


def open_sealed_into(level_key: bytes, blob: bytes, aad: bytes) -> bytearray:
    """:func:`open_sealed` into a new ``bytearray``, which the caller can zero when done
    (a ``bytes`` result cannot be). With a cryptography that lacks ``decrypt_into``, a
    copy: the ``bytes`` it is made from stays in freed memory.

    Raises:
        InvalidBundle: as :func:`open_sealed`.
    """
    if len(blob) < SEAL_OVERHEAD:
        raise InvalidBundle("sealed data failed authentication")
    aead = AESGCM(_hkdf(level_key, b"seal"))
    decrypt_into = getattr(aead, "decrypt_into", None)
    if decrypt_into is None:
        return bytearray(open_sealed(level_key, blob, aad))
    plain = bytearray(len(blob) - SEAL_OVERHEAD)
    try:
        decrypt_into(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad, plain)
    except InvalidTag:
        plain[:] = bytes(len(plain))
        raise InvalidBundle("sealed data failed authentication") from None
    return plain


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Passphrase protection of key files: scrypt -> AES-GCM over the key.
SCRYPT_PARAMS = {"n": 2**15, "r": 8, "p": 1}
# Accepted on read: what this tool writes, with a margin (a hostile key file must not
# cost minutes and GiBs per load: n=2^16, r=8 is 64 MiB and about twice the default).
SCRYPT_MAX = {"n": 2**16, "r": 8, "p": 2}


def scrypt_in_bounds(n: int, r: int, p: int) -> bool:
    """Whether scrypt parameters read from a key file are within :data:`SCRYPT_MAX`."""
    return (
        2 <= n <= SCRYPT_MAX["n"]
        and not n & (n - 1)
        and 1 <= r <= SCRYPT_MAX["r"]
        and 1 <= p <= SCRYPT_MAX["p"]
    )


def wrap_with_passphrase(key: bytes, passphrase: str, aad: bytes) -> dict[str, str | int]:
    """Encrypt a key under a passphrase (scrypt KDF); returns JSON-ready fields."""
    salt = os.urandom(16)
    kek = _scrypt(passphrase, salt, **SCRYPT_PARAMS)
    nonce = os.urandom(NONCE_BYTES)
    wrapped = AESGCM(kek).encrypt(nonce, key, aad)
    return {
        "kdf": "scrypt",
        **SCRYPT_PARAMS,
        "salt": salt.hex(),
        "nonce": nonce.hex(),
        "wrapped": wrapped.hex(),
    }


def unwrap_with_passphrase(fields: dict[str, object], passphrase: str, aad: bytes) -> bytes:
    """Inverse of :func:`wrap_with_passphrase`.

    Raises:
        KeyFileError: wrong passphrase or a corrupted key file.
    """
    try:
        if fields.get("kdf") != "scrypt":
            raise KeyFileError(f"unknown key-file KDF {fields.get('kdf')!r}")
        n, r, p = (int(fields[k]) for k in ("n", "r", "p"))  # type: ignore[call-overload]
        if not scrypt_in_bounds(n, r, p):
            raise KeyFileError("key-file scrypt parameters are out of range")
        salt = bytes.fromhex(str(fields["salt"]))
        nonce = bytes.fromhex(str(fields["nonce"]))
        wrapped = bytes.fromhex(str(fields["wrapped"]))
        kek = _scrypt(passphrase, salt, n=n, r=r, p=p)
        return AESGCM(kek).decrypt(nonce, wrapped, aad)
    except InvalidTag:
        raise KeyFileError("wrong passphrase, or the key file was modified") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise KeyFileError(f"malformed passphrase-protected key: {exc}") from None


def _scrypt(passphrase: str, salt: bytes, *, n: int, r: int, p: int) -> bytes:
    if not isinstance(passphrase, str) or not passphrase:
        raise ValueError("the passphrase must be a non-empty string")
    return Scrypt(salt=salt, length=KEY_BYTES, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))
