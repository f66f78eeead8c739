"""``onnx-selenc decrypt`` (issue 24.2): the owner's file back; tiers and existing files refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest

from onnx_selenc._cli.commands import main
from tests import tiny_models as tm


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_decrypt_writes_the_original_file(encrypted, capsys, tmp_path: Path) -> None:
    out = tmp_path / "back.onnx"
    assert main(["decrypt", str(encrypted["enc"]), "--key", str(encrypted["owner"]),
                 "-o", str(out)]) == 0  # fmt: skip
    text = capsys.readouterr()
    assert _sha(out) == _sha(encrypted["plain"])
    assert f"sha256 {_sha(out)}" in text.out and "byte for byte" in text.out
    assert "warning" not in text.err


def test_decrypt_json(encrypted, capsys, tmp_path: Path) -> None:
    out = tmp_path / "back.onnx"
    argv = ["decrypt", str(encrypted["enc"]), "--key", str(encrypted["owner"]), "-o", str(out)]
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model_files"] == [str(out)] and doc["byte_identical"] is True
    assert doc["sha256"] == _sha(encrypted["plain"]) and doc["problem"] is None


def test_decrypt_with_external_data(capsys, tmp_path: Path) -> None:
    plain = tmp_path / "plain" / "m.onnx"
    plain.parent.mkdir()
    onnx.save(tm.cnn(), plain, save_as_external_data=True, location="m.weights", size_threshold=0)
    enc, owner = tmp_path / "m.enc.onnx", tmp_path / "owner.key"
    assert main(["encrypt", str(plain), "-o", str(enc), "--keys", str(owner), "--levels", "2",
                 "--budget", "0.2", "--seed", "0", "-q"]) == 0  # fmt: skip
    out = tmp_path / "back" / "m.onnx"
    assert main(["decrypt", str(enc), "--key", str(owner), "-o", str(out)]) == 0
    assert f"wrote {out}, {out.parent / 'm.weights'}" in capsys.readouterr().out
    assert _sha(out) == _sha(plain)
    assert _sha(out.parent / "m.weights") == _sha(plain.parent / "m.weights")


def test_a_tier_key_is_refused(encrypted, capsys, tmp_path: Path) -> None:
    out = tmp_path / "back.onnx"
    assert main(["decrypt", str(encrypted["enc"]), "--key", str(encrypted["tier"]),
                 "-o", str(out)]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "owner key" in err and "never get a plain file" in err
    assert "Traceback" not in err and not out.exists()


def test_an_existing_output_is_refused_then_replaced(encrypted, capsys, tmp_path: Path) -> None:
    out = tmp_path / "back.onnx"
    out.write_bytes(b"mine")
    argv = ["decrypt", str(encrypted["enc"]), "--key", str(encrypted["owner"]), "-o", str(out)]
    assert main(argv) == 1
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"mine"
    assert main([*argv, "--overwrite"]) == 0
    assert _sha(out) == _sha(encrypted["plain"])


@pytest.mark.parametrize("which", ["enc", "owner"])
def test_an_input_is_never_the_output(encrypted, capsys, which: str) -> None:
    before = encrypted[which].read_bytes()
    argv = ["decrypt", str(encrypted["enc"]), "--key", str(encrypted["owner"])]
    assert main([*argv, "-o", str(encrypted[which]), "--overwrite"]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert encrypted[which].read_bytes() == before


def test_encrypt_json_says_whether_decrypt_gives_the_file_back(capsys, tmp_path: Path) -> None:
    model = tm.cnn()
    # A second doc_string record after the graph: protobuf writes it back elsewhere.
    odd = model.SerializeToString() + onnx.ModelProto(doc_string="late").SerializeToString()
    for name, data in (("plain", model.SerializeToString()), ("odd", odd)):
        (tmp_path / f"{name}.onnx").write_bytes(data)
        paths = [tmp_path / f"{name}.{ext}" for ext in ("onnx", "enc", "key")]
        argv = ["encrypt", str(paths[0]), "-o", str(paths[1]), "--keys", str(paths[2])]
        argv += ["--levels", "2", "--budget", "0.2"]
        assert main([*argv, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["byte_identical"] is (name == "plain")
        said = [w for w in doc["warnings"] if "byte for byte" in w]
        assert bool(said) is (name == "odd")
