"""Whose model this is: the manifest's owner signature, checked with the key file's owner.

The key file is what the holder trusts (it came from the owner); the model may come
from anywhere. So the public key is taken from the key file, the manifest must name the
same one, and the signature must verify, before the manifest is believed at all.
"""

from __future__ import annotations

from onnx_selenc._crypto import sign as _sign
from onnx_selenc._crypto.bundle import Manifest
from onnx_selenc._crypto.keys import LevelKey
from onnx_selenc.exceptions import KeyMismatch, UnsignedModel

_REKEY = (
    "its owner can sign it with `onnx-selenc rekey MODEL --key OWNER.key -o NEW.onnx "
    "--keys NEW-OWNER.key` and hand out new tier keys"
)


def check_owner(manifest: Manifest, key: LevelKey) -> None:
    """Raise unless ``key``'s owner signed ``manifest``.

    Raises:
        UnsignedModel: a format-1 model (no owner signature).
        KeyMismatch: a format-1 key file, or a model signed by another owner.
        InvalidBundle: the signature does not verify (the manifest was changed).
    """
    if manifest.owner_public is None or manifest.signature is None:
        raise UnsignedModel(
            "this model carries no owner signature (written by onnx-selenc 0.2 or earlier, "
            f"or its signature was removed), so its integrity cannot be proven: {_REKEY}"
        )
    if key.owner_public is None:
        raise KeyMismatch(
            "this key file predates owner signatures (key file version 1) and cannot "
            "check this model's owner: use a key exported from the model's current owner key"
        )
    if key.owner_public != manifest.owner_public:
        raise KeyMismatch(
            f"this key (id {key.key_id}) belongs to another model: the model is signed by "
            "another owner than this key's (another model, or a copy re-sealed by someone else)"
        )
    _sign.verify_manifest(key.owner_public, manifest.raw, manifest.signature)
