"""Block-wise key encryption of patch-embedding models (Iijima & Kiya, ICMLC 2022).

The stem of a patch-embedding model (a Conv with kernel = stride = P and no padding)
computes ``W b + B`` for every flattened ``P x P x C`` block ``b``. Encrypting each
block with a keyed transform ``b' = M b + c`` (a pixel/channel permutation, optionally
with a negative-positive flip, or an orthogonal matrix) and rewriting the stem as
``W' = W A^-1``, ``B' = B - W' a`` keeps the model's output exactly, while plain
images (or images encrypted with another key) give near-chance results. With a
position embedding, whole blocks may also be moved (scrambling). See
``docs/BLOCKWISE.md`` for the image domain, the key file, and the security limits.

Example::

    from onnx_selenc.blockwise import BlockKey, encrypt_model, encrypt_images

    result = encrypt_model("plain.onnx", "enc.onnx", key_out="model.key", flip=True)
    key = BlockKey.load("model.key")
    x_enc = encrypt_images(x_uint8_nchw, key)   # client side
"""

from __future__ import annotations

from onnx_selenc.blockwise._derive import BlockTransform
from onnx_selenc.blockwise._images import decrypt_images, encrypt_images, to_model_input
from onnx_selenc.blockwise._key import BlockKey, ImageDomain
from onnx_selenc.blockwise._model import (
    METADATA_KEY,
    BlockwiseResult,
    apply_key,
    check_key,
    encrypt_model,
    model_key_info,
)
from onnx_selenc.blockwise._scramble import ScramblePlan, plan_scramble
from onnx_selenc.blockwise._stem import PatchStem, find_patch_stem
from onnx_selenc.exceptions import WeakKeyWarning

__all__ = [
    "METADATA_KEY",
    "BlockKey",
    "BlockTransform",
    "BlockwiseResult",
    "ImageDomain",
    "PatchStem",
    "ScramblePlan",
    "WeakKeyWarning",
    "apply_key",
    "check_key",
    "decrypt_images",
    "encrypt_images",
    "encrypt_model",
    "find_patch_stem",
    "model_key_info",
    "plan_scramble",
    "to_model_input",
]
