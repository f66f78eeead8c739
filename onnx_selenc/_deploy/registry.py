"""What a registry may hold of an encrypted model: public tags and metadata, never keys."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._crypto.secret_text import holds_key_text
from onnx_selenc._deploy.package import (
    contains_key_material,
    is_key_file,
    key_files_in,
)
from onnx_selenc._load.loader import resolve_model_path
from onnx_selenc._onnx.modelio import load_model as _load_onnx

TAG_PREFIX = "onnx_selenc."
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def registry_tags(encrypted_model_path: str | os.PathLike[str]) -> dict[str, str]:
    """Public facts about an encrypted model, as registry tags (no secrets).

    Args:
        encrypted_model_path: an encrypted ``.onnx`` or a packaged folder.

    Returns:
        ``onnx_selenc.levels``, ``.key_id``, ``.encrypted_fraction``,
        ``.encrypted_weights``, ``.conv_weights``, ``.level_weights`` (JSON list),
        ``.cipher``, ``.format_version``, ``.tool``.

    Raises:
        NotEncrypted: the model was not encrypted by onnx-selenc.

    Example:
        >>> registry_tags("model.enc.onnx")["onnx_selenc.levels"]  # doctest: +SKIP
        '4'
    """
    model = _load_onnx(resolve_model_path(encrypted_model_path), load_external=False)
    return manifest_tags(_bundle.read_bundle(model)[0].as_dict())


def manifest_tags(m: dict[str, Any]) -> dict[str, str]:
    enc = m["encrypted"]
    facts = {
        "levels": m["levels"],
        "key_id": m["key_id"],
        "encrypted_fraction": f"{float(enc['fraction']):.10g}",
        "encrypted_weights": enc["weights"],
        "conv_weights": enc["conv_weights"],
        "level_weights": json.dumps(m["level_weights"]),
        "cipher": m["cipher"],
        "format_version": m["version"],
        "tool": m["tool"],
    }
    return {TAG_PREFIX + k: str(v) for k, v in facts.items()}


def public_metadata(manifest: dict[str, Any], key_env: str | None) -> dict[str, Any]:
    enc = manifest["encrypted"]
    return {
        "key_id": manifest["key_id"],
        "levels": manifest["levels"],
        "level_weights": manifest["level_weights"],
        "encrypted_weights": enc["weights"],
        "conv_weights": enc["conv_weights"],
        "encrypted_fraction": enc["fraction"],
        "key_env": key_env,
    }


def check_env_name(var: str | None, what: str) -> None:
    """Raise ValueError unless ``var`` (when given) is an environment variable name."""
    if var is not None and not _ENV_NAME.fullmatch(var):
        raise ValueError(f"{what} must be an environment variable name, got {var!r}")


def refuse_keys(source: Path, extra: Mapping[str, str | os.PathLike[str]]) -> None:
    """Key files must never become artifacts, nor lie beside the model being logged."""
    if is_key_file(source):
        raise ValueError(
            f"{source} is an onnx-selenc key file, not a model: key files are never logged"
        )
    # A packaged folder is scanned whole; a model file, the folder it lies in.
    beside = (
        key_files_in([source], recursive=True)
        if source.is_dir()
        else key_files_in([source.parent], recursive=False)
    )
    if beside:
        raise ValueError(
            "refusing to log a model with key files beside it ("
            + ", ".join(str(p) for p in beside)
            + "): move them out of the model's folder, or `onnx-selenc package` the model "
            "into a clean folder first"
        )
    for name, path in extra.items():
        p = Path(path)
        files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p]
        leaking = [f for f in files if contains_key_material(f)]
        if leaking:
            raise ValueError(
                f"artifact {name!r} holds onnx-selenc key material ("
                + ", ".join(map(str, leaking))
                + "): keys are never logged; give them to the serving environment"
            )


def refuse_key_text(values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if holds_key_text(text):  # the check a package's JSON files go through
            raise ValueError(
                f"{name!r} looks like onnx-selenc key material; keys are never logged "
                "(give the serving environment the key, and the model only its variable name)"
            )
