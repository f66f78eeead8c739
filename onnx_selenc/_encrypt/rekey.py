"""Rekey: the same encrypted model under a fresh owner key, every old key refused.

How a leaked tier key is revoked (docs/SERVING.md): the owner rekeys, hands out new
tier keys and publishes the new file. The public weights stay byte for byte what they
were (a registry stores a new small artifact, or the same weights), the sealed
originals are the same bytes under the new key chain, the key id is new, and the
manifest is signed by the new owner. A format-1 model (no owner signature) comes out
as format 2: this is also how an old model gets its signature. Nothing proves an
unsigned file unchanged (any top-tier key holder could have re-sealed it), so the
result carries its model digest for the owner to compare with their records.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._crypto import seal as _seal
from onnx_selenc._crypto import sign as _sign
from onnx_selenc._crypto.digest import model_digest
from onnx_selenc._crypto.keys import (
    LevelKey,
    new_owner_key,
    read_key_file,
    refuse_replacing_key_file,
    stage_key_file,
)
from onnx_selenc._crypto.owner import check_owner
from onnx_selenc._encrypt.sealing import seal_manifest
from onnx_selenc._encrypt.stale import clear_stale_staging
from onnx_selenc._load.loader import restore_model
from onnx_selenc._load.opened import unseal_levels
from onnx_selenc._onnx.files import (
    refuse_existing,
    refuse_existing_outputs,
    refuse_overwrite_of_input,
    same_file,
    staged_outputs,
)
from onnx_selenc._onnx.modelio import external_files, load_external_data, load_model, save_model
from onnx_selenc.exceptions import InvalidBundle, KeyMismatch, SelfCheckFailed

# What a format-2 manifest's ``selection`` may say (docs/FORMAT.md 1.1).
_SELECTION_V2 = (
    "importance",
    "masking",
    "level_order",
    "level_targets",
    "level_quality",
    "objective",
    "wiring",
)


@dataclass(frozen=True)
class RekeyResult:
    """Outcome of :func:`rekey`."""

    model_files: tuple[Path, ...]
    key_file: Path
    key_id: str
    old_key_id: str
    levels: int
    model_digest: str
    """The digest of the public bytes (``sha256:<hex>``, unchanged by rekey): the owner
    compares it with the one ``encrypt`` reported, since a format-1 input is unsigned."""
    signed_input: bool
    """Whether the input carried the owner's signature (format 2)."""


def rekey(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    key_file: str | os.PathLike[str],
    new_key_file: str | os.PathLike[str],
    passphrase: str | None = None,
    new_passphrase: str | None = None,
    overwrite: bool = False,
) -> RekeyResult:
    """Re-seal an encrypted model under a fresh owner key (every old key is then refused).

    Args:
        model_path: the encrypted model (format 1 or 2).
        output_path: the rekeyed model; never an input; must not exist unless ``overwrite``.
        key_file: the model's owner key (top level; with its signing key from format 2).
        new_key_file: where the new owner key goes; must not exist.
        passphrase: of ``key_file`` if it is protected.
        new_passphrase: protect the new owner key file with this passphrase.
        overwrite: replace an existing model at ``output_path`` (never a key file).

    Returns:
        What was written; ``key_id`` is the new key id.

    Raises:
        KeyMismatch: ``key_file`` belongs to another model.
        ValueError: ``key_file`` is not the owner key, or paths collide.
        InvalidBundle: the model does not authenticate under the owner key, or it is a
            format-1 (unsigned) file carrying a format-2 key id (a downgrade: only a
            format-1 owner key re-keys a format-1 file).
        FileExistsError: ``new_key_file`` exists, or an output does (unless ``overwrite``).
        SelfCheckFailed: the rekeyed model did not restore to the same originals (a bug).

    Example:
        >>> rekey("model.enc.onnx", "new.enc.onnx", key_file="owner.key",
        ...       new_key_file="new-owner.key")  # doctest: +SKIP
    """
    model_path, output_path = Path(model_path), Path(output_path)
    data_path = output_path.with_name(output_path.name + ".data")
    refuse_existing(new_key_file, "key file")
    model = load_model(model_path, load_external=False)
    inputs = [model_path, Path(key_file), *external_files(model, model_path.parent)]
    for out in (output_path, data_path, Path(new_key_file)):
        refuse_overwrite_of_input(out, inputs)
    if same_file(output_path, new_key_file) or same_file(data_path, new_key_file):
        raise ValueError("the new owner key file and the rekeyed model need different paths")
    refuse_existing_outputs(
        [output_path, data_path], overwrite=overwrite, how="pass overwrite=True to replace it"
    )
    for out in (output_path, data_path):
        refuse_replacing_key_file(out)
    clear_stale_staging([new_key_file, output_path, data_path])  # see encrypt
    old = _owner(read_key_file(key_file, passphrase=passphrase))
    external = len(inputs) > 2
    # One read of every byte: what is authenticated below is what gets re-sealed.
    load_external_data(model, model_path)
    manifest, payloads = _authenticated(model, old)
    new = new_owner_key(manifest.levels)
    raw, blobs = _resealed(model, manifest, payloads, new)
    _bundle.attach(model, raw, blobs, _sign.sign_manifest(new.signing_key or b"", raw))
    with staged_outputs() as stage:
        key_path = stage_key_file(stage, new_key_file, new, passphrase=new_passphrase)
        written = save_model(
            model,
            output_path,
            external_data=external,
            protect=inputs,
            replace=overwrite,
            stage=stage,
        )
        _check(stage.path(output_path), new, manifest, payloads)
    return RekeyResult(
        tuple(written),
        key_path,
        new.key_id,
        old.key_id,
        manifest.levels,
        manifest.model_digest,
        manifest.version >= 2,
    )


