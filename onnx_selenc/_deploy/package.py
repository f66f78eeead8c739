"""Registry-ready folders: an encrypted model laid out like a Hugging Face ONNX repository.

::

    DIR/
      onnx/model.onnx              the encrypted model, under the conventional name
      onnx/model.onnx.data         its external data, if any (locations rewritten)
      config.json                  inputs, outputs, opset, labels, levels, key id
      preprocessor_config.json     the preprocessing the owner states, if any
      manifest.json                the public manifest (no secrets)
      README.md                    model card: tiers, key id, how to load
      .onnx-selenc-files.json      the files above (what ``overwrite`` may replace)

The folder is built next to ``DIR`` and renamed into place, so a reader sees either
no folder or a complete one. Key files are never copied: only the model, the external
data files it names and the JSON files the user passes are, and any of them that is
(or holds) a key file is refused. Older packages hold ``onnx/model.enc.onnx``; they
still load and repackage.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._deploy.model_card import model_card
from onnx_selenc._deploy.model_config import Id2Label, model_config, normalise_id2label
from onnx_selenc._deploy.package_files import (
    KEY_FILE_MARKER,
    check_destination,
    contains_key_material,
    copy_file,
    data_renames,
    external_tensors,
    is_key_file,
    key_files_in,
    location_path,
    move_into_place,
    read_user_json,
    set_location,
    staging_folder,
    write_file_list,
)
from onnx_selenc._load.loader import resolve_model_path
from onnx_selenc._onnx.files import atomic_write
from onnx_selenc._onnx.modelio import load_model

__all__ = [
    "CONFIG_NAME",
    "DATA_NAME",
    "KEY_FILE_MARKER",
    "LEGACY_MODEL_NAME",
    "MANIFEST_NAME",
    "MODEL_DIR",
    "MODEL_NAME",
    "PREPROCESSOR_NAME",
    "README_NAME",
    "PackageResult",
    "contains_key_material",
    "is_key_file",
    "key_files_in",
    "package",
]

MODEL_DIR = "onnx"
MODEL_NAME = "model.onnx"
DATA_NAME = MODEL_NAME + ".data"
LEGACY_MODEL_NAME = "model.enc.onnx"  # what older packages hold
CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"  # Hugging Face's name for it
MANIFEST_NAME = "manifest.json"
README_NAME = "README.md"


@dataclass(frozen=True)
class PackageResult:
    """What :func:`package` wrote.

    Attributes:
        output_dir: the package folder.
        model_file: ``output_dir/onnx/model.onnx``.
        data_files: external data files beside it (empty for an inline model).
        manifest_file: ``output_dir/manifest.json``.
        readme_file: ``output_dir/README.md``.
        key_id: the model's public key id.
        levels: the model's number of levels.
        config_file: ``output_dir/config.json``.
        preprocessor_file: ``output_dir/preprocessor_config.json``, if one was given.
    """

    output_dir: Path
    model_file: Path
    data_files: tuple[Path, ...]
    manifest_file: Path
    readme_file: Path
    key_id: str
    levels: int
    config_file: Path
    preprocessor_file: Path | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file of the package, model first."""
        extra = (self.preprocessor_file,) if self.preprocessor_file else ()
        return (
            self.model_file,
            *self.data_files,
            self.config_file,
            *extra,
            self.manifest_file,
            self.readme_file,
        )


