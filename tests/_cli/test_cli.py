"""The command line: each command works, each failure has its own message and exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_selenc._cli.commands import main
from tests import tiny_models as tm


def test_inspect_plain_and_encrypted(encrypted, capsys) -> None:
    assert main(["inspect", str(encrypted["plain"])]) == 0
    out = capsys.readouterr().out
    assert "w2" in out and "4 conv weights" in out and "encrypted by" not in out
    assert main(["inspect", str(encrypted["enc"]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["encrypted"] and doc["manifest"]["levels"] == 3


def test_run_prints_providers_and_saves_outputs(encrypted, capsys, tmp_path: Path) -> None:
    out = tmp_path / "out.npz"
    assert (
        main(
            [
                "run",
                str(encrypted["enc"]),
                "--key",
                str(encrypted["owner"]),
                "--input",
                str(encrypted["x"]),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "providers: CPUExecutionProvider" in text
    from tests.conftest import ort_run

    ref = ort_run(encrypted["plain"], {"x": np.load(encrypted["x"])})[0]
    assert np.array_equal(np.load(out)["y"], ref)


def test_keys_info_json_has_no_secret(encrypted, capsys) -> None:
    assert main(["keys", "info", str(encrypted["tier"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    secret = json.loads(encrypted["tier"].read_text())["key"]
    assert info["level"] == 1 and secret not in json.dumps(info)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["run", "{enc}", "--key", "{tier}", "--level", "2", "--input", "{x}"],
            4,
            "LevelNotGranted",
        ),
        (["run", "{plain}", "--key", "{owner}", "--input", "{x}"], 8, "NotEncrypted"),
        (["run", "{enc}", "--key", "{x}", "--input", "{x}"], 6, "KeyFileError"),
        (["encrypt", "{plain}", "-o", "{plain}", "--keys", "{x}.new"], 1, "overwrite the input"),
        (["export-key", "{owner}", "--level", "1", "-o", "{tier}"], 1, "already exists"),
        (["run", "{enc}", "--key", "{enc}.missing", "--input", "{x}"], 1, "key file "),
    ],
)
def test_errors_are_one_line_with_distinct_exit_codes(
    encrypted, capsys, argv, code, message
) -> None:
    argv = [a.format(**{k: str(v) for k, v in encrypted.items()}) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_other_models_key_exit_code(encrypted, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other.onnx"
    onnx.save(tm.cnn(seed=3), other)
    assert (
        main(
            [
                "encrypt",
                str(other),
                "-o",
                str(tmp_path / "o.enc.onnx"),
                "--keys",
                str(tmp_path / "other.key"),
                "-q",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "run",
                str(encrypted["enc"]),
                "--key",
                str(tmp_path / "other.key"),
                "--input",
                str(encrypted["x"]),
            ]
        )
        == 3
    )
    assert "KeyMismatch" in capsys.readouterr().err


def test_passphrase_from_environment(tmp_path: Path, monkeypatch) -> None:
    plain = tmp_path / "m.onnx"
    onnx.save(tm.cnn(), plain)
    monkeypatch.setenv("PW", "s3cret")
    assert (
        main(
            [
                "encrypt",
                str(plain),
                "-o",
                str(tmp_path / "e.onnx"),
                "--keys",
                str(tmp_path / "o.key"),
                "--protect-env",
                "PW",
                "-q",
            ]
        )
        == 0
    )
    assert "s3cret" not in (tmp_path / "o.key").read_text()
    np.save(tmp_path / "x.npy", tm.feeds(tm.cnn())["x"])
    assert (
        main(
            [
                "run",
                str(tmp_path / "e.onnx"),
                "--key",
                str(tmp_path / "o.key"),
                "--passphrase-env",
                "PW",
                "--input",
                str(tmp_path / "x.npy"),
            ]
        )
        == 0
    )
    monkeypatch.setenv("PW", "wrong")
    assert (
        main(
            [
                "run",
                str(tmp_path / "e.onnx"),
                "--key",
                str(tmp_path / "o.key"),
                "--passphrase-env",
                "PW",
                "--input",
                str(tmp_path / "x.npy"),
            ]
        )
        == 6
    )


def test_console_script_module_entry(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "onnx_selenc", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.startswith("onnx-selenc ")


def test_key_from_environment_path_or_content(encrypted, monkeypatch, capsys) -> None:
    argv = ["run", str(encrypted["enc"]), "--key-env", "SELENC_KEY", "--input", str(encrypted["x"])]
    monkeypatch.setenv("SELENC_KEY", str(encrypted["tier"]))
    assert main(argv) == 0
    monkeypatch.setenv("SELENC_KEY", encrypted["tier"].read_text())
    assert main(argv) == 0
    monkeypatch.delenv("SELENC_KEY")
    assert main(argv) == 1
    assert "SELENC_KEY" in capsys.readouterr().err


def test_encrypt_with_calibration_and_targets(tmp_path: Path, capsys) -> None:
    plain = tmp_path / "m.onnx"
    onnx.save(tm.classifier(), plain)
    np.savez(
        tmp_path / "cal.npz",
        x=np.random.default_rng(0).standard_normal((48, 3, 8, 8)).astype(np.float32),
    )
    assert (
        main(
            [
                "encrypt",
                str(plain),
                "-o",
                str(tmp_path / "e.onnx"),
                "--keys",
                str(tmp_path / "k.key"),
                "--calib",
                str(tmp_path / "cal.npz"),
                "--levels",
                "2",
                "--budget",
                "0.3",
                "--level-targets",
                "0.6,1.0",
                "--seed",
                "0",
                "-q",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "levels calibrated to targets" in out and "held-out (12 inputs" in out
    assert "the tolerance of +-0.10" in out
    manifest = json.loads(
        subprocess.run(
            [sys.executable, "-m", "onnx_selenc", "inspect", str(tmp_path / "e.onnx"), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["manifest"]
    assert manifest["selection"]["level_targets"] == [0.6, 1.0]


def test_calibration_images_size_from_model_or_option(tmp_path: Path, capsys) -> None:
    from PIL import Image

    plain = tmp_path / "m.onnx"
    onnx.save(tm.classifier(), plain)  # input [N, 3, 8, 8]: fixed size, so no --calib-size
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        Image.fromarray(np.full((10, 10, 3), 40 * i, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    assert (
        main(
            [
                "encrypt",
                str(plain),
                "-o",
                str(tmp_path / "e.onnx"),
                "--keys",
                str(tmp_path / "k.key"),
                "--calib-images",
                str(tmp_path / "imgs"),
                "--budget",
                "0.2",
                "-q",
            ]
        )
        == 0
    )
    onnx.save(tm.cnn(), tmp_path / "dyn.onnx")  # a malformed --calib-size is refused
    assert (
        main(
            [
                "encrypt",
                str(tmp_path / "dyn.onnx"),
                "-o",
                str(tmp_path / "e2.onnx"),
                "--keys",
                str(tmp_path / "k2.key"),
                "--calib-images",
                str(tmp_path / "imgs"),
                "--calib-size",
                "8",
                "-q",
            ]
        )
        == 1
    )


def test_run_names_the_input_it_expects(encrypted, capsys, tmp_path: Path) -> None:
    """A wrong shape or dtype is one error line naming what the model takes (it was
    ONNX Runtime's traceback); an .npz gives inputs by name; a broken file is exit 6."""
    run = ["run", str(encrypted["enc"]), "--key", str(encrypted["owner"]), "--input"]
    for name, array in {
        "shape": np.zeros((2, 3, 4, 4), np.float32),
        "dtype": np.zeros((2, 3, 8, 8), np.int32),  # float64 is cast (see test_cli_json)
    }.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, array)
        assert main([*run, str(path)]) == 1
        assert capsys.readouterr().err.splitlines() == [
            f"error: input 'x' must have shape [?, 3, 8, 8] and dtype float32; {path} holds "
            f"shape {list(array.shape)} and dtype {array.dtype}"
        ]
    np.savez(tmp_path / "in.npz", x=np.load(encrypted["x"]))
    assert main([*run, str(tmp_path / "in.npz")]) == 0
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY\x01")
    assert main([*run, str(tmp_path / "broken.npy")]) == 6
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: FormatError: ")
