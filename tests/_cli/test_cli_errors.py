"""No traceback for a user error: every command, given bad inputs, prints one ``error:``
line with its documented exit code (and with ``--json`` one error document).

Missing files, malformed files, wrong keys, bad flag values: each case names the exit
code and words of the message a user needs; a missing key path says it is the KEY FILE.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_selenc._cli.commands import main
from onnx_selenc._cli.output import show_progress
from onnx_selenc.blockwise._cli import main as blockwise_main
from tests import tiny_models as tm
from tests._cli.conftest import make_encrypted
from tests.blockwise.test_models import patch_model


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An encrypted model, its keys, and the wrong inputs the cases below name.

    Built once for the module: every case fails before it writes anything.
    """
    tmp_path = tmp_path_factory.mktemp("bad")
    paths = make_encrypted(tmp_path)
    paths["dir"] = tmp_path / "folder"
    paths["dir"].mkdir()
    (paths["dir"] / "notes.txt").write_text("not an image")
    paths["garbage"] = tmp_path / "garbage.bin"
    paths["garbage"].write_bytes(b"\x93NUMPY garbage \x00\xff" * 8)
    paths["badkey"] = tmp_path / "bad.key"
    paths["badkey"].write_text("{")
    paths["xint"] = tmp_path / "xint.npy"
    np.save(paths["xint"], np.zeros((2, 3, 8, 8), np.int32))
    paths["xsmall"] = tmp_path / "xsmall.npy"
    np.save(paths["xsmall"], np.zeros((2, 3, 4, 4), np.float32))
    paths["xnames"] = tmp_path / "names.npz"
    np.savez(paths["xnames"], foo=np.zeros((2, 3, 8, 8), np.float32))
    paths["cal"] = tmp_path / "cal.npz"
    np.savez(paths["cal"], x=np.random.default_rng(0).standard_normal((8, 3, 8, 8), np.float32))
    paths["labels"] = tmp_path / "labels.npy"
    np.save(paths["labels"], np.zeros(3, np.int64))
    # Another model's owner key, a protected key, a model edited after encryption.
    other = tmp_path / "other.onnx"
    onnx.save(tm.cnn(seed=3), other)
    paths["otherkey"] = tmp_path / "other.key"
    argv = ["encrypt", str(other), "-o", str(tmp_path / "o.enc.onnx"), "--keys"]
    assert main([*argv, str(paths["otherkey"]), "-q"]) == 0
    paths["protected"] = tmp_path / "protected.key"
    export = ["export-key", str(paths["owner"]), "--level", "2", "-o", str(paths["protected"])]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PW", "s3cret")
        assert main([*export, "--protect-env", "PW"]) == 0
    model = onnx.load(paths["enc"])
    w = model.graph.initializer[0]
    array = onnx.numpy_helper.to_array(w).copy()
    array.flat[0] += 1
    w.CopyFrom(onnx.numpy_helper.from_array(array, w.name))
    paths["tampered"] = tmp_path / "tampered.onnx"
    onnx.save(model, paths["tampered"])
    paths["patch"] = tmp_path / "patch.onnx"
    onnx.save(patch_model(), paths["patch"])
    paths["bwkey"] = tmp_path / "bw.key"
    bw = ["encrypt-model", str(paths["patch"]), "-o", str(tmp_path / "bw.onnx"), "--key-out"]
    assert blockwise_main([*bw, str(paths["bwkey"])]) == 0
    paths["bwenc"] = tmp_path / "bw.onnx"
    paths["gone"] = tmp_path / "gone"
    return paths


# Each case: the command line (split on spaces, then "{name}" filled in with the
# fixture's paths), its exit code, words of the error line.
ENC = "encrypt {plain} -o {gone}.onnx --keys {gone}.key"
RUN = "run {enc} --key {owner} --input"
EVAL = "evaluate {plain} --calib {cal} --budgets 0.1"
REKEY = "rekey {enc} -o {x}.o --keys {x}.n --key"
BW = "blockwise encrypt-model"
IMAGES = "blockwise encrypt-images {x} -o {gone}.npy --key"
MISSING_KEY = "key file {gone}.key does not exist"

