"""Model-side encryption: rewrite the stem (and, with scrambling, the position constants).

Let the client hold a block ``b`` in the image domain and send ``b' = M b + c`` (see
:mod:`._derive`). Between the model input and the stem sits a per-position affine
map ``n = S x + t`` (the in-graph normalisation composed with the client's
``(x - mean) / std`` when the key's domain has one). The stem computes
``W n + B``. With ``A = S M S^-1`` and ``a = S c + t - A t`` the stem sees
``n' = A n + a``, so ``W' = W A^-1`` and ``B' = B - W' a`` give ``W' n' + B' = W n + B``
exactly, for permutations, flips and orthogonal matrices alike.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_selenc._onnx.files import atomic_write, refuse_existing, refuse_overwrite_of_input
from onnx_selenc.blockwise._graph import GraphIndex, replace_constant, unique_name
from onnx_selenc.blockwise._key import BlockKey, ImageDomain
from onnx_selenc.blockwise._scramble import ScramblePlan, apply_scramble, plan_scramble
from onnx_selenc.blockwise._stem import PatchStem, find_patch_stem
from onnx_selenc.exceptions import (
    FormatError,
    KeyMismatch,
    NotEncrypted,
    UnsupportedModel,
    WeakKeyWarning,
)

METADATA_KEY = "onnx_selenc.blockwise"


@dataclass(frozen=True)
class BlockwiseResult:
    """What :func:`encrypt_model` wrote.

    Attributes:
        model_path: The encrypted model.
        key_path: The new key file (mode 0600).
        key_id: Public id of the key (also in the model's metadata).
        stem: The detected stem.
        key: The public parameters of the key (``BlockKey.public_info()``).
        key_space_bits: Effective key space in bits.
        weak: True when below 128 bits (a warning was issued).
        scrambled_constants: Constants permuted for block scrambling.
    """

    model_path: Path
    key_path: Path
    key_id: str
    stem: PatchStem
    key: dict[str, Any]
    key_space_bits: float
    weak: bool
    scrambled_constants: tuple[str, ...]


def _position_affine(stem: PatchStem, domain: ImageDomain) -> tuple[np.ndarray, np.ndarray]:
    """Per block position ``k``: stem input = ``s[k] * image + t[k]``."""
    g_scale, g_shift = np.asarray(stem.scale), np.asarray(stem.shift)
    if domain.mean is not None and domain.std is not None:
        e_scale = 1.0 / np.asarray(domain.std)
        e_shift = -np.asarray(domain.mean) / np.asarray(domain.std)
    else:
        e_scale, e_shift = np.ones(stem.channels), np.zeros(stem.channels)
    channel = np.arange(stem.patch * stem.patch * stem.channels) % stem.channels
    return (g_scale * e_scale)[channel], (g_scale * e_shift + g_shift)[channel]


def _only_user(index: GraphIndex, name: str, stem: PatchStem, what: str) -> None:
    sites = index.use_sites(index.resolve(name))
    if any(i != stem.conv_index for i, _ in sites) or index.resolve(name) in index.outputs:
        raise UnsupportedModel(
            f"the stem {what} '{name}' is shared with other nodes: rewriting it would change them"
            " and a plain copy would reveal the key"
        )


def rewrite_stem(model: onnx.ModelProto, stem: PatchStem, key: BlockKey) -> None:
    """Replace the stem weight and bias in place so that encrypted input gives plain output.

    Args:
        model: The model (modified in place).
        stem: Its detected stem.
        key: The key (its patch and channels must match the stem).

    Raises:
        UnsupportedModel: If the stem weight or bias is shared with other nodes.
    """
    index = GraphIndex(model)
    _only_user(index, stem.weight, stem, "weight")
    weight = index.constant(stem.weight)
    assert weight is not None
    h, length = stem.out_channels, key.block_length
    tr = key.derive()
    s, t = _position_affine(stem, key.domain)
    m = tr.linear()
    m_inv = np.where(tr.flip, -1.0, 1.0)[:, np.newaxis] * tr.mixing().T
    a_mat = s[:, np.newaxis] * m / s[np.newaxis, :]
    a_inv = s[:, np.newaxis] * m_inv / s[np.newaxis, :]
    offset = s * tr.offset() + t - a_mat @ t
    w_flat = weight.astype(np.float64).transpose(0, 2, 3, 1).reshape(h, length)
    w_new = w_flat @ a_inv
    shape = (h, stem.patch, stem.patch, stem.channels)
    replace_constant(model, index, stem.weight, w_new.reshape(shape).transpose(0, 3, 1, 2))
    delta = w_new @ offset
    if stem.bias is not None:
        _only_user(index, stem.bias, stem, "bias")
        bias = index.constant(stem.bias)
        assert bias is not None
        replace_constant(model, index, stem.bias, bias.astype(np.float64) - delta)
    elif np.any(delta != 0):
        name = unique_name(model, f"{stem.weight}.blockwise_bias")
        model.graph.initializer.append(numpy_helper.from_array((-delta).astype(weight.dtype), name))
        conv = model.graph.node[stem.conv_index]
        if len(conv.input) < 3:
            conv.input.append(name)
        else:
            conv.input[2] = name


def load_model(path: str | os.PathLike[str], *, external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model file.

    Raises:
        FormatError: If the file is not a readable ONNX model.
        OSError: If it cannot be read.
    """
    try:
        return onnx.load(os.fspath(path), load_external_data=external_data)
    except OSError:
        raise
    except Exception as exc:  # protobuf's DecodeError and friends
        raise FormatError(f"{path}: not a readable ONNX model ({exc})") from exc


def model_key_info(model: onnx.ModelProto | str | os.PathLike[str]) -> dict[str, Any] | None:
    """The public block-wise metadata of an encrypted model, or None if it has none.

    Raises:
        FormatError: If the metadata entry is malformed.
        OSError: If the model file cannot be read.
    """
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model, external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                info = json.loads(prop.value)
            except json.JSONDecodeError as exc:
                raise FormatError(f"malformed {METADATA_KEY} metadata: {exc}") from exc
            if not isinstance(info, dict) or not isinstance(info.get("key_id"), str):
                raise FormatError(f"malformed {METADATA_KEY} metadata (no key_id)")
            return info
    return None


def check_key(model: onnx.ModelProto | str | os.PathLike[str], key: BlockKey) -> dict[str, Any]:
    """Verify that ``key`` was made for the encrypted ``model``.

    Returns:
        The model's public block-wise metadata.

    Raises:
        NotEncrypted: If the model was never block-wise encrypted.
        KeyMismatch: If the key id differs from the one recorded in the model.
        FormatError: If the metadata is malformed.
    """
    info = model_key_info(model)
    if info is None:
        raise NotEncrypted(
            "the model carries no block-wise key id: it was not encrypted with"
            " `onnx-selenc blockwise encrypt-model`"
        )
    if info["key_id"] != key.key_id:
        raise KeyMismatch(
            f"this key (id {key.key_id}) was not made for this model (id {info['key_id']})"
        )
    return info


def apply_key(
    model: onnx.ModelProto,
    key: BlockKey,
    *,
    stem: PatchStem | None = None,
    plan: ScramblePlan | None = None,
) -> onnx.ModelProto:
    """Return an encrypted copy of ``model`` for ``key`` (the input is not modified).

    Raises:
        UnsupportedModel: If the model has no patch stem, does not match the key, is
            already encrypted, or (with a scrambling key) is not provably invariant.
    """
    if model_key_info(model) is not None:
        raise UnsupportedModel("the model is already block-wise encrypted")
    stem = stem or find_patch_stem(model)
    if stem.integer_input and (key.transform == "orthogonal" or key.domain.mean is not None):
        raise UnsupportedModel(
            "the model takes integer pixels: orthogonal keys and client-side normalisation need"
            " a float input"
        )
    if (key.patch, key.channels, key.layout) != (stem.patch, stem.channels, stem.layout):
        raise UnsupportedModel(
            f"the key is for {key.patch}x{key.patch}x{key.channels} {key.layout} blocks but the"
            f" model's stem takes {stem.patch}x{stem.patch}x{stem.channels} {stem.layout}"
        )
    if key.scramble:
        plan = plan or plan_scramble(model, stem)
        if plan.grid != key.grid:
            raise UnsupportedModel(
                f"the key scrambles a {key.grid} grid, the model has {plan.grid}"
            )
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rewrite_stem(out, stem, key)
    if key.scramble and plan is not None:
        tr = key.derive()
        assert tr.block_perm is not None
        apply_scramble(out, plan, tr.block_perm)
    info = {"format": "onnx-selenc-blockwise", "version": 1, **key.public_info()}
    out.metadata_props.add(key=METADATA_KEY, value=json.dumps(info, sort_keys=True))
    return out


def encrypt_model(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    key_out: str | os.PathLike[str],
    flip: bool = False,
    orthogonal: bool = False,
    scramble: bool = False,
    pixel_max: float | None = None,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
) -> BlockwiseResult:
    """Encrypt a patch-embedding model with a fresh block-wise key.

    Args:
        model_path: The plain ONNX model.
        output_path: Where to write the encrypted model (never the input).
        key_out: Where to write the new key file (must not exist).
        flip: Add the keyed negative-positive flip.
        orthogonal: Use a keyed orthogonal matrix instead of a permutation.
        scramble: Also move whole blocks (position-embedding models only).
        pixel_max: White level of the client's images (default 255 for integer model
            inputs, else 1.0).
        input_mean: Per-channel mean the client subtracts *after* encrypting (for models
            that expect already-normalised input); needs ``input_std``.
        input_std: Per-channel std to go with ``input_mean``.

    Returns:
        What was written.

    Raises:
        UnsupportedModel: If the model cannot be encrypted this way (no patch stem,
            scrambling not provably exact, orthogonal key on an integer input, ...).
        ValueError: If an output path is an input, or a parameter is invalid.
        FileExistsError: If ``key_out`` exists.
        OSError: If a file cannot be read or written.
    """
    refuse_overwrite_of_input(output_path, [model_path])
    refuse_overwrite_of_input(key_out, [model_path, output_path])
    refuse_existing(key_out, "key file")
    model = load_model(model_path)
    stem = find_patch_stem(model)
    if stem.integer_input and pixel_max not in (None, 255, 255.0):
        raise UnsupportedModel("the model takes integer pixels: pixel_max must be 255")
    domain = ImageDomain(
        float(pixel_max if pixel_max is not None else (255.0 if stem.integer_input else 1.0)),
        tuple(float(v) for v in input_mean) if input_mean is not None else None,
        tuple(float(v) for v in input_std) if input_std is not None else None,
    )
    plan = plan_scramble(model, stem) if scramble else None
    key = BlockKey.generate(
        patch=stem.patch,
        channels=stem.channels,
        layout=stem.layout,
        transform="orthogonal" if orthogonal else "permutation",
        flip=flip,
        scramble=scramble,
        grid=plan.grid if plan is not None else None,
        domain=domain,
    )
    if key.weak:
        warnings.warn(weak_key_message(key), WeakKeyWarning, stacklevel=2)
    encrypted = apply_key(model, key, stem=stem, plan=plan)
    onnx.checker.check_model(encrypted)
    try:
        data = encrypted.SerializeToString()
    except ValueError as exc:
        raise UnsupportedModel(f"cannot serialise the encrypted model: {exc}") from exc
    key.save(key_out)
    try:
        atomic_write(output_path, data)
    except BaseException:
        Path(key_out).unlink(missing_ok=True)
        raise
    return BlockwiseResult(
        model_path=Path(output_path),
        key_path=Path(key_out),
        key_id=key.key_id,
        stem=stem,
        key=key.public_info(),
        key_space_bits=key.key_space_bits,
        weak=key.weak,
        scrambled_constants=tuple(e.tensor for e in plan.edits) if plan else (),
    )


def weak_key_message(key: BlockKey) -> str:
    """Explain why ``key`` is weak."""
    return (
        f"weak key: a {key.patch}x{key.patch}x{key.channels} {key.transform} key has only"
        f" {key.key_space_bits:.1f} bits of key space (< 128), small enough to search"
        " exhaustively; use an orthogonal key (--orthogonal) or a model with larger patches"
    )
