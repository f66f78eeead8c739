"""Registry-ready folders: an encrypted model laid out like a Hugging Face ONNX repository.

::

    DIR/
      onnx/model.enc.onnx          the encrypted model
      onnx/model.enc.onnx.data     its external data, if any (locations rewritten)
      manifest.json                the public manifest (no secrets)
      README.md                    a model card stub: tiers, key id, how to load

The folder is built next to ``DIR`` and renamed into place, so a reader sees either
no folder or a complete one. Key files are never copied: only the model and the
external data files it names are, and a data "file" that is a key file is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnx_selenc import __version__
from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._crypto.keys import MAX_KEY_FILE_BYTES
from onnx_selenc._load.loader import resolve_model_path
from onnx_selenc._onnx.files import atomic_write
from onnx_selenc._onnx.modelio import load_model
from onnx_selenc._onnx.tensors import external_info
from onnx_selenc.exceptions import FormatError

MODEL_DIR = "onnx"
MODEL_NAME = "model.enc.onnx"
DATA_NAME = MODEL_NAME + ".data"
MANIFEST_NAME = "manifest.json"
README_NAME = "README.md"
# Every key file (plain or passphrase-protected, indented or compact) carries this
# exact JSON string as its "format" value; it is how key files are recognised.
KEY_FILE_MARKER = b'"onnx-selenc-key"'
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PackageResult:
    """What :func:`package` wrote.

    Attributes:
        output_dir: the package folder.
        model_file: ``output_dir/onnx/model.enc.onnx``.
        data_files: external data files beside it (empty for an inline model).
        manifest_file: ``output_dir/manifest.json``.
        readme_file: ``output_dir/README.md``.
        key_id: the model's public key id.
        levels: the model's number of levels.
    """

    output_dir: Path
    model_file: Path
    data_files: tuple[Path, ...]
    manifest_file: Path
    readme_file: Path
    key_id: str
    levels: int


def package(
    encrypted_model_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    title: str | None = None,
) -> PackageResult:
    """Write an encrypted model as a registry-ready folder.

    A single external data file is renamed ``model.enc.onnx.data`` and the model's
    ``external_data`` locations are rewritten to match; several data files keep
    their relative names. Neither changes the model digest (FORMAT.md 1.3), so the
    package loads with the same keys: ``load_session(output_dir, key=...)``.

    Args:
        encrypted_model_path: an encrypted ``.onnx`` (external data beside it) or a
            folder already packaged.
        output_dir: the folder to create. It must not exist or be empty, unless
            ``overwrite`` is true.
        overwrite: replace an existing non-empty ``output_dir`` (atomically).
        title: heading of the README model card; default the model file's stem.

    Returns:
        The files written.

    Raises:
        NotEncrypted: the model was not encrypted by onnx-selenc.
        FormatError: malformed model or manifest; external data outside the model's
            folder, missing, or out of range.
        FileExistsError: ``output_dir`` is a file, or a non-empty folder and
            ``overwrite`` is false.
        ValueError: ``output_dir`` holds the input model, or the model names a key
            file as its external data.

    Example:
        >>> result = package("model.enc.onnx", "dist/my-model")  # doctest: +SKIP
        >>> sess = load_session("dist/my-model", key="tier2.key")  # doctest: +SKIP
    """
    src = resolve_model_path(encrypted_model_path)
    out = Path(output_dir)
    model = load_model(src, load_external=False)
    manifest = _bundle.read_bundle(model)[0]  # raises NotEncrypted for a plain model
    renames = _data_renames(model, src.parent)
    _check_destination(out, [src, *renames], overwrite=overwrite)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a package is meant to be shared
        model_dir = tmp / MODEL_DIR
        model_dir.mkdir()
        if renames:
            for tensor in _external_tensors(model):
                _set_location(tensor, renames[_location_path(tensor, src.parent)])
            for old, new in renames.items():
                _copy_file(old, model_dir / new)
            atomic_write(model_dir / MODEL_NAME, model.SerializeToString())
        else:
            _copy_file(src, model_dir / MODEL_NAME)  # byte for byte
        manifest_doc = manifest.as_dict()
        atomic_write(
            tmp / MANIFEST_NAME,
            json.dumps(manifest_doc, indent=2, sort_keys=True).encode("utf-8") + b"\n",
        )
        readme = model_card(manifest_doc, title=title or _default_title(encrypted_model_path))
        atomic_write(tmp / README_NAME, readme.encode("utf-8"))
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    data = tuple(sorted(out / MODEL_DIR / n for n in set(renames.values())))
    return PackageResult(
        out,
        out / MODEL_DIR / MODEL_NAME,
        data,
        out / MANIFEST_NAME,
        out / README_NAME,
        manifest.key_id,
        manifest.levels,
    )


def model_card(manifest: dict[str, object], *, title: str) -> str:
    """A README.md model card stub for an encrypted model, from its public manifest.

    Args:
        manifest: the public manifest (``inspect_model(...).manifest``).
        title: the card's heading.

    Returns:
        Markdown with a YAML header (Hugging Face model card style).
    """
    levels = int(str(manifest["levels"]))
    level_weights = manifest["level_weights"]
    enc = manifest["encrypted"]
    assert isinstance(level_weights, list) and isinstance(enc, dict)
    total = int(enc["weights"]) or 1
    rows = []
    for m, restored in enumerate(level_weights):
        if m == 0:
            what = "nothing: the encrypted kernels keep their random values"
        elif m == levels:
            what = "everything: the original model, bit for bit"
        else:
            what = f"{100 * int(restored) / total:.1f}% of the encrypted weights"
        rows.append(f"| {m} | {restored} | {what} |")
    return f"""---
