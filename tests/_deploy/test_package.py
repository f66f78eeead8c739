"""Registry-ready folders: layout, external data renaming, key hygiene, atomicity, CLI."""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_selenc
from onnx_selenc._cli.deploy import add_deploy_commands
from onnx_selenc._deploy.package import DATA_NAME, KEY_FILE_MARKER, MODEL_NAME, package
from onnx_selenc._deploy.package_files import FILE_LIST_NAME
from onnx_selenc.exceptions import FormatError, NotEncrypted
from tests import tiny_models

CPU = ["CPUExecutionProvider"]


def _encrypt_external(tmp_path: Path, *, levels: int = 3) -> tuple[Path, Path]:
    """An encrypted cnn whose weights live in an external data file; (model, owner key)."""
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(tiny_models.cnn(), src / "plain.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = onnx_selenc.encrypt(
            src / "plain.onnx",
            src / "cnn.enc.onnx",
            key_file=src / "owner.key",
            levels=levels,
            budget=0.3,
            seed=0,
            external_data=True,
        )
    assert len(result.model_files) == 2, "the test needs a model with external data"
    return src / "cnn.enc.onnx", src / "owner.key"


def _run(model: Path, key: Path | onnx_selenc.LevelKey, x: np.ndarray) -> np.ndarray:
    return onnx_selenc.load_session(model, key=key, providers=CPU).run(None, {"x": x})[0]


def _external_locations(model_file: Path) -> set[str]:
    model = onnx.load(str(model_file), load_external_data=False)
    return {
        e.value
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }


def test_inline_model_layout_card_and_load(make_encrypted, tmp_path: Path) -> None:
    enc, key = make_encrypted(tiny_models.cnn(), levels=3, budget=0.3)
    out = tmp_path / "dist" / "cnn"
    result = package(enc, out)

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    listed = ["README.md", "config.json", "manifest.json", f"onnx/{MODEL_NAME}"]
    assert files == [FILE_LIST_NAME, *listed]
    assert json.loads((out / FILE_LIST_NAME).read_text())["files"] == listed
    assert MODEL_NAME == "model.onnx"  # the name a Hugging Face user looks for
    assert result.model_file.read_bytes() == enc.read_bytes()  # inline: copied byte for byte
    manifest = onnx_selenc.inspect_model(enc).manifest
    assert manifest is not None
    assert json.loads(result.manifest_file.read_text()) == manifest
    assert (result.key_id, result.levels, result.data_files) == (manifest["key_id"], 3, ())

    card = result.readme_file.read_text()
    assert card.startswith("---\nlibrary_name: onnx\n")
    assert manifest["key_id"] in card and "levels (tiers): 3" in card
    for level, restored in enumerate(manifest["level_weights"]):
        assert f"| {level} | {restored} |" in card
    assert "onnx_selenc.load_session(" in card

    x = tiny_models.feeds(tiny_models.cnn())["x"]
    tier1 = onnx_selenc.read_key_file(key).derive(1)
    np.testing.assert_array_equal(_run(out, tier1, x), _run(enc, tier1, x))
    np.testing.assert_array_equal(_run(out, key, x), _run(enc, key, x))
    assert not np.array_equal(_run(out, tier1, x), _run(out, key, x))


def test_external_data_is_renamed_and_loads_without_the_source(tmp_path: Path) -> None:
    enc, key = _encrypt_external(tmp_path)
    x = tiny_models.feeds(tiny_models.cnn())["x"]
    expected = _run(enc, key, x)
    source_data = (enc.parent / "cnn.enc.onnx.data").read_bytes()

    out = tmp_path / "pkg"
    result = package(enc, out)
    assert result.data_files == (out / "onnx" / DATA_NAME,)
    assert result.data_files[0].read_bytes() == source_data
    assert _external_locations(result.model_file) == {DATA_NAME}

    # Self-contained: the package loads with the source folder gone (key kept elsewhere).
    kept_key = tmp_path / "owner.key"
    shutil.copy(key, kept_key)
    shutil.rmtree(enc.parent)
    np.testing.assert_array_equal(_run(out, kept_key, x), expected)
    assert onnx_selenc.inspect_model(out).manifest is not None


