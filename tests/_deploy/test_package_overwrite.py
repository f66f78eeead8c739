"""Issue 25.3: ``package --overwrite`` replaces only what a previous ``package`` wrote.

An owner key (or any file of the user's) inside the destination folder is never
removed with it: the folder is refused, whole, and nothing in it is touched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from onnx_selenc._crypto.tiers import export_key
from onnx_selenc._deploy.package import MODEL_NAME, package
from onnx_selenc._deploy.package_files import FILE_LIST_NAME
from tests import tiny_models


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("where", [".", "onnx"])
def test_a_key_file_inside_the_folder_is_never_removed(
    make_encrypted, tmp_path: Path, where: str
) -> None:
    enc, owner = make_encrypted(tiny_models.cnn(), levels=2, budget=0.3)
    out = tmp_path / "pkg"
    package(enc, out)
    kept = out / where / "owner.key"
    kept.write_bytes(owner.read_bytes())
    before = _snapshot(out)
    with pytest.raises(FileExistsError, match="key file"):
        package(enc, out, overwrite=True)
    assert _snapshot(out) == before
    # Listed or not: a key file under a name the package wrote is refused as well.
    kept.unlink()
    export_key(owner, 1, tmp_path / "tier1.key")
    (out / "README.md").write_bytes((tmp_path / "tier1.key").read_bytes())
    with pytest.raises(FileExistsError, match="key file"):
        package(enc, out, overwrite=True)
    assert (out / "README.md").read_bytes() == (tmp_path / "tier1.key").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_a_file_package_did_not_write_is_refused(make_encrypted, tmp_path: Path) -> None:
    enc, _ = make_encrypted(tiny_models.cnn(), levels=2, budget=0.3)
    out = tmp_path / "pkg"
    package(enc, out)
    (out / "notes").mkdir()
    (out / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="^" + re.escape(f"{out} holds notes/mine.txt")):
        package(enc, out, overwrite=True)
    assert (out / "notes" / "mine.txt").read_text() == "keep me"
    (out / "notes" / "mine.txt").unlink()  # an empty folder of the user's is no loss
    package(enc, out, overwrite=True)
    assert (out / "onnx" / MODEL_NAME).is_file() and not (out / "notes").exists()


def test_a_folder_without_a_file_list_is_refused(make_encrypted, tmp_path: Path) -> None:
    enc, _ = make_encrypted(tiny_models.cnn(), levels=2, budget=0.3)
    out = tmp_path / "work"
    out.mkdir()
    (out / "model.onnx").write_text("someone else's")
    with pytest.raises(FileExistsError, match="file list"):
        package(enc, out, overwrite=True)
    assert _snapshot(out) == {"model.onnx": b"someone else's"}
    # A forged list must be well-formed; one naming the user's file does not hide a key.
    (out / FILE_LIST_NAME).write_text("not json")
    with pytest.raises(FileExistsError, match="file list"):
        package(enc, out, overwrite=True)


def test_overwrite_replaces_the_previous_package_whole(make_encrypted, tmp_path: Path) -> None:
    enc, _ = make_encrypted(tiny_models.cnn(), levels=2, budget=0.3)
    out = tmp_path / "pkg"
    labels = tmp_path / "pre.json"
    labels.write_text(json.dumps({"size": 8}))
    first = package(enc, out, preprocess=labels)
    assert first.preprocessor_file is not None and first.preprocessor_file.is_file()
    second = package(enc, out, overwrite=True)
    assert second.preprocessor_file is None and not (out / "preprocessor_config.json").exists()
    listed = json.loads((out / FILE_LIST_NAME).read_text())["files"]
    assert sorted(p.relative_to(out).as_posix() for p in second.files) == listed
