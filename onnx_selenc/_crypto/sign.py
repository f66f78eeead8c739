"""Owner signatures: Ed25519 over the manifest, so no tier key holder can forge a model.

Level keys are symmetric: a tier-m holder can re-tag and re-seal levels 0..m of an
edited model. Only the owner key file holds the Ed25519 private key; every key file
carries the public key (bound into its key id), and every load checks the manifest's
signature with it before anything in the manifest is trusted. The only module that
touches Ed25519.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from onnx_selenc.exceptions import InvalidBundle

SIGNATURE_ID = "Ed25519"
PRIVATE_BYTES = 32
PUBLIC_BYTES = 32
SIGNATURE_BYTES = 64
_DOMAIN = b"onnx-selenc/v2/manifest-signature\x00"
_RAW = serialization.Encoding.Raw


def new_signing_key() -> bytes:
    """A fresh Ed25519 private key (its 32-byte seed)."""
    return Ed25519PrivateKey.generate().private_bytes(
        _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def public_key(signing_key: bytes) -> bytes:
    """The 32-byte public key of a private key."""
    private = Ed25519PrivateKey.from_private_bytes(signing_key)
    return private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def sign_manifest(signing_key: bytes, manifest_raw: bytes) -> bytes:
    """The owner's signature of the exact manifest bytes (domain-separated)."""
    return Ed25519PrivateKey.from_private_bytes(signing_key).sign(_DOMAIN + manifest_raw)


def verify_manifest(owner_public: bytes, manifest_raw: bytes, signature: bytes) -> None:
    """Raise :class:`InvalidBundle` unless ``signature`` is the owner's over the manifest.

    Raises:
        InvalidBundle: a wrong, truncated or forged signature.
    """
    try:
        Ed25519PublicKey.from_public_bytes(owner_public).verify(signature, _DOMAIN + manifest_raw)
    except (InvalidSignature, ValueError):
        raise InvalidBundle(
            "the model's owner signature does not verify: it was changed after its owner "
            "signed it (or re-sealed by someone who is not the owner)"
        ) from None