def test_several_data_files_keep_their_names(tmp_path: Path) -> None:
    enc, key = _encrypt_external(tmp_path)
    x = tiny_models.feeds(tiny_models.cnn())["x"]
    expected = _run(enc, key, x)
    split = tmp_path / "split"
    split.mkdir()
    model = onnx.load(str(enc))  # with its external data
    onnx.save_model(
        model,
        str(split / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=False,
        size_threshold=0,
    )
    names = _external_locations(split / "m.onnx")
    assert len(names) > 1

    result = package(split / "m.onnx", tmp_path / "pkg")
    assert _external_locations(result.model_file) == names
    assert {p.name for p in result.data_files} == names
    np.testing.assert_array_equal(_run(tmp_path / "pkg", key, x), expected)


def test_key_files_are_never_copied(make_encrypted, tmp_path: Path) -> None:
    enc, _ = make_encrypted(tiny_models.cnn(), levels=2, budget=0.3)  # owner key beside it
    (tmp_path / "tier.key").write_bytes((tmp_path / "owner0.key").read_bytes())
    out = package(enc, tmp_path / "pkg").output_dir
    for f in out.rglob("*"):
        assert f.suffix != ".key"
        if f.is_file():
            assert KEY_FILE_MARKER not in f.read_bytes()


def test_a_key_file_named_as_external_data_is_refused(tmp_path: Path) -> None:
    enc, key = _encrypt_external(tmp_path)
    model = onnx.load(str(enc), load_external_data=False)
    size = key.stat().st_size
    tensor = next(
        t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    )
    del tensor.external_data[:]
    for k, v in (("location", key.name), ("offset", "0"), ("length", str(size))):
        tensor.external_data.add(key=k, value=v)
    tensor.ClearField("dims")
    tensor.dims.append(size // 4)
    (enc.parent / "evil.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(ValueError, match="key file"):
        package(enc.parent / "evil.onnx", tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


def test_destination_rules_and_atomic_replace(make_encrypted, tmp_path: Path) -> None:
    enc, _ = make_encrypted(tiny_models.cnn(), levels=2, budget=0.3)
    out = tmp_path / "pkg"
    out.mkdir()  # an empty folder is fine
    package(enc, out)
    with pytest.raises(FileExistsError, match="overwrite"):
        package(enc, out)
    (out / "config.json").write_text("{}")  # a file the package wrote is replaced
    package(enc, out, overwrite=True)
    assert json.loads((out / "config.json").read_text())
    assert (out / "onnx" / MODEL_NAME).is_file()

    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        package(enc, tmp_path / "afile", overwrite=True)
    with pytest.raises(ValueError, match="holds the input"):
        package(out, out, overwrite=True)  # repackaging onto itself would delete the input
    with pytest.raises(ValueError, match="holds the input"):
        package(enc, tmp_path, overwrite=True)
    # Nothing half-built is left behind.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_repackaging_a_package(make_encrypted, tmp_path: Path) -> None:
    enc, key = make_encrypted(tiny_models.cnn(), levels=2, budget=0.3)
    first = package(enc, tmp_path / "a")
    second = package(first.output_dir, tmp_path / "b", title="Tiny CNN")
    assert second.model_file.read_bytes() == first.model_file.read_bytes()
    assert second.readme_file.read_text().count("# Tiny CNN") == 1
    x = tiny_models.feeds(tiny_models.cnn())["x"]
    np.testing.assert_array_equal(_run(tmp_path / "b", key, x), _run(enc, key, x))


def test_failures_leave_nothing(tmp_path: Path) -> None:
    enc, _ = _encrypt_external(tmp_path)
    plain = tmp_path / "plain.onnx"
    onnx.save(tiny_models.cnn(), plain)
    with pytest.raises(NotEncrypted):
        package(plain, tmp_path / "pkg")
    (enc.parent / "cnn.enc.onnx.data").unlink()
    with pytest.raises(FormatError, match="missing"):
        package(enc, tmp_path / "pkg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.onnx", "src"]


def _cli(argv: list[str]) -> int:
    root = argparse.ArgumentParser(prog="onnx-selenc")
    add_deploy_commands(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(argv)
    return int(args.func(args))


def test_cli_package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    enc, key = _encrypt_external(tmp_path)
    out = tmp_path / "pkg"
    assert _cli(["package", str(enc), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3-level model" in text and f"onnx/{DATA_NAME}" in text
    with pytest.raises(FileExistsError):
        _cli(["package", str(enc), "-o", str(out)])
    assert _cli(["package", str(enc), "-o", str(out), "--overwrite", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["levels"] == 3 and doc["output_dir"] == str(out)
    assert str(out / "manifest.json") in doc["files"]
    x = tiny_models.feeds(tiny_models.cnn())["x"]
    np.testing.assert_array_equal(_run(out, key, x), _run(enc, key, x))
