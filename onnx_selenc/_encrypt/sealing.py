"""Sealing: the manifest and each level's increment of originals, under the key chain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._crypto import seal as _seal
from onnx_selenc._crypto import sign as _sign
from onnx_selenc._crypto.digest import model_digest
from onnx_selenc._crypto.keys import LevelKey
from onnx_selenc._encrypt.options import EncryptOptions, FixedLevels
from onnx_selenc._onnx.channels import WiringPlan
from onnx_selenc._onnx.graph import ConvInventory, ConvWeight
from onnx_selenc._select.levels import LevelReport
from onnx_selenc._select.masking import MaskedLayer
from onnx_selenc._select.selection import Selection


def seal_levels(
    model: onnx.ModelProto,
    selection: Selection,
    masked: Sequence[MaskedLayer],
    by_address: Mapping[str, ConvWeight],
    inventory: ConvInventory,
    owner: LevelKey,
    selection_params: dict[str, object],
    wiring: Sequence[_bundle.TensorPatch] = (),
) -> tuple[bytes, list[bytes], bytes]:
    """Build the manifest, seal each level's increment of originals, and sign the manifest.

    ``wiring`` (the true channel order of each wired tensor) is sealed with level 1,
    ahead of its kernels: the loader undoes the wiring before it puts kernels back.

    Returns:
        The manifest bytes, the sealed blobs of levels 0..M, the owner's signature.

    Raises:
        ValueError: ``owner`` cannot sign (a tier key, or a format-1 owner key).
    """
    if not owner.is_owner or owner.owner_public is None or owner.signing_key is None:
        raise ValueError(
            "encrypting needs an owner key that can sign (a fresh one, or one written by "
            "onnx-selenc 0.3 or later): a tier key or a format-1 owner key cannot"
        )
    levels = selection.levels
    payloads = [
        _bundle.pad_payload(
            _bundle.encode_payload(
                [*(wiring if m == 1 else ()), *level_patches(selection, masked, by_address, m)]
            )
        )
        for m in range(1, levels + 1)
    ]
    weights_per_level = [
        sum(
            int(np.count_nonzero(layer.restore_level == m)) * by_address[layer.address].kernel_size
            for layer in selection.layers
        )
        for m in range(1, levels + 1)
    ]
    manifest_raw, blobs = seal_manifest(
        model,
        owner,
        payloads,
        {
            # Totals only: per-layer counts (or the number of layers) would say where to look.
            "encrypted": {
                "weights": selection.selected_weights,
                "conv_weights": inventory.total_weights,
                "fraction": round(selection.fraction, 8),
            },
            "level_weights": [0, *np.cumsum(weights_per_level).tolist()],
            # The seed is deliberately absent: with the random scorer it would reveal
            # which kernels are encrypted.
            "selection": selection_params,
        },
    )
    return manifest_raw, blobs, _sign.sign_manifest(owner.signing_key, manifest_raw)


def seal_manifest(
    model: onnx.ModelProto,
    owner: LevelKey,
    payloads: Sequence[bytes],
    fields: Mapping[str, object],
) -> tuple[bytes, list[bytes]]:
    """Tag the model under every level key, write the manifest naming ``owner`` and seal
    level 0's empty blob and the padded ``payloads`` of levels 1..M under the chain.

    ``fields`` (``encrypted``, ``level_weights``, ``selection``) complete the manifest;
    encryption and rekeying both seal through here, so their manifests cannot drift.

    Returns:
        The manifest bytes and the sealed blobs of levels 0..M (unsigned).
    """
    assert owner.owner_public is not None
    levels = len(payloads)
    lengths = [_seal.SEAL_OVERHEAD] + [len(p) + _seal.SEAL_OVERHEAD for p in payloads]
    level_keys = [owner.derive(m).material for m in range(levels + 1)]
    taggers = [_seal.new_model_tagger(k) for k in level_keys]
    digest = model_digest(model, None, exclude_metadata=_bundle.BUNDLE_KEYS, taggers=taggers)
    manifest_raw = _bundle.manifest_bytes(
        {
            "key_id": owner.key_id,
            "levels": levels,
            "model_digest": digest,
            "model_tags": [t.result() for t in taggers],
            "blobs": _bundle.blob_layout(lengths),
            **fields,
            "tool": tool_name(),
        },
        owner.owner_public,
    )
    blobs = [_seal.seal(level_keys[0], b"", _bundle.blob_aad(manifest_raw, 0))]
    for m, payload in enumerate(payloads, start=1):
        blobs.append(_seal.seal(level_keys[m], payload, _bundle.blob_aad(manifest_raw, m)))
    return manifest_raw, blobs


def level_patches(
    selection: Selection,
    masked: Sequence[MaskedLayer],
    by_address: Mapping[str, ConvWeight],
    level: int,
) -> list[_bundle.TensorPatch]:
    patches = []
    for layer, record in zip(selection.layers, masked, strict=True):
        here = layer.restore_level == level
        if here.any():
            w = by_address[layer.address]
            patches.append(
                _bundle.TensorPatch(
                    layer.address, w.dtype, w.shape, record.kernels[here], record.originals[here]
                )
            )
    return patches


def tool_name() -> str:
    """The manifest's ``tool``: this onnx-selenc and its version."""
    from onnx_selenc import __version__

    return f"onnx-selenc {__version__}"


def selection_params(
    importance: str,
    options: EncryptOptions,
    level_report: LevelReport | None,
    wiring: WiringPlan | None = None,
) -> dict[str, object]:
    """The manifest's public ``selection`` entry: how the tiers were made, nothing that
    lets the per-layer counts be replayed from the public shapes (no allocation, budget
    or layer patterns) and never the seed (with the random scorer it would reveal which
    kernels are encrypted). With wiring: which convs are wired, never how."""
    split = options.split
    levels: dict[str, object]
    if level_report is not None:
        levels = {
            "split": "calibrated",
            "level_targets": list(level_report.targets),
            "level_quality": [round(q, 4) for q in level_report.calibration],
            "objective": level_report.objective,
        }
    else:
        order = split.order if isinstance(split, FixedLevels) else "most-important-first"
        levels = {"split": "fixed", "level_order": order}
    params: dict[str, object] = {"importance": importance, "masking": options.masking, **levels}
    if wiring is not None:
        params["wiring"] = [layer.node for layer in wiring.wired]
    return params
