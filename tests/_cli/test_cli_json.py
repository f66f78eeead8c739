"""``--json``: every command prints exactly one JSON document on stdout, errors included.

The shapes checked here are the ones README.md's "Scripting" section documents.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from onnx_selenc._cli import commands
from onnx_selenc._cli.commands import main
from tests import tiny_models as tm

ERROR_FIELDS = {"error", "code", "kind"}


def run_json(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, Any, str]:
    """Exit code, the parsed stdout (``json.loads`` refuses anything after the document),
    and stderr."""
    code = main([*map(str, argv), "--json"])
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


def test_inspect(encrypted, capsys) -> None:
    code, doc, _ = run_json(capsys, "inspect", encrypted["plain"])
    assert code == 0 and not doc["encrypted"] and doc["manifest"] is None
    assert doc["conv_weights"] == 1768 and [w["address"] for w in doc["weights"]][:2] == [
        "w1",
        "w2",
    ]
    code, doc, _ = run_json(capsys, "inspect", encrypted["enc"])
    assert code == 0 and doc["encrypted"] and doc["manifest"]["levels"] == 3
    assert doc["producer"] == "onnx-selenc-tests"
    assert set(doc["manifest"]["selection"]) >= {"importance", "masking", "split"}


def test_encrypt(tmp_path: Path, capsys) -> None:
    onnx.save(tm.cnn(), tmp_path / "m.onnx")
    # One kernel of one layer for three levels: encrypt warns and encrypts three.
    code, doc, err = run_json(
        capsys,
        "encrypt",
        tmp_path / "m.onnx",
        "-o",
        tmp_path / "e.onnx",
        "--keys",
        tmp_path / "o.key",
        "--levels",
        "3",
        "--budget",
        "0.0001",
        "--layers",
        "w1",
        "--seed",
        "0",
    )
    assert code == 0
    assert doc["model_files"] == [str(tmp_path / "e.onnx")]
    assert doc["key_file"] == str(tmp_path / "o.key") and len(doc["key_id"]) == 32
    assert doc["levels"] == 3 and doc["conv_weights"] == 1768
    assert doc["fraction"] == pytest.approx(doc["encrypted_weights"] / 1768)
    assert doc["unsupported"] == [] and doc["level_report"] is None
    assert doc["encrypted_weights"] == 3 * 9 and doc["tensors"] == 1
    (warned,) = doc["warnings"]
    assert warned.startswith("the budget selects 1 kernels for 3 levels")
    assert err == f"warning: {warned}\n"  # said on stderr too


def test_encrypt_level_report(tmp_path: Path, capsys) -> None:
    onnx.save(tm.classifier(), tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((48, 3, 8, 8)).astype(np.float32))
    code, doc, _ = run_json(
        capsys,
        "encrypt",
        tmp_path / "m.onnx",
        "-o",
        tmp_path / "e.onnx",
        "--keys",
        tmp_path / "k.key",
        "--calib",
        tmp_path / "cal.npz",
        "--levels",
        "2",
        "--budget",
        "0.3",
        "--level-targets",
        "0.6,1.0",
        "--seed",
        "0",
    )
    report = doc["level_report"]
    assert code == 0 and report["targets"] == [0.6, 1.0]
    assert len(report["calibration"]) == len(report["held_out"]) == 3
    assert report["held_out_samples"] == 12 and report["tolerance"] == 0.1
    assert isinstance(report["within_tolerance"], bool) and report["sampling_error"] > 0


def test_export_key_and_keys_info(encrypted, capsys, tmp_path: Path) -> None:
    code, doc, _ = run_json(
        capsys, "export-key", encrypted["owner"], "--level", "2", "-o", tmp_path / "t2.key"
    )
    assert code == 0
    assert doc == {
        "key_file": str(tmp_path / "t2.key"),
        "key_id": doc["key_id"],
        "level": 2,
        "levels": 3,
        "protected": False,
    }
    code, info, _ = run_json(capsys, "keys", "info", tmp_path / "t2.key")
    assert code == 0 and info["key_id"] == doc["key_id"] and info["level"] == 2
    assert not info["owner"] and not info["protected"] and info["levels"] == 3


def test_rekey(encrypted, capsys, tmp_path: Path) -> None:
    code, doc, _ = run_json(
        capsys,
        "rekey",
        encrypted["enc"],
        "--key",
        encrypted["owner"],
        "-o",
        tmp_path / "r.onnx",
        "--keys",
        tmp_path / "new.key",
    )
    old = json.loads(encrypted["owner"].read_text())["key_id"]
    assert code == 0 and doc["old_key_id"] == old and doc["key_id"] != old
    assert doc["model_files"] == [str(tmp_path / "r.onnx")] and doc["levels"] == 3
    assert doc["key_file"] == str(tmp_path / "new.key")


def test_run_casts_float64_with_a_note(encrypted, capsys, tmp_path: Path) -> None:
    np.save(tmp_path / "x64.npy", np.load(encrypted["x"]).astype(np.float64))
    code, doc, err = run_json(
        capsys,
        "run",
        encrypted["enc"],
        "--key",
        encrypted["tier"],
        "--input",
        tmp_path / "x64.npy",
        "--output",
        tmp_path / "out",
    )
    assert code == 0 and doc["level"] == 1 and doc["levels"] == 3
    assert doc["providers"] == ["CPUExecutionProvider"] and doc["model"] == str(encrypted["enc"])
    (out,) = doc["outputs"]
    assert out["name"] == "y" and out["shape"] == [2, 4] and out["dtype"] == "float32"
    assert isinstance(out["mean"], float) and isinstance(out["std"], float)
    assert doc["output_file"] == str(tmp_path / "out.npz")  # what np.savez writes
    assert np.load(tmp_path / "out.npz")["y"].shape == (2, 4)
    assert doc["notes"] == [f"input x: float64 cast to float32 (from {tmp_path / 'x64.npy'})"]
    assert "note: input x: float64 cast to float32" in err


def test_evaluate(tmp_path: Path, capsys) -> None:
    onnx.save(tm.classifier(), tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((16, 3, 8, 8)).astype(np.float32))
    code, doc, _ = run_json(
        capsys,
        "evaluate",
        tmp_path / "m.onnx",
        "--calib",
        tmp_path / "cal.npz",
        "--budgets",
        "0.05,0.2",
        "--strategies",
        "magnitude:balanced",
        "--chance",
        "0.5",
        "--out",
        tmp_path / "eval",
    )
    assert code == 0 and doc["metric"] == "agreement" and doc["plain_quality"] == 1.0
    assert [(p["strategy"], p["budget"]) for p in doc["points"]] == [
        ("magnitude:balanced", 0.05),
        ("magnitude:balanced", 0.2),
    ]
    assert doc["levels"] == [] and doc["chance"] == 0.5
    assert set(doc["smallest_fraction_reaching_chance"]) == {"magnitude:balanced"}
    assert str(tmp_path / "eval" / "sweep.json") in doc["files"]


def test_package(encrypted, capsys, tmp_path: Path) -> None:
    code, doc, _ = run_json(capsys, "package", encrypted["enc"], "-o", tmp_path / "repo")
    assert code == 0 and doc["output_dir"] == str(tmp_path / "repo") and doc["levels"] == 3
    assert all(Path(f).is_file() for f in doc["files"])
    assert doc["model_file"] == str(tmp_path / "repo" / "onnx" / "model.onnx")
    assert doc["config_file"] == str(tmp_path / "repo" / "config.json")
    assert {doc["model_file"], doc["config_file"]} <= set(doc["files"])


@pytest.mark.parametrize(
    ("argv", "code", "kind"),
    [
        (["run", "{enc}", "--key", "{tier}", "--level", "2", "--input", "{x}"], 4,
         "LevelNotGranted"),
        (["run", "{plain}", "--key", "{owner}", "--input", "{x}"], 8, "NotEncrypted"),
        (["inspect", "{x}"], 6, "FormatError"),
        (["keys", "info", "{x}"], 6, "KeyFileError"),
        (["export-key", "{owner}", "--level", "1", "-o", "{tier}"], 1, "FileExistsError"),
        (["run", "{enc}", "--key", "{enc}.missing", "--input", "{x}"], 1, "FileNotFoundError"),
        (["encrypt", "{plain}", "-o", "{x}.o", "--keys", "{x}.k", "--budget", "2"], 1,
         "ValueError"),
        (["encrypt", "{plain}", "-o", "{x}.o", "--keys", "{x}.k", "--budget", "x"], 2,
         "UsageError"),
        (["run", "{enc}", "--input", "{x}"], 2, "UsageError"),
    ],
)  # fmt: skip
def test_errors(encrypted, capsys, argv, code, kind) -> None:
    argv = [a.format(**{k: str(v) for k, v in encrypted.items()}) for a in argv]
    got, doc, err = run_json(capsys, *argv)
    assert got == code and set(doc) == ERROR_FIELDS
    assert doc["code"] == code and doc["kind"] == kind and doc["error"]
    assert "\n" not in doc["error"]
    assert err.splitlines()[-1].endswith(f"error: {doc['error']}")  # the same words on stderr
    if code == 2:
        assert err.startswith("usage: onnx-selenc ")  # argparse's usage, as without --json


def test_stdout_holds_only_the_document(encrypted, capsys) -> None:
    """ONNX Runtime prints its provider notices on stdout: they go to stderr. (An
    unknown provider name is refused since issue 24.5; one it lacks only warns.)"""
    import onnxruntime as ort

    lacking = [p for p in ort.get_all_providers() if p not in ort.get_available_providers()]
    code, doc, _ = run_json(
        capsys,
        "run",
        encrypted["enc"],
        "--key",
        encrypted["owner"],
        "--input",
        encrypted["x"],
        "--providers",
        lacking[0],
        "CPUExecutionProvider",
    )
    assert code == 0 and doc["providers"] == ["CPUExecutionProvider"]


def test_a_bug_still_gives_one_document_then_its_traceback(encrypted, capsys, monkeypatch) -> None:
    def broken(args: object) -> int:
        raise RuntimeError("an internal error")

    monkeypatch.setattr(commands, "cmd_inspect", broken)  # build_parser reads it when called
    with pytest.raises(RuntimeError):
        main(["inspect", str(encrypted["plain"]), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"error": "an internal error", "code": 1, "kind": "RuntimeError"}


def test_console_script_json_error(encrypted, tmp_path: Path) -> None:
    """Through the real entry point: exit code, one document, no traceback."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnx_selenc",
            "run",
            str(encrypted["enc"]),
            "--key",
            str(tmp_path / "owner.key.gone"),
            "--input",
            str(encrypted["x"]),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["error"] == f"key file {tmp_path / 'owner.key.gone'} does not exist"
    assert proc.stderr == f"error: {doc['error']}\n"
