"""``onnx-selenc package --mlflow``: the package folder as a plain MLflow model (issue 14.1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import onnx_selenc as se
from onnx_selenc._cli.commands import main
from tests._cli.conftest import make_encrypted

mlflow = pytest.importorskip("mlflow")
from onnx_selenc import mlflow as selenc_mlflow  # noqa: E402


def _json(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, dict]:
    code = main([str(a) for a in argv])
    return code, json.loads(capsys.readouterr().out)


def test_package_mlflow_folder_serves_a_tier(tmp_path: Path, capsys, monkeypatch) -> None:
    paths = make_encrypted(tmp_path)
    capsys.readouterr()  # what encrypting printed
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["a", "b", "c"]))
    out = tmp_path / "served"
    code, doc = _json(
        capsys, "package", paths["enc"], "-o", out, "--mlflow", "--id2label", labels,
        "--key-env", "TIER_KEY", "--json",
    )  # fmt: skip
    assert code == 0 and doc["levels"] == 3 and (out / "MLmodel").is_file()
    assert Path(doc["model_file"]).is_file() and doc["model_file"].startswith(str(out))
    config = json.loads(Path(doc["config_file"]).read_text())
    assert config["id2label"] == {"0": "a", "1": "b", "2": "c"}  # the package's options apply
    requirements = (out / "requirements.txt").read_text()
    assert "onnxruntime" in requirements and "onnx-selenc" not in requirements
    key_text = paths["tier"].read_bytes()
    assert not any(key_text in f.read_bytes() for f in out.rglob("*") if f.is_file())

    monkeypatch.setenv("TIER_KEY", str(paths["tier"]))
    model = mlflow.pyfunc.load_model(str(out))
    x = np.load(paths["x"])
    expected = se.load_session(paths["enc"], key=paths["tier"]).run(None, {"x": x})[0]
    assert np.array_equal(np.asarray(model.predict(x)), expected)
    assert model.unwrap_python_model().describe()["level"] == 1


def test_package_mlflow_refuses_a_used_folder_and_keeps_it(tmp_path: Path, capsys) -> None:
    paths = make_encrypted(tmp_path)
    capsys.readouterr()  # what encrypting printed
    out = tmp_path / "served"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, doc = _json(capsys, "package", paths["enc"], "-o", out, "--mlflow", "--json")
    assert code == 1 and doc["kind"] == "FileExistsError"
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".served.")]  # no leftovers
    code, doc = _json(capsys, "package", paths["plain"], "-o", tmp_path / "p", "--mlflow", "--json")
    assert code == 8 and doc["kind"] == "NotEncrypted" and not (tmp_path / "p").exists()
    # --overwrite replaces only a folder onnx-selenc wrote, holding nothing else.
    code, doc = _json(
        capsys, "package", paths["enc"], "-o", out, "--mlflow", "--overwrite", "--json"
    )
    assert code == 1 and "file list" in doc["error"]
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    (out / "mine.txt").unlink()
    code, _ = _json(capsys, "package", paths["enc"], "-o", out, "--mlflow", "--json")
    assert code == 0 and (out / "MLmodel").is_file()
    code, _ = _json(capsys, "package", paths["enc"], "-o", out, "--mlflow", "--overwrite", "--json")
    assert code == 0 and (out / "MLmodel").is_file()


def test_package_mlflow_overwrite_keeps_an_owner_key_inside(tmp_path: Path, capsys) -> None:
    """Issue 25.3: an owner key put into a saved model's folder is never removed with it."""
    paths = make_encrypted(tmp_path)
    capsys.readouterr()
    out = tmp_path / "served"
    assert _json(capsys, "package", paths["enc"], "-o", out, "--mlflow", "--json")[0] == 0
    (out / "owner.key").write_bytes(paths["owner"].read_bytes())
    code, doc = _json(
        capsys, "package", paths["enc"], "-o", out, "--mlflow", "--overwrite", "--json"
    )
    assert code == 1 and "key file" in doc["error"]
    assert (out / "owner.key").read_bytes() == paths["owner"].read_bytes()
    with pytest.raises(FileExistsError, match="key file"):
        selenc_mlflow.save_model(paths["enc"], out, overwrite=True)
    assert (out / "owner.key").is_file() and (out / "MLmodel").is_file()
