"""The file side of :func:`onnx_selenc.package`: key-file detection, the user's JSON
files, external data renaming, and building the folder beside its destination.

Key files are recognised by their format marker wherever they would enter a package
or a registry (a data "file", a preprocessor config, a label file, an artifact).

Every folder ``package`` or ``save_model`` builds lists its files in
:data:`FILE_LIST_NAME`; with ``overwrite`` only such a folder is replaced, and only
while it holds nothing else and no key file: an owner key dropped into a package
folder must not go with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx

from onnx_selenc._crypto.digest import iter_tensors
from onnx_selenc._crypto.keys import MAX_KEY_FILE_BYTES
from onnx_selenc._crypto.secret_text import holds_key_text
from onnx_selenc._onnx.files import atomic_write
from onnx_selenc._onnx.tensors import external_info
from onnx_selenc.exceptions import FormatError

# Every key file (plain or passphrase-protected, indented or compact) carries this
# exact JSON string as its "format" value; it is how key files are recognised.
KEY_FILE_MARKER = b'"onnx-selenc-key"'
# A preprocessor config or a label list is small; past this it is not what was meant.
MAX_JSON_BYTES = 16 << 20
_CHUNK = 1 << 20
# The list of the files a package (or saved MLflow model) folder was written with.
FILE_LIST_NAME = ".onnx-selenc-files.json"
_FILE_LIST_FORMAT = "onnx-selenc-files"


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


def read_user_json(path: str | os.PathLike[str], *, what: str) -> tuple[bytes, object]:
    """A JSON file the user asks to publish: its bytes and parsed value.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: a key file, key material inside (a key file's text embedded, even
            JSON-escaped; a key in hex or base64: :func:`holds_key_text`), not UTF-8
            JSON, or over :data:`MAX_JSON_BYTES`.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"the {what} file {p} does not exist")
    if is_key_file(p):
        raise ValueError(
            f"{p} is an onnx-selenc key file, not a {what}: key files are never packaged"
        )
    if p.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(
            f"the {what} {p} is over {MAX_JSON_BYTES >> 20} MiB; expected a small JSON file"
        )
    data = p.read_bytes()
    refused = ValueError(f"the {what} {p} holds onnx-selenc key material; refusing to package it")
    # The check MLflow metadata goes through: a key file's text (even JSON-escaped), a
    # raw key in hex or base64; on the bytes, then on the parsed strings (\u escapes).
    if holds_key_text(data.decode("utf-8", "replace")):
        raise refused
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the {what} {p} is not a JSON file: {exc}") from None
    if holds_key_text(json.dumps(doc, ensure_ascii=False)):
        raise refused
    return data, doc


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors of ``model`` (subgraphs included) whose data is in external files."""
    return [t for t in iter_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]


def location_path(tensor: onnx.TensorProto, base_dir: Path) -> Path:
    """The data file of an external tensor, bounds- and containment-checked."""
    return external_info(tensor, base_dir).path


def data_renames(
    model: onnx.ModelProto, base_dir: Path, *, model_name: str, data_name: str
) -> dict[Path, str]:
    """Source data file -> its name in the package, relative to the model's folder.

    One data file becomes ``data_name``; several keep their names relative to
    ``base_dir``, none of which may collide with the packaged model's names.

    Raises:
        ValueError: a data file is a key file.
        FormatError: external data missing or out of range, or a name collision.
    """
    files: list[Path] = []
    for tensor in external_tensors(model):
        path = location_path(tensor, base_dir)
        if path not in files:
            files.append(path)
    for f in files:
        if is_key_file(f):
            raise ValueError(f"the model names the key file {f} as external data; refusing")
    if len(files) == 1:
        return {files[0]: data_name}
    base = base_dir.resolve()
    renames = {f: f.relative_to(base).as_posix() for f in files}
    if any(name in (model_name, data_name) for name in renames.values()):
        raise FormatError(f"an external data file is named like the packaged model ({model_name})")
    return renames


def set_location(tensor: onnx.TensorProto, location: str) -> None:
    """Point an external tensor at ``location`` (offset and length unchanged)."""
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location


def check_destination(out: Path, inputs: list[Path], *, overwrite: bool) -> None:
    """Refuse a destination that is a file, holds an input, or is in use (no ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    resolved = out.resolve()
    for item in inputs:
        if resolved == item.resolve() or resolved in item.resolve().parents:
            raise ValueError(
                f"{out} holds the input {item}; package into another folder "
                "(the input is never overwritten)"
            )
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} exists and is not empty; pass overwrite=True to "
                "replace a folder onnx-selenc wrote"
            )
        check_replaceable(out)


def write_file_list(folder: Path) -> None:
    """List every file under ``folder`` in :data:`FILE_LIST_NAME` (the last file written)."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())
    doc = {"format": _FILE_LIST_FORMAT, "files": files}
    atomic_write(folder / FILE_LIST_NAME, json.dumps(doc, indent=2).encode() + b"\n")


def check_replaceable(out: Path, *, shown: Path | None = None) -> None:
    """Refuse to replace ``out`` unless it holds only the files its own list names.

    ``shown``: the name to give ``out`` in errors (it may have been moved aside).

    Raises:
        FileExistsError: ``out`` holds a key file, has no valid file list (not written
            by ``package`` or ``save_model``, or by an older onnx-selenc), or holds
            anything the list does not name.
    """
    name = shown or out
    # Parsed, not just the marker: a saved MLflow model carries this package's source,
    # which names the marker too.
    keys = sorted(p for p in out.rglob("*") if _is_key_document(p))
    if keys:
        raise FileExistsError(
            f"{name} holds the key file {keys[0].relative_to(out)}; refusing to replace the "
            "folder, even with overwrite (losing a key loses access): move the key out first"
        )
    listed = _listed_files(out, name)
    for root, dirs, names in os.walk(out):
        for entry in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = Path(root, entry).relative_to(out).as_posix()
            if rel != FILE_LIST_NAME and rel not in listed:
                raise FileExistsError(
                    f"{name} holds {rel}, which onnx-selenc did not write there; refusing to "
                    "replace the folder (nothing was removed): move it out or choose "
                    "another folder"
                )


def _is_key_document(path: Path) -> bool:
    """Whether ``path`` is a small JSON object whose format is a key file's."""
    if not is_key_file(path):
        return False
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == KEY_FILE_MARKER.decode().strip('"')


def _listed_files(out: Path, name: Path) -> set[str]:
    """The names in ``out``'s file list (refused if there is none or it is not one)."""
    path = out / FILE_LIST_NAME
    try:
        if path.is_symlink() or path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError
        doc = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != _FILE_LIST_FORMAT:
            raise ValueError
        files = doc["files"]
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise ValueError
    except (OSError, ValueError, KeyError):
        raise FileExistsError(
            f"{name} is not empty and has no onnx-selenc file list ({FILE_LIST_NAME}): it was "
            "not written by `package` (or by an onnx-selenc before 0.3); refusing to replace "
            "it (nothing was removed): empty it yourself or choose another folder"
        ) from None
    return set(files)


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` byte for byte, synced, readable by all."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)
        fout.flush()
        os.fsync(fout.fileno())
    os.chmod(dst, 0o644)


def staging_folder(out: Path) -> Path:
    """A new hidden folder beside ``out`` to build the package in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a package is meant to be shared
    return tmp


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an old ``out`` is moved aside, checked
    again (:func:`check_replaceable`: a file may have appeared since), then removed."""
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
        check_replaceable(old / out.name, shown=out)
        os.rename(tmp, out)
    except BaseException:
        os.rename(old / out.name, out)  # put the previous package back
        raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)
