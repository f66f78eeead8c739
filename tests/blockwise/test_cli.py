"""The ``blockwise`` commands, through a tiny argparse root, ``main()`` and a subprocess."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_selenc.blockwise import BlockKey
from onnx_selenc.blockwise._cli import add_blockwise_commands, main
from onnx_selenc.exceptions import KeyMismatch
from tests.blockwise.test_models import patch_model, run, vit_like

ROOT = Path(__file__).resolve().parents[2]


def _call(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="onnx-selenc")
    add_blockwise_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["blockwise", *argv])
    return args.func(args)


def _encrypted(tmp_path: Path) -> tuple[Path, Path, Path]:
    src = tmp_path / "plain.onnx"
    onnx.save(patch_model(norm="sub_div"), src)
    assert (
        _call(
            "encrypt-model",
            str(src),
            "-o",
            str(tmp_path / "enc.onnx"),
            "--key-out",
            str(tmp_path / "model.key"),
            "--flip",
        )
        == 0
    )
    return src, tmp_path / "enc.onnx", tmp_path / "model.key"


def test_encrypt_model_and_npy_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, enc, key = _encrypted(tmp_path)
    out = capsys.readouterr().out
    assert BlockKey.load(key).key_id in out and "4x4 patches" in out
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 16, 16)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    assert (
        _call(
            "encrypt-images",
            "--key",
            str(key),
            str(tmp_path / "x.npy"),
            "-o",
            str(tmp_path / "xe.npy"),
            "--model",
            str(enc),
        )
        == 0
    )
    assert (
        _call(
            "decrypt-images",
            "--key",
            str(key),
            str(tmp_path / "xe.npy"),
            "-o",
            str(tmp_path / "xd.npy"),
        )
        == 0
    )
    np.testing.assert_array_equal(np.load(tmp_path / "xd.npy"), x)
    xe = np.load(tmp_path / "xe.npy")
    assert xe.dtype == np.uint8 and not np.array_equal(xe, x)
    assert (
        _call(
            "encrypt-images",
            "--key",
            str(key),
            str(tmp_path / "x.npy"),
            "-o",
            str(tmp_path / "in.npy"),
            "--model-input",
        )
        == 0
    )
    y_enc = run(onnx.load(enc), np.load(tmp_path / "in.npy"))
    y = run(onnx.load(src), x.astype(np.float32) / 255)
    assert np.abs(y_enc - y).max() <= 1e-4 * np.abs(y).max()


def test_png_round_trip(tmp_path: Path) -> None:
    image_mod = pytest.importorskip("PIL.Image")
    key = _encrypted(tmp_path)[2]
    rgb = np.random.default_rng(1).integers(0, 256, (16, 20, 3)).astype(np.uint8)
    image_mod.fromarray(rgb).save(tmp_path / "img.png")
    assert (
        _call(
            "encrypt-images",
            "--key",
            str(key),
            str(tmp_path / "img.png"),
            "-o",
            str(tmp_path / "enc.png"),
        )
        == 0
    )
    assert (
        _call(
            "decrypt-images",
            "--key",
            str(key),
            str(tmp_path / "enc.png"),
            "-o",
            str(tmp_path / "dec.png"),
        )
        == 0
    )
    with image_mod.open(tmp_path / "dec.png") as img:
        np.testing.assert_array_equal(np.asarray(img), rgb)
    assert (
        _call(
            "encrypt-images",
            "--key",
            str(key),
            str(tmp_path / "img.png"),
            "-o",
            str(tmp_path / "enc.npy"),
        )
        == 0
    )
    assert np.load(tmp_path / "enc.npy").shape == (1, 3, 16, 20)  # the model's layout
    with pytest.raises(ValueError, match="lossy"):
        _call(
            "encrypt-images",
            "--key",
            str(key),
            str(tmp_path / "img.png"),
            "-o",
            str(tmp_path / "enc.jpg"),
        )
    with pytest.raises(ValueError, match="overwrite the input"):
        _call(
            "encrypt-images",
            "--key",
            str(key),
            str(tmp_path / "img.png"),
            "-o",
            str(tmp_path / "img.png"),
        )


def test_wrong_model_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, enc, key = _encrypted(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    onnx.save(patch_model(), other / "p.onnx")
    _call(
        "encrypt-model",
        str(other / "p.onnx"),
        "-o",
        str(other / "e.onnx"),
        "--key-out",
        str(other / "k.key"),
    )
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 16, 16), np.uint8))
    with pytest.raises(KeyMismatch):
        _call(
            "encrypt-images",
            "--key",
            str(other / "k.key"),
            str(tmp_path / "x.npy"),
            "-o",
            str(tmp_path / "y.npy"),
            "--model",
            str(enc),
        )
    capsys.readouterr()
    rc = main(
        [
            "encrypt-images",
            "--key",
            str(other / "k.key"),
            str(tmp_path / "x.npy"),
            "-o",
            str(tmp_path / "y.npy"),
            "--model",
            str(enc),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: this key (id ") and "not made for this model" in err
    assert (
        main(["encrypt-model", str(src), "-o", str(tmp_path / "x.onnx"), "--key-out", str(key)])
        == 1
    )
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "bad.key").write_text("{")
    assert (
        main(
            [
                "decrypt-images",
                "--key",
                str(tmp_path / "bad.key"),
                str(tmp_path / "x.npy"),
                "-o",
                str(tmp_path / "z.npy"),
            ]
        )
        == 1
    )
    assert "not valid JSON" in capsys.readouterr().err


def test_orthogonal_scramble_weak_and_info(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    onnx.save(vit_like(), tmp_path / "vit.onnx")
    assert (
        main(
            [
                "encrypt-model",
                str(tmp_path / "vit.onnx"),
                "-o",
                str(tmp_path / "e.onnx"),
                "--key-out",
                str(tmp_path / "k.key"),
                "--orthogonal",
                "--scramble",
            ]
        )
        == 0
    )
    assert "block scrambling (4x4 grid)" in capsys.readouterr().out
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 16, 16), np.uint8))
    assert (
        main(
            [
                "encrypt-images",
                "--key",
                str(tmp_path / "k.key"),
                str(tmp_path / "x.npy"),
                "-o",
                str(tmp_path / "x.png"),
            ]
        )
        == 1
    )
    assert "write .npy instead" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "k.key")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["transform"] == "orthogonal" and "key" not in info and not info["weak"]
    assert main(["info", str(tmp_path / "e.onnx")]) == 0
    assert json.loads(capsys.readouterr().out)["key_id"] == info["key_id"]
    onnx.save(patch_model(patch=2, size=8), tmp_path / "p2.onnx")
    assert (
        main(
            [
                "encrypt-model",
                str(tmp_path / "p2.onnx"),
                "-o",
                str(tmp_path / "p2e.onnx"),
                "--key-out",
                str(tmp_path / "p2.key"),
            ]
        )
        == 0
    )
    assert "warning: weak key" in capsys.readouterr().err


def test_python_dash_m(tmp_path: Path) -> None:
    onnx.save(patch_model(), tmp_path / "p.onnx")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnx_selenc.blockwise",
            "encrypt-model",
            str(tmp_path / "p.onnx"),
            "-o",
            str(tmp_path / "e.onnx"),
            "--key-out",
            str(tmp_path / "k.key"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "key id:" in proc.stdout
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnx_selenc.blockwise",
            "encrypt-model",
            str(tmp_path / "p.onnx"),
            "-o",
            str(tmp_path / "e.onnx"),
            "--key-out",
            str(tmp_path / "k.key"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 1 and proc.stderr.startswith("error: key file")


def test_json_documents(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--json``: one document per command (README "Scripting"), through the main CLI."""
    from onnx_selenc._cli.commands import main as cli

    def run_json(*argv: object) -> dict:
        assert cli(["blockwise", *map(str, argv), "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    onnx.save(patch_model(patch=2, size=8), tmp_path / "p.onnx")
    doc = run_json(
        "encrypt-model", tmp_path / "p.onnx", "-o", tmp_path / "e.onnx", "--key-out", tmp_path / "k"
    )
    assert doc["model_file"] == str(tmp_path / "e.onnx") and doc["key_file"] == str(tmp_path / "k")
    assert doc["key_id"] == BlockKey.load(tmp_path / "k").key_id
    assert doc["stem"]["patch"] == 2 and doc["stem"]["channels"] == 3
    assert doc["key"]["transform"] == "permutation" and "key" not in doc["key"]
    assert doc["weak"] and doc["warnings"] and doc["warnings"][0].startswith("weak key")
    assert isinstance(doc["key_space_bits"], float) and doc["scrambled_constants"] == []
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.uint8))
    images = ["--key", tmp_path / "k", tmp_path / "x.npy", "-o", tmp_path / "xe.npy"]
    doc = run_json("encrypt-images", *images)
    assert doc == {
        "input": str(tmp_path / "x.npy"),
        "output": str(tmp_path / "xe.npy"),
        "input_shape": [1, 3, 8, 8],
        "input_dtype": "uint8",
        "output_shape": [1, 3, 8, 8],
        "output_dtype": "uint8",
    }
    doc = run_json(
        "decrypt-images", "--key", tmp_path / "k", tmp_path / "xe.npy", "-o", tmp_path / "xd.npy"
    )
    assert doc["output"] == str(tmp_path / "xd.npy")
    assert (
        run_json("info", tmp_path / "k")["key_id"]
        == run_json("info", tmp_path / "e.onnx")["key_id"]
    )


def test_standalone_json_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``python -m onnx_selenc.blockwise``: exit code 1 for every error, as documented."""
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 16, 16), np.uint8))
    argv = ["encrypt-images", "--key", str(tmp_path / "no.key"), str(tmp_path / "x.npy")]
    assert main([*argv, "-o", str(tmp_path / "y.npy"), "--json"]) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc == {
        "error": f"key file {tmp_path / 'no.key'} does not exist",
        "code": 1,
        "kind": "FileNotFoundError",
    }
    assert err == f"error: {doc['error']}\n"
    assert main(["info"]) == 2 and "usage:" in capsys.readouterr().err
