"""The Hugging Face-style package (issue 14.5): the card's own code loads a tier, plain
onnxruntime gets level 0, config.json describes the model, preprocessing and labels are
copied with key files refused, and folders of the older layout still load."""

from __future__ import annotations

import json
import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

import onnx_selenc
from onnx_selenc._cli.commands import main
from onnx_selenc._crypto.keys import write_key_file
from onnx_selenc._deploy.model_card import FOLDER_PLACEHOLDER, KEY_PLACEHOLDER
from onnx_selenc._deploy.package import (
    DATA_NAME,
    KEY_FILE_MARKER,
    LEGACY_MODEL_NAME,
    MODEL_NAME,
    package,
)
from onnx_selenc._deploy.package_files import set_location
from onnx_selenc._load.loader import resolve_model_path
from tests import tiny_models as tm

CPU = ["CPUExecutionProvider"]
# ONNX Runtime's names of tensor element types, as numpy dtypes.
ORT_DTYPES = {"float": "float32", "double": "float64", "bool": "bool", "int64": "int64"}


def _encrypt(tmp_path: Path, model: onnx.ModelProto, *, external: bool) -> tuple[Path, Path]:
    """(encrypted model, owner key) in ``tmp_path/src``, 3 levels."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    onnx.save(model, src / "plain.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_selenc.encrypt(
            src / "plain.onnx",
            src / "m.enc.onnx",
            key_file=src / "owner.key",
            levels=3,
            budget=0.3,
            seed=0,
            external_data=external,
        )
    return src / "m.enc.onnx", src / "owner.key"


def _tier_key(owner: Path, level: int, path: Path) -> Path:
    return write_key_file(path, onnx_selenc.read_key_file(owner).derive(level))


def _run(model: Path, key: Path | onnx_selenc.LevelKey, feeds: dict[str, np.ndarray]) -> list:
    return onnx_selenc.load_session(model, key=key, providers=CPU).run(None, feeds)


def _code_blocks(card: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", card, flags=re.S | re.M)


def test_the_cards_python_code_loads_a_tier(tmp_path: Path) -> None:
    enc, owner = _encrypt(tmp_path, tm.classifier(), external=True)
    result = package(enc, tmp_path / "repo")
    assert result.data_files == (result.model_file.parent / DATA_NAME,)
    tier1 = _tier_key(owner, 1, tmp_path / "tier1.key")

    (code,) = _code_blocks(result.readme_file.read_text(), "python")
    assert 'load_session(folder / "onnx" / "model.onnx", key=key)' in code
    assert code.count(FOLDER_PLACEHOLDER) == 1 and code.count(KEY_PLACEHOLDER) == 1
    code = code.replace(FOLDER_PLACEHOLDER, str(result.output_dir))
    code = code.replace(KEY_PLACEHOLDER, str(tier1))
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # the documented code, as written

    x = tm.feeds(tm.classifier())["x"]
    session = namespace["session"]
    assert isinstance(session, ort.InferenceSession)
    expected = _run(enc, tier1, {"x": x})
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], expected[0])
    zeros = {"x": np.zeros((1, 3, 8, 8), np.float32)}  # what the card's feeds are
    np.testing.assert_array_equal(namespace["outputs"][0], _run(enc, tier1, zeros)[0])
    assert not np.array_equal(expected[0], _run(enc, owner, {"x": x})[0])  # tier 1 is partial


def test_the_cards_command_line_runs_a_tier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    enc, owner = _encrypt(tmp_path, tm.cnn(), external=True)
    result = package(enc, tmp_path / "repo")
    tier2 = _tier_key(owner, 2, tmp_path / "tier2.key")
    x = tm.feeds(tm.cnn())["x"]
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", x)

    (block,) = _code_blocks(result.readme_file.read_text(), "sh")
    direct, with_env = block.strip().splitlines()
    argv = shlex.split(direct.replace(FOLDER_PLACEHOLDER, str(result.output_dir)))
    assert argv[:2] == ["onnx-selenc", "run"]
    argv = [a.replace(KEY_PLACEHOLDER, str(tier2)) for a in argv[1:]]
    assert main([*argv, "--output", "out.npz"]) == 0
    np.testing.assert_array_equal(np.load("out.npz")["y"], _run(enc, tier2, {"x": x})[0])

    env, *rest = shlex.split(with_env.replace(FOLDER_PLACEHOLDER, str(result.output_dir)))
    name, value = env.split("=", 1)
    assert value == KEY_PLACEHOLDER
    monkeypatch.setenv(name, str(tier2))
    assert main([*rest[1:], "--output", "env.npz"]) == 0
    np.testing.assert_array_equal(np.load("env.npz")["y"], np.load("out.npz")["y"])
    capsys.readouterr()


def test_onnxruntime_alone_runs_the_degraded_level0_model(tmp_path: Path) -> None:
    enc, owner = _encrypt(tmp_path, tm.cnn(), external=True)
    folder = package(enc, tmp_path / "repo").output_dir
    x = tm.feeds(tm.cnn())["x"]

    plain_session = ort.InferenceSession(str(folder / "onnx" / "model.onnx"), providers=CPU)
    degraded = plain_session.run(None, {"x": x})[0]
    original = ort.InferenceSession(str(enc.parent / "plain.onnx"), providers=CPU)
    assert not np.allclose(degraded, original.run(None, {"x": x})[0], atol=1e-3)
    level0 = onnx_selenc.read_key_file(owner).derive(0)
    np.testing.assert_array_equal(
        degraded, _run(folder / "onnx" / "model.onnx", level0, {"x": x})[0]
    )
    np.testing.assert_allclose(
        _run(folder / "onnx" / "model.onnx", owner, {"x": x})[0],
        original.run(None, {"x": x})[0],
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("build", [tm.cnn, tm.if_subgraph], ids=["cnn", "if_subgraph"])
def test_config_describes_the_model(make_encrypted, tmp_path: Path, build) -> None:
    enc, _ = make_encrypted(build(), levels=3, budget=0.3)
    result = package(enc, tmp_path / "repo")
    config = json.loads(result.config_file.read_text())
    session = ort.InferenceSession(str(result.model_file), providers=CPU)

    pairs = [(config["inputs"], session.get_inputs()), (config["outputs"], session.get_outputs())]
    for specs, metas in pairs:
        assert [s["name"] for s in specs] == [m.name for m in metas]
        for spec, meta in zip(specs, metas, strict=True):
            assert spec["type"] == "tensor"
            assert spec["dtype"] == ORT_DTYPES[meta.type[len("tensor(") : -1]]
            assert len(spec["shape"]) == len(meta.shape)
            for dim, ort_dim in zip(spec["shape"], meta.shape, strict=True):
                if isinstance(ort_dim, int):
                    assert dim == ort_dim
                else:  # a free dimension: its name, or null where it has none
                    assert dim is None or dim == ort_dim
    manifest = onnx_selenc.inspect_model(enc).manifest
    assert manifest is not None
    assert config["encrypted"] is True and config["library_name"] == "onnx-selenc"
    assert (config["levels"], config["key_id"]) == (3, manifest["key_id"])
    assert config["model_file"] == "onnx/model.onnx"
    assert config["opset"] == {"ai.onnx": tm.OPSET}
    assert config["producer"]["name"] == "onnx-selenc-tests"
    assert "id2label" not in config  # the tiny models carry no labels
    assert not any(k.startswith("onnx_selenc.") for k in config.get("metadata_props", {}))


def test_a_free_dimension_keeps_its_name(make_encrypted, tmp_path: Path) -> None:
    model = tm.cnn()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    enc, _ = make_encrypted(model, levels=2, budget=0.3)
    config = json.loads(package(enc, tmp_path / "repo").config_file.read_text())
    assert config["inputs"] == [
        {"name": "x", "type": "tensor", "dtype": "float32", "shape": ["batch", 3, 8, 8]}
    ]
    assert config["outputs"][0]["shape"] == ["y_d0", 4]  # declared y_d1, inferred 4


def test_labels_from_the_model_or_the_user(make_encrypted, tmp_path: Path) -> None:
    model = tm.classifier(classes=3)
    # As Ultralytics writes YOLO's class names: a Python dict repr, not JSON.
    model.metadata_props.add(key="names", value="{0: 'person', 1: 'bicycle', 2: 'car'}")
    model.metadata_props.add(key="classes", value="see the paper")  # not labels: ignored
    enc, _ = make_encrypted(model, levels=2, budget=0.3)

    config = json.loads(package(enc, tmp_path / "a").config_file.read_text())
    assert config["id2label"] == {"0": "person", "1": "bicycle", "2": "car"}
    assert config["label2id"] == {"person": 0, "bicycle": 1, "car": 2}
    assert (config["num_labels"], config["labels_source"]) == (3, "metadata_props:names")
    assert config["metadata_props"]["names"].startswith("{0: 'person'")
    card = (tmp_path / "a" / "README.md").read_text()
    assert "Labels (3, `id2label` in `config.json`): `person`, `bicycle`, `car`." in card

    config = json.loads(
        package(enc, tmp_path / "b", id2label=["cat", "dog", "fox"]).config_file.read_text()
    )
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "fox"}
    assert config["labels_source"] == "user"
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"1": "dog", "0": "cat"}))
    config = json.loads(package(enc, tmp_path / "c", id2label=labels).config_file.read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog"}

    for bad in ({"a": "cat"}, [1, 2], {"-1": "x"}, []):
        with pytest.raises(ValueError, match="labels"):
            package(enc, tmp_path / "d", id2label=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "d").exists()


def test_preprocess_is_copied_as_preprocessor_config(make_encrypted, tmp_path: Path) -> None:
    enc, _ = make_encrypted(tm.cnn(), levels=2, budget=0.3)
    pre = tmp_path / "preprocessor.json"
    pre.write_bytes(b'{"do_normalize": true,\n "image_mean": [0.485, 0.456, 0.406]}\n')
    result = package(enc, tmp_path / "repo", preprocess=pre)

    assert result.preprocessor_file == tmp_path / "repo" / "preprocessor_config.json"
    assert result.preprocessor_file.read_bytes() == pre.read_bytes()  # byte for byte
    assert result.preprocessor_file in result.files
    config = json.loads(result.config_file.read_text())
    assert config["preprocessor_config"] == "preprocessor_config.json"
    assert "`preprocessor_config.json`" in result.readme_file.read_text()


def test_preprocess_refuses_key_files_and_what_is_not_a_json_object(
    make_encrypted, tmp_path: Path
) -> None:
    enc, owner = make_encrypted(tm.cnn(), levels=2, budget=0.3)
    key_text = owner.read_text()
    cases = {
        "owner.key": (owner, ValueError, "key file"),
        "embedded": (json.dumps({"note": key_text}), ValueError, "key material"),
        "list": ("[1, 2, 3]", ValueError, "JSON object"),
        "text": ("mean=0.5 std=0.2", ValueError, "not a JSON file"),
        "binary": (b"\xff\xfe\x00", ValueError, "not a JSON file"),
        "missing": (tmp_path / "nope.json", FileNotFoundError, "does not exist"),
    }
    for name, (content, error, match) in cases.items():
        if isinstance(content, Path):
            path = content
        else:
            path = tmp_path / f"{name}.json"
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(error, match=match):
            package(enc, tmp_path / "repo", preprocess=path)
        assert not (tmp_path / "repo").exists(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_card_front_matter_tiers_and_no_key_material(tmp_path: Path) -> None:
    enc, owner = _encrypt(tmp_path, tm.cnn(), external=True)
    result = package(enc, tmp_path / "repo")
    card = result.readme_file.read_text()
    manifest = json.loads(result.manifest_file.read_text())

    header = yaml.safe_load(card.split("---\n")[1])
    assert header["library_name"] == "onnx"
    assert {"onnx", "onnx-selenc", "encrypted"} <= set(header["tags"])
    assert f"key id: `{manifest['key_id']}`" in card
    assert f"`{manifest['owner_public']}`" in card
    assert "levels (tiers): 3" in card
    for level, restored in enumerate(manifest["level_weights"]):
        assert f"| {level} | {restored} |" in card
    assert "degraded level-0 model" in card and "onnxruntime.InferenceSession" in card
    for name in ("onnx/model.onnx", f"onnx/{DATA_NAME}", "config.json", "manifest.json"):
        assert f"| `{name}` |" in card

    key = onnx_selenc.read_key_file(owner)
    secrets = [KEY_FILE_MARKER, owner.read_bytes()]
    for level in range(key.level + 1):
        material = key.derive(level).material
        secrets += [material, material.hex().encode(), material.hex().upper().encode()]
    for f in result.files:
        data = f.read_bytes()
        assert not [s for s in secrets if s in data], f


def _legacy_package(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A folder as older versions packaged it: onnx/model.enc.onnx(.data)."""
    enc, owner = _encrypt(tmp_path, tm.cnn(), external=True)
    legacy = tmp_path / "legacy"
    (legacy / "onnx").mkdir(parents=True)
    model = onnx.load(str(enc), load_external_data=False)
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            set_location(t, LEGACY_MODEL_NAME + ".data")
    (legacy / "onnx" / LEGACY_MODEL_NAME).write_bytes(model.SerializeToString())
    (legacy / "onnx" / (LEGACY_MODEL_NAME + ".data")).write_bytes(
        (enc.parent / "m.enc.onnx.data").read_bytes()
    )
    (legacy / "manifest.json").write_text("{}")
    return legacy, enc, owner


