"""The usual whole-file approach, as the baseline: AES-256-GCM over the entire ``.onnx``.

This is what MindSpore and PaddleX do: encrypt the serialised model with one key,
and at load time read the file, decrypt it to bytes in memory and hand those bytes
to ``onnxruntime.InferenceSession``. Implemented as efficiently as the approach
allows: one read, one ``AESGCM.decrypt`` (AES-NI via OpenSSL), no other copy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    import onnxruntime as ort

NONCE_BYTES = 12


def encrypt_file(src: Path, dst: Path) -> bytes:
    """Encrypt a model file with a fresh 256-bit key; return the key.

    Args:
        src: the plain ``.onnx`` (inline weights only: the approach cannot carry
            external data, nor anything over protobuf's 2 GB).
        dst: where ``nonce || ciphertext || tag`` goes.

    Returns:
        The key.
    """
    key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(NONCE_BYTES)
    dst.write_bytes(nonce + AESGCM(key).encrypt(nonce, src.read_bytes(), None))
    return key


def load_session(
    path: Path, key: bytes, providers: Sequence[str] | None = None
) -> ort.InferenceSession:
    """Read, decrypt and build a session from the bytes (the timed part of the baseline)."""
    import onnxruntime as ort

    with open(path, "rb") as fh:
        blob = fh.read()
    model = AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], None)
    del blob  # as a careful implementation would: the ciphertext is no longer needed
    return ort.InferenceSession(model, providers=list(providers) if providers else None)