def package(
    encrypted_model_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    title: str | None = None,
    preprocess: str | os.PathLike[str] | None = None,
    id2label: Id2Label | str | os.PathLike[str] | None = None,
) -> PackageResult:
    """Write an encrypted model as a registry-ready (Hugging Face-style) folder.

    A single external data file is renamed ``model.onnx.data`` and the model's
    ``external_data`` locations are rewritten to match; several data files keep
    their relative names. Neither changes the model digest (FORMAT.md 1.3), so the
    package loads with the same keys: ``load_session(output_dir / "onnx/model.onnx",
    key=...)`` (or the folder itself).

    Args:
        encrypted_model_path: an encrypted ``.onnx`` (external data beside it) or a
            folder already packaged.
        output_dir: the folder to create. It must not exist or be empty, unless
            ``overwrite`` is true.
        overwrite: replace a non-empty ``output_dir`` that an earlier ``package`` (or
            ``save_model``) wrote, atomically, if it holds nothing else: never a folder
            holding a key file or a file onnx-selenc did not write there.
        title: heading of the README model card; default the model file's stem.
        preprocess: a JSON file (an object) of the preprocessing the model expects,
            copied byte for byte as ``preprocessor_config.json``.
        id2label: class labels for ``config.json``: a list, an index -> label map, or
            a JSON file of either; default: labels in the model's ``metadata_props``.

    Returns:
        The files written.

    Raises:
        NotEncrypted: the model was not encrypted by onnx-selenc.
        FormatError: malformed model or manifest; external data outside the model's
            folder, missing, or out of range.
        FileExistsError: ``output_dir`` is a file, or a non-empty folder and
            ``overwrite`` is false, or (with ``overwrite``) it holds a key file, lacks
            the file list a package writes, or holds a file that list does not name.
        FileNotFoundError: ``preprocess`` or an ``id2label`` file does not exist.
        ValueError: ``output_dir`` holds the input model; the model names a key file
            as its external data; ``preprocess`` or ``id2label`` is a key file, holds
            key material, or is not what it should be (a JSON object; labels).

    Example:
        >>> result = package("model.enc.onnx", "dist/my-model")  # doctest: +SKIP
        >>> sess = load_session(result.model_file, key="tier2.key")  # doctest: +SKIP
    """
    src = resolve_model_path(encrypted_model_path)
    out = Path(output_dir)
    model = load_model(src, load_external=False)
    manifest = _bundle.read_bundle(model)[0]  # raises NotEncrypted for a plain model
    renames = data_renames(model, src.parent, model_name=MODEL_NAME, data_name=DATA_NAME)
    preprocessor = _read_preprocessor(preprocess) if preprocess is not None else None
    labels = _read_labels(id2label) if id2label is not None else None
    check_destination(out, [src, *renames], overwrite=overwrite)

    manifest_doc = manifest.as_dict()
    config = model_config(
        model,
        manifest_doc,
        model_file=f"{MODEL_DIR}/{MODEL_NAME}",
        id2label=labels,
        preprocessor_file=PREPROCESSOR_NAME if preprocessor is not None else None,
    )
    tmp = staging_folder(out)
    try:
        model_dir = tmp / MODEL_DIR
        model_dir.mkdir()
        if renames:
            for tensor in external_tensors(model):
                set_location(tensor, renames[location_path(tensor, src.parent)])
            for old, new in renames.items():
                copy_file(old, model_dir / new)
            atomic_write(model_dir / MODEL_NAME, model.SerializeToString())
        else:
            copy_file(src, model_dir / MODEL_NAME)  # byte for byte
        atomic_write(tmp / CONFIG_NAME, _json_bytes(config))
        if preprocessor is not None:
            atomic_write(tmp / PREPROCESSOR_NAME, preprocessor)
        atomic_write(tmp / MANIFEST_NAME, _json_bytes(manifest_doc, sort_keys=True))
        files = _card_files(sorted(set(renames.values())), preprocessor is not None)
        card = model_card(
            manifest_doc, config, title=title or _default_title(encrypted_model_path), files=files
        )
        atomic_write(tmp / README_NAME, card.encode("utf-8"))
        write_file_list(tmp)  # what a later overwrite may replace, and nothing else
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PackageResult(
        output_dir=out,
        model_file=out / MODEL_DIR / MODEL_NAME,
        data_files=tuple(sorted(out / MODEL_DIR / n for n in set(renames.values()))),
        manifest_file=out / MANIFEST_NAME,
        readme_file=out / README_NAME,
        key_id=manifest.key_id,
        levels=manifest.levels,
        config_file=out / CONFIG_NAME,
        preprocessor_file=out / PREPROCESSOR_NAME if preprocessor is not None else None,
    )


def _read_preprocessor(path: str | os.PathLike[str]) -> bytes:
    data, doc = read_user_json(path, what="preprocessor config")
    if not isinstance(doc, dict):
        raise ValueError(
            f"the preprocessor config {path} must hold a JSON object, not {type(doc).__name__}"
        )
    return data


def _read_labels(labels: Id2Label | str | os.PathLike[str]) -> dict[str, str]:
    if isinstance(labels, str | os.PathLike):
        labels = read_user_json(labels, what="label file")[1]  # type: ignore[assignment]
    return normalise_id2label(labels)


def _card_files(data_names: list[str], preprocessor: bool) -> list[tuple[str, str]]:
    files = [(f"{MODEL_DIR}/{MODEL_NAME}", "the encrypted model")]
    files += [(f"{MODEL_DIR}/{n}", "its external data") for n in data_names]
    files.append((CONFIG_NAME, "inputs, outputs, opset, labels, levels, key id"))
    if preprocessor:
        files.append((PREPROCESSOR_NAME, "the preprocessing the model expects"))
    files.append((MANIFEST_NAME, "the public encryption manifest (`onnx-selenc inspect`)"))
    return files


def _json_bytes(doc: object, *, sort_keys: bool = False) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=sort_keys, ensure_ascii=False).encode() + b"\n"


def _default_title(model_path: str | os.PathLike[str]) -> str:
    p = Path(model_path)
    return p.resolve().name if p.is_dir() else p.name.split(".")[0]
