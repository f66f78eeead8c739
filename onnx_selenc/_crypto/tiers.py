"""Tier keys out of a higher key, and what any key file says in public."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from onnx_selenc._crypto import seal as _seal
from onnx_selenc._crypto.keys import (
    KEY_FORMAT,
    KEY_VERSION,
    MAX_KEY_FILE_BYTES,
    LevelKey,
    _header_fields,
    _owner_public,
    _protected_fields,
    _verified,
    key_file_levels,
    read_key_file,
    stage_key_file,
)
from onnx_selenc._onnx.files import same_file, staged_outputs


def export_key(
    key_file: str | os.PathLike[str],
    level: int,
    output: str | os.PathLike[str],
    *,
    passphrase: str | None = None,
    new_passphrase: str | None = None,
    overwrite: bool = False,
) -> LevelKey:
    """Derive a lower-tier key file from a higher one (e.g. the owner key).

    Args:
        key_file: a key file of level ``>= level``.
        level: the tier to hand out.
        output: the new key file: must not exist, or with ``overwrite`` hold a key
            file below its top level (a tier key; an owner key is never replaced).
        passphrase: of ``key_file`` if it is protected.
        new_passphrase: protect the new key file with this passphrase.
        overwrite: replace an existing tier key file at ``output`` (atomically).

    Returns:
        The exported key.

    Raises:
        LevelNotGranted: ``key_file`` is below ``level``.
        KeyFileError: ``key_file`` is malformed or its passphrase is wrong.
        FileExistsError: ``output`` exists (with ``overwrite``: and is not a tier key).
        ValueError: ``output`` is ``key_file``.

    Example:
        >>> export_key("owner.key", 2, "tier2.key")  # doctest: +SKIP
    """
    source, out = Path(key_file), Path(output)
    if same_file(out, source):
        raise ValueError(
            f"refusing to overwrite the source key file {source}: choose another output path"
        )
    if os.path.lexists(out):
        if not overwrite:
            raise FileExistsError(
                f"key file {out} already exists; refusing to replace it (move it away "
                "first, or pass overwrite=True to replace a tier key file)"
            )
        levels = key_file_levels(out)
        if levels is None:
            raise FileExistsError(
                f"{out} exists and is not an onnx-selenc key file; refusing to replace it "
                "(overwrite=True replaces only a tier key file)"
            )
        if levels[0] == levels[1]:
            raise FileExistsError(
                f"{out} holds a top-level (owner) key; refusing to replace it, even with "
                "overwrite=True (losing an owner key loses access to its model)"
            )
    # A tier key never signs, the top tier's included: only the owner can vouch for a model.
    lower = dataclasses.replace(
        read_key_file(source, passphrase=passphrase).derive(level), signing_key=None
    )
    with staged_outputs() as stage:
        stage_key_file(stage, out, lower, passphrase=new_passphrase, replace=overwrite)
    return lower


def key_info(key: LevelKey) -> dict[str, object]:
    """Public facts about a key (no secret material), for ``keys info``."""
    return {
        "key_id": key.key_id,
        "level": key.level,
        "levels": key.levels,
        "owner": key.is_owner,
        "owner_public": key.owner_public.hex() if key.owner_public else None,
        "chain": _seal.CHAIN_ID,
        "format": KEY_FORMAT,
        "version": KEY_VERSION if key.owner_public else 1,
    }


def key_file_info(path: str | os.PathLike[str]) -> dict[str, object]:
    """The public facts of a key file, read without its passphrase (none is needed).

    The header fields are checked as on a full read (format, version, check digest,
    types); the key itself is not unwrapped, so a wrong passphrase cannot show here.

    Raises:
        KeyFileError: malformed, truncated, corrupted or of an unknown version.
        FileNotFoundError: no such file.
    """
    with open(path, "rb") as fh:
        data = fh.read(MAX_KEY_FILE_BYTES + 1)
    source = str(path)
    doc = _verified(data, source)
    key_id, level, levels = _header_fields(doc, source)
    public = _owner_public(doc, source)
    protected = "protected" in doc
    if protected:
        _protected_fields(doc["protected"], source)
        wrapped = str(doc["protected"]["wrapped"])  # type: ignore[index]
        owner = level == levels and len(wrapped) == 2 * (2 * _seal.KEY_BYTES + 16)
    else:
        owner = "signing_key" in doc
    return {
        "key_id": key_id,
        "level": level,
        "levels": levels,
        "owner": owner,
        "owner_public": public.hex() if public else None,
        "chain": _seal.CHAIN_ID,
        "format": KEY_FORMAT,
        "version": doc["version"],
        "protected": protected,
    }