library_name: onnx
tags:
- onnx
- onnx-selenc
- encrypted
---

# {title}

This ONNX model is **selectively encrypted** with onnx-selenc: {enc["weights"]} of its
{enc["conv_weights"]} convolution weights ({100 * float(enc["fraction"]):.3f}%) hold random
values. It still runs in plain ONNX Runtime, but it only performs as intended once a
key restores the original weights, in memory, up to the key's tier.

- key id: `{manifest["key_id"]}` (a key file for another model is refused)
- levels (tiers): {levels}, cumulative: a level-m key also opens every level below m
- cipher: {manifest["cipher"]}, key chain: {manifest["chain"]}
- files: `onnx/{MODEL_NAME}` (plus external data beside it, if any), `{MANIFEST_NAME}`
  (the public manifest)

| level | weights restored | what the level restores |
| --- | --- | --- |
{chr(10).join(rows)}

## Loading

Key files are not part of this folder; ask the model owner for a key of your tier.

```python
import onnx_selenc

session = onnx_selenc.load_session("path/to/this/folder", key="tier.key")
# or with the key file's path or content in an environment variable:
session = onnx_selenc.load_session(
    "path/to/this/folder", key=onnx_selenc.key_from_env("ONNX_SELENC_KEY")
)
```

From the command line: `onnx-selenc run path/to/this/folder --key-env ONNX_SELENC_KEY
--input x.npy`. See the onnx-selenc documentation (docs/SERVING.md) for serving a tier
with MLflow.

_Packaged by onnx-selenc {__version__}._
"""


def _default_title(model_path: str | os.PathLike[str]) -> str:
    p = Path(model_path)
    return p.resolve().name if p.is_dir() else p.name.split(".")[0]


def is_key_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a small file with an onnx-selenc key file's format marker."""
    p = Path(path)
    try:
        if not p.is_file() or p.stat().st_size > MAX_KEY_FILE_BYTES:
            return False
        return KEY_FILE_MARKER in p.read_bytes()
    except OSError:
        return False


def contains_key_material(path: str | os.PathLike[str]) -> bool:
    """Whether a file of any size holds an onnx-selenc key file's content (streamed)."""
    keep = len(KEY_FILE_MARKER) - 1
    tail = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            if KEY_FILE_MARKER in tail + chunk:
                return True
            tail = chunk[-keep:]
    return False


def key_files_in(paths: Iterable[str | os.PathLike[str]], *, recursive: bool) -> list[Path]:
    """Key files among ``paths`` and inside those that are folders."""
    found: list[Path] = []
    for item in map(Path, paths):
        candidates: Iterator[Path]
        if item.is_dir():
            candidates = item.rglob("*") if recursive else item.iterdir()
        else:
            candidates = iter([item])
        found += [c for c in candidates if is_key_file(c)]
    return sorted(set(found))


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx_selenc._crypto.digest import iter_tensors

    return [t for t in iter_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]


def _location_path(tensor: onnx.TensorProto, base_dir: Path) -> Path:
    return external_info(tensor, base_dir).path  # bounds- and containment-checked


def _data_renames(model: onnx.ModelProto, base_dir: Path) -> dict[Path, str]:
    """Source data file -> its name in the package (relative to ``onnx/``)."""
    files: list[Path] = []
    for tensor in _external_tensors(model):
        path = _location_path(tensor, base_dir)
        if path not in files:
            files.append(path)
    for f in files:
        if is_key_file(f):
            raise ValueError(f"the model names the key file {f} as external data; refusing")
    if len(files) == 1:
        return {files[0]: DATA_NAME}
    base = base_dir.resolve()
    renames = {f: f.relative_to(base).as_posix() for f in files}
    if any(name in (MODEL_NAME, DATA_NAME) for name in renames.values()):
        raise FormatError(f"an external data file is named like the packaged model ({MODEL_NAME})")
    return renames


def _set_location(tensor: onnx.TensorProto, location: str) -> None:
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location


def _check_destination(out: Path, inputs: list[Path], *, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    resolved = out.resolve()
    for item in inputs:
        if resolved == item.resolve() or resolved in item.resolve().parents:
            raise ValueError(
                f"{out} holds the input {item}; package into another folder "
                "(the input is never overwritten)"
            )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} exists and is not empty; pass overwrite=True (CLI: --overwrite) to replace it"
        )


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)
        fout.flush()
        os.fsync(fout.fileno())
    os.chmod(dst, 0o644)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an old ``out`` is moved aside, then removed."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if not any(out.iterdir()):
        os.rmdir(out)
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rename(out, old / out.name)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old / out.name, out)  # put the previous package back
        raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)
