"""Issue 24.5: the rough edges a new user hit on the command line, one test each.

A closed stdout, calibration files that do not fit the model, provider names, ``run
--output`` over an existing file, messages in the caller's language, levels the model
does not have, and options that mean nothing without another one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import onnx_selenc as se
from onnx_selenc._cli.commands import main
from tests import tiny_models as tm
from tests._cli.conftest import make_encrypted

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def enc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The CLI tests' encrypted tiny model (3 levels), keys and input ``x``."""
    return make_encrypted(tmp_path_factory.mktemp("edges"))


def _run_with_closed_stdout(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """Run the command with stdout a pipe whose reader is gone before it writes (what
    ``| head -c 10`` leaves once head has its bytes), deterministically."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "onnx_selenc", *argv],
            stdout=write,
            stderr=subprocess.PIPE,
            cwd=REPO,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_closed_stdout_ends_quietly(enc, json_flag) -> None:
    done = _run_with_closed_stdout("inspect", str(enc["enc"]), *json_flag)
    assert done.stderr.decode() == ""
    assert done.returncode == 0


def test_closed_stdout_keeps_an_error_code(enc, tmp_path) -> None:
    done = _run_with_closed_stdout("inspect", str(tmp_path / "missing.onnx"), "--json")
    assert done.returncode == 1
    assert done.stderr.decode().startswith("error: ")
    assert "Traceback" not in done.stderr.decode()


def _encrypt_argv(enc: dict[str, Path], tmp_path: Path, *more: str) -> list[str]:
    out = ["-o", str(tmp_path / "c.enc.onnx"), "--keys", str(tmp_path / "c.key")]
    return ["encrypt", str(enc["plain"]), *out, "--levels", "3", "-q", *more]


def test_calibration_arrays_must_name_the_inputs(enc, tmp_path, capsys) -> None:
    x = tm.feeds(tm.cnn(), n=8)["x"]
    np.savez(tmp_path / "y.npz", y=x)  # the model's input is x
    assert main(_encrypt_argv(enc, tmp_path, "--calib", str(tmp_path / "y.npz"))) == 6
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "['y']" in err and "inputs: ['x']" in err
    assert not (tmp_path / "c.enc.onnx").exists() and not (tmp_path / "c.key").exists()
    np.savez(tmp_path / "unnamed.npz", x)  # np.savez's arr_0: the one input's, as before
    assert main(_encrypt_argv(enc, tmp_path, "--calib", str(tmp_path / "unnamed.npz"))) == 0


def test_calibration_arrays_of_the_wrong_size_or_dtype(enc, tmp_path, capsys) -> None:
    x = tm.feeds(tm.cnn(), n=8)["x"]
    for name, array in [("small", x[:, :, :4, :4]), ("ints", (10 * x).astype(np.int64))]:
        np.savez(tmp_path / f"{name}.npz", x=array)
        assert main(_encrypt_argv(enc, tmp_path, "--calib", str(tmp_path / f"{name}.npz"))) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "INVALID_ARGUMENT" not in err, err
        assert f"has shape {list(array.shape)} and dtype {array.dtype}" in err
        assert "takes [N, 3, 8, 8] float32" in err
    np.savez(tmp_path / "f64.npz", x=x.astype(np.float64))  # numpy's default: cast, with a note
    assert main(_encrypt_argv(enc, tmp_path, "--calib", str(tmp_path / "f64.npz"))) == 0
    assert "note: calibration input x: float64 cast to float32" in capsys.readouterr().err


def test_run_checks_provider_names(enc, capsys) -> None:
    run = ["run", str(enc["enc"]), "--key", str(enc["tier"]), "--input", str(enc["x"])]
    assert main([*run, "--providers", "FooProvider"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown ONNX Runtime provider FooProvider")
    assert "CPUExecutionProvider" in err  # what is there instead
    missing = [p for p in ort.get_all_providers() if p not in ort.get_available_providers()]
    assert missing, "every provider onnxruntime knows is available here"
    assert main([*run, "--providers", missing[0], "CPUExecutionProvider"]) == 0
    captured = capsys.readouterr()
    assert (
        f"warning: {missing[0]} is not available in this onnxruntime; the model runs on "
        "CPUExecutionProvider\n"
    ) in captured.err
    assert "EP Error" not in captured.out + captured.err


def test_run_output_is_not_replaced_without_overwrite(enc, tmp_path, capsys) -> None:
    run = ["run", str(enc["enc"]), "--key", str(enc["tier"]), "--input", str(enc["x"])]
    out = tmp_path / "out.npz"
    out.write_bytes(b"earlier results")
    assert main([*run, "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"earlier results"
    assert main([*run, "--output", str(out), "--overwrite"]) == 0
    with np.load(out) as saved:
        assert saved.files == ["y"]
    # Never a key file, even with --overwrite.
    key_copy = tmp_path / "k.npz"
    key_copy.write_bytes(enc["tier"].read_bytes())
    assert main([*run, "--output", str(key_copy), "--overwrite"]) == 1
    assert key_copy.read_bytes() == enc["tier"].read_bytes()


def test_each_interface_speaks_its_own_language(enc, tmp_path, capsys) -> None:
    # Python callers read overwrite=True ...
    with pytest.raises(FileExistsError) as raised:
        se.encrypt(
            enc["plain"],
            enc["enc"],
            key_file=tmp_path / "k.key",
            options=se.EncryptOptions(levels=3),
        )
    assert "overwrite=True" in str(raised.value) and "--overwrite" not in str(raised.value)
    with pytest.raises(FileExistsError) as raised:
        se.export_key(enc["owner"], 1, enc["tier"])
    assert "overwrite=True" in str(raised.value) and "--overwrite" not in str(raised.value)
    with pytest.raises(ValueError) as calib:
        se.encrypt(
            enc["plain"],
            tmp_path / "n.onnx",
            key_file=tmp_path / "n.key",
            options=se.EncryptOptions(levels=3, importance="activation"),
        )
    assert "Calibration(" in str(calib.value)
    # ... command-line users read its flags, and never an argparse attribute name.
    argv = ["encrypt", str(enc["plain"]), "-o", str(enc["enc"]), "--keys", str(tmp_path / "k")]
    assert main([*argv, "--levels", "3", "-q"]) == 1
    export = ["export-key", str(enc["owner"]), "--level", "1", "-o", str(enc["tier"])]
    assert main(export) == 1
    new = ["-o", str(tmp_path / "n.onnx"), "--keys", str(tmp_path / "n.key")]
    assert main(["encrypt", str(enc["plain"]), *new, "--importance", "activation", "-q"]) == 1
    assert main(["keys"]) == 2
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 4, lines
    for line in errors:
        assert "overwrite=True" not in line and "Calibration(" not in line, line
        assert "keys_command" not in line, line
    assert "--overwrite" in errors[0] and "--overwrite" in errors[1]
    assert "--calib" in errors[2]
    assert errors[3].endswith("required: {info}")


def test_a_level_the_model_does_not_have(enc, tmp_path, capsys) -> None:
    export = ["export-key", str(enc["owner"]), "-o", str(tmp_path / "t.key"), "--level"]
    assert main([*export, "9"]) == 1
    assert (
        capsys.readouterr().err
        == "error: the model has levels 0 to 3; there is no level 9 (--level)\n"
    )
    assert not (tmp_path / "t.key").exists()
    # A level the model has but the key does not grant stays LevelNotGranted (exit 4).
    assert (
        main(["export-key", str(enc["tier"]), "-o", str(tmp_path / "t.key"), "--level", "2"]) == 4
    )


def test_level_targets_without_calibration(enc, tmp_path, capsys) -> None:
    # Two targets for the default five levels: the missing calibration is the problem.
    assert main([*_encrypt_argv(enc, tmp_path)[:-3], "--level-targets", "0.5,1.0", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --level-targets needs calibration inputs")
    assert "--calib" in err and "level targets given" not in err


def test_run_input_that_is_not_an_array_file(enc, tmp_path, capsys) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("remember the milk\n")
    run = ["run", str(enc["enc"]), "--key", str(enc["tier"]), "--input", str(notes)]
    assert main(run) == 6
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a .npy or .npz file" in err
    assert "allow_pickle" not in err and "pickle.load" not in err


@pytest.mark.parametrize("flag", [["--runtime", "onnxruntime-gpu"], ["--key-env", "MY_KEY"]])
def test_mlflow_options_without_mlflow(enc, tmp_path, capsys, flag) -> None:
    out = tmp_path / "pkg"
    assert main(["package", str(enc["enc"]), "-o", str(out), *flag]) == 1
    assert capsys.readouterr().err == f"error: {flag[0]} applies only with --mlflow\n"
    assert not out.exists()


def test_rekey_refusal_in_each_interface_s_words(enc, tmp_path, capsys) -> None:
    taken = tmp_path / "taken.onnx"
    taken.write_bytes(b"someone's file")
    with pytest.raises(FileExistsError) as raised:
        se.rekey(enc["enc"], taken, key_file=enc["owner"], new_key_file=tmp_path / "n.key")
    assert "overwrite=True" in str(raised.value) and "--overwrite" not in str(raised.value)
    argv = ["rekey", str(enc["enc"]), "--key", str(enc["owner"]), "-o", str(taken)]
    assert main([*argv, "--keys", str(tmp_path / "n2.key")]) == 1
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err
    assert taken.read_bytes() == b"someone's file"