def test_folders_of_the_older_layout_load_and_repackage(tmp_path: Path) -> None:
    legacy, enc, owner = _legacy_package(tmp_path)
    x = {"x": tm.feeds(tm.cnn())["x"]}
    expected = _run(enc, owner, x)[0]
    assert resolve_model_path(legacy) == legacy / "onnx" / LEGACY_MODEL_NAME
    np.testing.assert_array_equal(_run(legacy, owner, x)[0], expected)

    new = package(legacy, tmp_path / "new")
    assert new.model_file == tmp_path / "new" / "onnx" / MODEL_NAME
    assert resolve_model_path(new.output_dir) == new.model_file
    assert [p.name for p in new.data_files] == [DATA_NAME]
    np.testing.assert_array_equal(_run(new.output_dir, owner, x)[0], expected)
    np.testing.assert_array_equal(_run(new.model_file, owner, x)[0], expected)


def test_resolve_model_path_prefers_the_conventional_name(tmp_path: Path) -> None:
    folder = tmp_path / "both"
    (folder / "onnx").mkdir(parents=True)
    for name in (MODEL_NAME, LEGACY_MODEL_NAME):
        (folder / "onnx" / name).write_bytes(b"")
    assert resolve_model_path(folder) == folder / "onnx" / MODEL_NAME
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"onnx/model\.onnx, onnx/model\.enc\.onnx"):
        resolve_model_path(tmp_path / "empty")
    assert resolve_model_path(tmp_path / "f.onnx") == tmp_path / "f.onnx"  # a file as is


def test_cli_preprocess_and_labels(
    make_encrypted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enc, owner = make_encrypted(tm.cnn(), levels=2, budget=0.3)
    pre = tmp_path / "pre.json"
    pre.write_text('{"size": 8}')
    labels = tmp_path / "labels.json"
    labels.write_text('["a", "b"]')
    out = tmp_path / "repo"
    argv = ["package", str(enc), "-o", str(out), "--preprocess", str(pre)]
    assert main([*argv, "--id2label", str(labels), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    names = [Path(f).relative_to(out).as_posix() for f in doc["files"]]
    assert names == [
        "onnx/model.onnx",
        "config.json",
        "preprocessor_config.json",
        "manifest.json",
        "README.md",
    ]
    assert doc["model_file"] == str(out / "onnx" / "model.onnx")
    assert doc["config_file"] == str(out / "config.json")
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "a", "1": "b"}

    code = main([*argv, "--overwrite", "--preprocess", str(owner), "--json"])
    assert code != 0
    err = json.loads(capsys.readouterr().out)
    assert "key file" in err["error"] and err["kind"] == "ValueError"
    assert (out / "preprocessor_config.json").read_bytes() == pre.read_bytes()  # kept