CASES: list[tuple[str, int, str]] = [
    # inspect
    ("inspect {gone}.onnx", 1, "no model file at"),
    ("inspect {garbage}", 6, "not a valid ONNX model"),
    ("inspect {dir}", 1, "is a folder without"),
    # encrypt
    ("encrypt {gone}.in -o {gone}.onnx --keys {gone}.key", 1, "no model file"),
    ("encrypt {garbage} -o {gone}.onnx --keys {gone}.key", 6, "FormatError"),
    (f"{ENC} --budget 2", 1, "budget must be in"),
    (f"{ENC} --budget lots", 2, "invalid float value: 'lots'"),
    (f"{ENC} --levels 0", 1, "levels must be between"),
    (f"{ENC} --importance bogus", 2, "invalid choice: 'bogus'"),
    (f"{ENC} --calib {{gone}}.npz", 6, "cannot read calibration file"),
    (f"{ENC} --calib {{garbage}}", 6, "cannot read calibration file"),
    (f"{ENC} --calib-images {{gone}}", 1, "No such file or directory"),
    (f"{ENC} --calib-images {{dir}} --calib-size 8,8", 6, "no image files"),
    (f"{ENC} --calib-images {{dir}} --calib-size 8", 1, "needs two numbers"),
    (f"{ENC} --level-targets 0.5,1.0 --levels 2", 1, "--level-targets needs calibration inputs"),
    (f"{ENC} --protect-env UNSET_VAR_FOR_TEST", 1, "UNSET_VAR_FOR_TEST (passphrase) is not set"),
    ("encrypt {plain} -o {enc} --keys {gone}.key", 1, "already exists"),
    ("encrypt {plain} -o {gone}.onnx --keys {owner}", 1, "already exists"),
    # export-key
    ("export-key {gone}.key --level 1 -o {x}.k", 1, MISSING_KEY),
    ("export-key {dir} --level 1 -o {x}.k", 1, "key file {dir} is a folder"),
    ("export-key {badkey} --level 1 -o {x}.k", 6, "not valid JSON"),
    ("export-key {enc} --level 1 -o {x}.k", 6, "KeyFileError"),
    ("export-key {tier} --level 2 -o {x}.k", 4, "LevelNotGranted"),
    ("export-key {owner} --level -1 -o {x}.k", 1, "levels start at 0"),
    ("export-key {owner} --level two -o {x}.k", 2, "invalid int value"),
    ("export-key {owner} --level 1 -o {tier}", 1, "already exists"),
    ("export-key {owner} --level 1 -o {owner}", 1, "source key file"),
    ("export-key {protected} --level 1 -o {x}.k", 6, "passphrase-protected"),
    # keys info
    ("keys info {gone}.key", 1, MISSING_KEY),
    ("keys info {badkey}", 6, "not valid JSON"),
    ("keys info {dir}", 1, "is a folder"),
    # rekey
    (f"{REKEY} {{gone}}.key", 1, MISSING_KEY),
    (f"{REKEY} {{tier}}", 1, "needs the model's owner key"),
    (f"{REKEY} {{otherkey}}", 3, "KeyMismatch"),
    (f"{REKEY} {{badkey}}", 6, "KeyFileError"),
    ("rekey {gone}.onnx --key {owner} -o {x}.o --keys {x}.n", 1, "no model file"),
    ("rekey {plain} --key {owner} -o {x}.o --keys {x}.n", 8, "NotEncrypted"),
    ("rekey {enc} --key {owner} -o {enc} --keys {x}.n", 1, "overwrite the input"),
    ("rekey {enc} --key {owner} -o {x}.o --keys {tier}", 1, "already exists"),
    # decrypt
    ("decrypt {enc} --key {gone}.key -o {x}.d", 1, MISSING_KEY),
    ("decrypt {enc} --key {tier} -o {x}.d", 1, "needs the model's owner key"),
    ("decrypt {enc} --key {otherkey} -o {x}.d", 3, "KeyMismatch"),
    ("decrypt {plain} --key {owner} -o {x}.d", 8, "NotEncrypted"),
    ("decrypt {tampered} --key {owner} -o {x}.d", 5, "InvalidBundle"),
    ("decrypt {enc} --key {owner} -o {enc} --overwrite", 1, "overwrite the input"),
    ("decrypt {enc} --key {owner} -o {tier}", 1, "already exists"),
    # run
    ("run {enc} --key {gone}.key --input {x}", 1, MISSING_KEY),
    ("run {enc} --key {dir} --input {x}", 1, "is a folder"),
    ("run {enc} --key-env UNSET_VAR_FOR_TEST --input {x}", 1, "is not set"),
    ("run {enc} --key {badkey} --input {x}", 6, "KeyFileError"),
    ("run {enc} --key {otherkey} --input {x}", 3, "KeyMismatch"),
    ("run {enc} --key {tier} --level 2 --input {x}", 4, "LevelNotGranted"),
    ("run {enc} --key {tier} --level 9 --input {x}", 1, "level must be between"),
    ("run {enc} --key {protected} --input {x}", 6, "passphrase-protected"),
    ("run {tampered} --key {owner} --input {x}", 5, "InvalidBundle"),
    ("run {plain} --key {owner} --input {x}", 8, "NotEncrypted"),
    ("run {gone}.onnx --key {owner} --input {x}", 1, "no model file"),
    ("run {garbage} --key {owner} --input {x}", 6, "FormatError"),
    (f"{RUN} {{gone}}.npy", 1, "{gone}.npy: No such file or directory"),
    (f"{RUN} {{garbage}}", 6, "is not a .npy or .npz file"),
    (f"{RUN} {{dir}}", 1, "Is a directory"),
    (f"{RUN} {{xsmall}}", 1, "must have shape [?, 3, 8, 8] and dtype float32"),
    (f"{RUN} {{xint}}", 1, "must have shape [?, 3, 8, 8] and dtype float32"),
    (f"{RUN} {{xnames}}", 1, "no input 'foo' (from {xnames}); its inputs: x [?, 3, 8, 8] float32"),
    (f"{RUN} y={{x}}", 1, "no input 'y'"),
    ("run {enc} --key {owner}", 2, "--input"),
    ("run {enc} --input {x}", 2, "one of the arguments --key --key-env is required"),
    # evaluate
    ("evaluate {plain}", 1, "needs calibration inputs"),
    ("evaluate {plain} --calib {gone}.npz", 6, "cannot read calibration file"),
    (f"{EVAL} --strategies foo:bar", 1, "unknown importance 'foo'"),
    (f"{EVAL} --data {{cal}} --labels {{labels}}", 1, "3 labels for 8 evaluation samples"),
    (f"{EVAL} --labels {{gone}}.npy", 1, "No such file or directory"),
    (f"{EVAL} --metric f1", 2, "invalid choice: 'f1'"),
    # package
    ("package {gone}.onnx -o {gone}", 1, "no model file"),
    ("package {plain} -o {gone}", 8, "NotEncrypted"),
    ("package {garbage} -o {gone}", 6, "FormatError"),
    ("package {enc} -o {dir}", 1, "exists and is not empty"),
    # blockwise
    (f"{BW} {{gone}}.onnx -o {{x}}.o --key-out {{x}}.k", 1, "No such file"),
    (f"{BW} {{garbage}} -o {{x}}.o --key-out {{x}}.k", 6, "FormatError"),
    (f"{BW} {{plain}} -o {{x}}.o --key-out {{x}}.k", 7, "not a patch embedding"),
    (f"{BW} {{patch}} -o {{x}}.o --key-out {{bwkey}}", 1, "already exists"),
    (f"{IMAGES} {{gone}}.key", 1, MISSING_KEY),
    (f"{IMAGES} {{badkey}}", 6, "not valid JSON"),
    (f"{IMAGES} {{owner}}", 6, "not a block-wise key file"),
    ("blockwise encrypt-images {gone}.npy -o {x}.o.npy --key {bwkey}", 1, "No such file"),
    ("blockwise decrypt-images {x} -o {x}.o.npy --key {bwkey} --layout XY", 2, "invalid choice"),
    ("blockwise info {gone}.key", 1, MISSING_KEY),
    ("blockwise info {gone}.onnx", 1, "No such file"),
    ("blockwise info {enc}", 1, "no block-wise metadata"),
]