def _owner(key: LevelKey) -> LevelKey:
    """The owner key, refused otherwise: a tier key cannot decide who owns the model."""
    if key.level != key.levels or (key.owner_public is not None and key.signing_key is None):
        raise ValueError(
            "rekey needs the model's owner key (the top level, holding the signing key); "
            f"this key is a level-{key.level} tier key"
        )
    return key


def _authenticated(
    model: onnx.ModelProto, owner: LevelKey
) -> tuple[_bundle.Manifest, list[list[_bundle.TensorPatch]]]:
    """The manifest and the originals of levels 1..M, after the model is proven to be
    the one the owner sealed (signature from format 2, then the top level's tag)."""
    manifest, blobs = _bundle.read_bundle(model)
    if owner.key_id != manifest.key_id or owner.levels != manifest.levels:
        raise KeyMismatch(
            f"this key (id {owner.key_id}) belongs to another model; this model needs a key "
            f"with id {manifest.key_id}"
        )
    if manifest.version >= 2:
        check_owner(manifest, owner)
    elif owner.owner_public is not None:
        # A format-2 key id is bound to an owner public key, so its model was signed:
        # an unsigned copy is a downgrade (a top-tier holder re-sealing an edited file).
        raise InvalidBundle(
            "this model is unsigned (format 1) but its key id belongs to a signed model "
            "(format 2): its signature was removed, so it may have been edited by a key "
            "holder; refusing to sign it. Rekey the signed original instead"
        )
    keys = [owner.derive(m) for m in range(manifest.levels + 1)]
    _seal.open_sealed(keys[0].material, blobs[0], _bundle.blob_aad(manifest.raw, 0))
    top = manifest.levels
    tagger = _seal.model_tagger_for(keys[top].material, manifest.model_tags[top])
    digest = model_digest(model, None, exclude_metadata=_bundle.BUNDLE_KEYS, taggers=[tagger])
    if digest != manifest.model_digest or not hmac.compare_digest(
        tagger.result(), manifest.model_tags[top]
    ):
        raise InvalidBundle("the model was modified after encryption (its tags do not match)")
    return manifest, unseal_levels(manifest, blobs, keys)


def _resealed(
    model: onnx.ModelProto,
    manifest: _bundle.Manifest,
    payloads: list[list[_bundle.TensorPatch]],
    new: LevelKey,
) -> tuple[bytes, list[bytes]]:
    """The format-2 manifest and blobs of the same model under ``new``."""
    sealed = [_bundle.pad_payload(_bundle.encode_payload(p)) for p in payloads]
    fields = {
        "encrypted": {k: v for k, v in manifest.encrypted.items() if k != "layers"},
        "level_weights": list(manifest.level_weights),
        "selection": _selection_v2(dict(manifest.selection)),
    }
    return seal_manifest(model, new, sealed, fields)


def _selection_v2(selection: dict[str, Any]) -> dict[str, Any]:
    """A manifest's ``selection`` as format 2 states it (format 1 said more)."""
    kept = {k: selection[k] for k in _SELECTION_V2 if k in selection}
    kept["split"] = selection.get("split") or (
        "calibrated" if "level_targets" in selection else "fixed"
    )
    return kept


def _check(
    staged: Path, new: LevelKey, old: _bundle.Manifest, payloads: list[list[_bundle.TensorPatch]]
) -> None:
    """The files as written load with the new owner key (signature, tags, blobs), hold
    the same public bytes (digest) and seal the same originals: so every level restores
    what it did before. Raised before anything is moved into place."""
    try:
        restore_model(staged, key=new)
        written = load_model(staged, load_external=False)
        manifest, blobs = _bundle.read_bundle(written)
        again = unseal_levels(manifest, blobs, [new.derive(m) for m in range(new.levels + 1)])
    except Exception as exc:
        raise SelfCheckFailed(f"the rekeyed model does not load with its new key: {exc}") from exc
    if manifest.model_digest != old.model_digest:
        raise SelfCheckFailed("the rekeyed model's public weights differ from the input's")
    if not all(_same(a, b) for a, b in zip(again, payloads, strict=True)):
        raise SelfCheckFailed("the rekeyed model seals other originals than the input")


def _same(a: list[_bundle.TensorPatch], b: list[_bundle.TensorPatch]) -> bool:
    return len(a) == len(b) and all(
        x.address == y.address
        and x.dtype == y.dtype
        and x.shape == y.shape
        and x.kernels.tobytes() == y.kernels.tobytes()
        and x.values.tobytes() == y.values.tobytes()
        and (x.order is None) == (y.order is None)
        and (x.order is None or y.order is None or x.order.tobytes() == y.order.tobytes())
        for x, y in zip(a, b, strict=True)
    )