def _fill(text: str, paths: dict[str, Path]) -> str:
    return text.format(**{k: str(v) for k, v in paths.items()})


@pytest.mark.parametrize("json_mode", [False, True], ids=["text", "json"])
@pytest.mark.parametrize(("argv", "code", "words"), CASES)
def test_user_errors_are_one_line_never_a_traceback(
    bad, capsys, argv, code, words, json_mode
) -> None:
    # Split before filling in the paths: a path may hold a space.
    argv = [_fill(a, bad) for a in argv.split()] + (["--json"] if json_mode else [])
    capsys.readouterr()  # the module fixture's output, on first use
    assert main(argv) == code  # returns: nothing propagates
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    line = err.splitlines()[-1]
    assert _fill(words, bad) in line
    if code == 2:  # argparse's usage and its "prog: error: ..." line, as ever
        assert err.startswith("usage: onnx-selenc ") and ": error: " in line
    else:
        assert line.startswith("error: ") and err.count("error: ") == 1
    if json_mode:
        doc = json.loads(out)
        assert set(doc) == {"error", "code", "kind"} and doc["code"] == code
        assert line.endswith(doc["error"])
    else:
        assert out == ""


def test_every_command_takes_json() -> None:
    """No command is left out of the list above or of ``--json``."""
    from onnx_selenc._cli.commands import build_parser

    def leaves(parser, path=()):
        subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs:
            yield path, parser
            return
        for name, child in subs[0].choices.items():
            yield from leaves(child, (*path, name))

    found = dict(leaves(build_parser()))
    assert len(found) == 13
    for path, parser in found.items():
        assert any("--json" in a.option_strings for a in parser._actions), path
    covered = {tuple(a for a in argv.split()[:2] if "{" not in a) for argv, _, _ in CASES}
    for path in found:
        assert any(c[: len(path)] == path for c in covered), path


def test_progress_bars_only_on_a_terminal(tmp_path: Path, capsys, monkeypatch) -> None:
    """Logs get no ``\\r`` bars; a terminal gets them unless ``-q``."""
    pytest.importorskip("tqdm")
    onnx.save(tm.cnn(), tmp_path / "m.onnx")

    def encrypt(n: int, *flags: str) -> str:
        out = ["-o", str(tmp_path / f"e{n}.onnx"), "--keys", str(tmp_path / f"k{n}.key")]
        assert main(["encrypt", str(tmp_path / "m.onnx"), *out, *flags]) == 0
        return capsys.readouterr().err

    assert "masking" not in encrypt(0)  # captured stderr is no terminal
    monkeypatch.setattr(type(__import__("sys").stderr), "isatty", lambda self: True)
    assert "masking" in encrypt(1)
    assert "masking" not in encrypt(2, "-q")


def test_show_progress() -> None:
    import argparse
    import sys

    args = argparse.Namespace(quiet=False)
    assert show_progress(args) == sys.stderr.isatty()
    assert not show_progress(argparse.Namespace(quiet=True))
