"""Outputs are never lost: no silent overwrite, and an interrupted write leaves nothing.

A second ``encrypt`` to the same output is refused unless asked to overwrite (it would
orphan every tier key handed out); no output may be the key file or an input; the
key file, the model and its external data appear together or not at all, whether
the write fails, is interrupted by Ctrl-C or by SIGTERM, at any step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_selenc as se
from onnx_selenc._cli.commands import main
from onnx_selenc._onnx import modelio as _modelio
from onnx_selenc.exceptions import KeyMismatch
from tests import tiny_models as tm
from tests.conftest import ort_run

ROOT = Path(__file__).resolve().parents[2]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``root``, hidden ones too: path -> bytes (None: folder)."""
    found: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            found[os.path.relpath(os.path.join(folder, d), root)] = None
        for f in files:
            path = os.path.join(folder, f)
            found[os.path.relpath(path, root)] = Path(path).read_bytes()
    return found


def _encrypt(plain: Path, out: Path, key: Path, **kwargs) -> se.EncryptResult:
    kwargs.setdefault("levels", 3)
    kwargs.setdefault("budget", 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return se.encrypt(plain, out, key_file=key, seed=kwargs.pop("seed", 0), **kwargs)


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "m.onnx"
    path.parent.mkdir()
    onnx.save(tm.cnn(), path)
    return path


def _top_matches_plain(model: Path, key: Path, plain: Path) -> bool:
    feeds = tm.feeds(tm.cnn())
    top = se.load_session(model, key=key).run(None, feeds)[0]
    return bool(np.array_equal(top, ort_run(plain, feeds)[0]))


# --- no silent overwrite -----------------------------------------------------------------
@pytest.mark.parametrize("external", [False, True])
def test_second_encrypt_to_the_same_output_is_refused(plain, tmp_path, external) -> None:
    out = tmp_path / "out" / "m.enc.onnx"
    first = _encrypt(plain, out, tmp_path / "out" / "owner.key", external_data=external)
    assert len(first.model_files) == (2 if external else 1)
    se.export_key(first.key_file, 1, tmp_path / "out" / "tier1.key")
    before = snapshot(tmp_path)
    with pytest.raises(FileExistsError, match=r"already exists.*overwrite=True"):
        _encrypt(plain, out, tmp_path / "out" / "owner2.key", external_data=external)
    # a data file alone blocks it too: it belongs to a model of that name
    lone = tmp_path / "out" / "lone.onnx"
    if external:
        os.replace(out, lone.with_name("moved.onnx"))
        os.replace(out.with_name("m.enc.onnx.data"), lone.with_name("lone.onnx.data"))
        moved = snapshot(tmp_path)
        with pytest.raises(FileExistsError, match=r"lone\.onnx\.data already exists"):
            _encrypt(plain, lone, tmp_path / "owner3.key", external_data=False)
        assert snapshot(tmp_path) == moved
        os.replace(lone.with_name("moved.onnx"), out)
        os.replace(lone.with_name("lone.onnx.data"), out.with_name("m.enc.onnx.data"))
    assert snapshot(tmp_path) == before  # byte for byte, and no new (hidden) file
    sess = se.load_session(out, key=tmp_path / "out" / "tier1.key")
    assert sess.run(None, tm.feeds(tm.cnn()))[0].shape


def test_second_encrypt_is_refused_on_the_command_line(plain, tmp_path, capsys) -> None:
    out, owner, tier = tmp_path / "e.onnx", tmp_path / "owner.key", tmp_path / "tier1.key"
    base = ["encrypt", str(plain), "-o", str(out), "--levels", "3", "--budget", "0.2", "-q"]
    assert main([*base, "--keys", str(owner)]) == 0
    assert main(["export-key", str(owner), "--level", "1", "-o", str(tier)]) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert main([*base, "--keys", str(tmp_path / "owner2.key")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "already exists" in err and "--overwrite" in err
    assert snapshot(tmp_path) == before
    se.load_session(out, key=tier)  # the tier key handed out still works


@pytest.mark.parametrize(
    ("first_external", "second_external"), [(True, True), (True, False), (False, True)]
)
def test_overwrite_replaces_model_and_data(
    plain, tmp_path, first_external, second_external
) -> None:
    out = tmp_path / "m.enc.onnx"
    old = _encrypt(plain, out, tmp_path / "old.key", external_data=first_external)
    new = _encrypt(
        plain, out, tmp_path / "new.key", external_data=second_external, overwrite=True, seed=1
    )
    names = {"src", "src/m.onnx", "old.key", "new.key", "m.enc.onnx"}
    if second_external:
        names.add("m.enc.onnx.data")  # a stale data file of the old model is removed
    assert set(snapshot(tmp_path)) == names
    assert [p.name for p in new.model_files] == (
        ["m.enc.onnx", "m.enc.onnx.data"] if second_external else ["m.enc.onnx"]
    )
    assert _top_matches_plain(out, new.key_file, plain)
    with pytest.raises(KeyMismatch):
        se.load_session(out, key=old.key_file)


def test_overwrite_on_the_command_line(plain, tmp_path, capsys) -> None:
    out = tmp_path / "e.onnx"
    base = ["encrypt", str(plain), "-o", str(out), "-q", "--external-data"]
    assert main([*base, "--keys", str(tmp_path / "a.key")]) == 0
    assert main([*base, "--keys", str(tmp_path / "b.key"), "--overwrite"]) == 0
    assert _top_matches_plain(out, tmp_path / "b.key", plain)
    # --overwrite never applies to the owner key
    assert main([*base, "--keys", str(tmp_path / "b.key"), "--overwrite"]) == 1
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["same", "data", "alias", "key-as-output"])
def test_output_on_the_key_path_is_refused_before_anything_is_written(
    plain, tmp_path, monkeypatch, case
) -> None:
    from onnx_selenc._encrypt import files as enc_mod

    out = tmp_path / "same.key"
    key = {
        "same": out,
        "data": tmp_path / "same.key.data",
        "alias": tmp_path / "src" / ".." / "same.key",
        "key-as-output": out,
    }[case]
    if case == "key-as-output":  # -o names an existing key file of another model
        _encrypt(plain, tmp_path / "other.onnx", out)
        key = tmp_path / "new.key"
    before = snapshot(tmp_path)
    monkeypatch.setattr(enc_mod, "encrypt_model", lambda *a, **k: pytest.fail("encrypted"))
    error = FileExistsError if case == "key-as-output" else ValueError
    with pytest.raises(error, match="key file"):
        _encrypt(plain, out, key, overwrite=True)
    assert snapshot(tmp_path) == before


def test_output_on_the_key_path_is_refused_on_the_command_line(plain, tmp_path, capsys) -> None:
    same = tmp_path / "same.key"
    assert main(["encrypt", str(plain), "-o", str(same), "--keys", str(same), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "key file" in err
    assert set(snapshot(tmp_path)) == {"src", "src/m.onnx"}


def test_outputs_never_overwrite_an_input(tmp_path) -> None:
    plain = tmp_path / "m.onnx"
    onnx.save(tm.cnn(), plain, save_as_external_data=True, location="e.onnx.data", size_threshold=0)
    before = snapshot(tmp_path)
    for out, key in [
        (plain, tmp_path / "k.key"),
        (tmp_path / "e.onnx", tmp_path / "k.key"),
        (tmp_path / "o.onnx", tmp_path / "e.onnx.data"),
    ]:
        with pytest.raises((ValueError, FileExistsError)):
            _encrypt(plain, out, key, overwrite=True)
    assert snapshot(tmp_path) == before


# --- export-key --------------------------------------------------------------------------
@pytest.fixture
def owner(plain, tmp_path) -> Path:
    return _encrypt(plain, tmp_path / "m.enc.onnx", tmp_path / "owner.key").key_file


def test_export_key_to_its_source_is_refused(owner, tmp_path, capsys) -> None:
    before = snapshot(tmp_path)
    for target in (owner, tmp_path / "src" / ".." / "owner.key"):
        for overwrite in (False, True):
            with pytest.raises(ValueError, match="source key file"):
                se.export_key(owner, 1, target, overwrite=overwrite)
    os.link(owner, tmp_path / "hardlink.key")
    with pytest.raises(ValueError, match="source key file"):
        se.export_key(owner, 1, tmp_path / "hardlink.key", overwrite=True)
    os.unlink(tmp_path / "hardlink.key")
    assert main(["export-key", str(owner), "--level", "1", "-o", str(owner), "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "source key file" in err
    assert snapshot(tmp_path) == before


def test_export_key_overwrites_only_a_tier_key(owner, tmp_path, capsys) -> None:
    tier = tmp_path / "tier.key"
    se.export_key(owner, 2, tier)
    with pytest.raises(FileExistsError, match=r"already exists.*overwrite=True"):
        se.export_key(owner, 1, tier)
    assert se.read_key_file(tier).level == 2
    se.export_key(owner, 1, tier, overwrite=True)
    assert se.read_key_file(tier).level == 1 and os.stat(tier).st_mode & 0o777 == 0o600
    assert main(["export-key", str(owner), "--level", "0", "-o", str(tier), "--overwrite"]) == 0
    assert se.read_key_file(tier).level == 0
    # never an owner key (another model's), nor a file that is not a key
    other = _encrypt(
        tmp_path / "src" / "m.onnx", tmp_path / "o.onnx", tmp_path / "other-owner.key"
    ).key_file
    note = tmp_path / "notes.txt"
    note.write_text("keep me")
    before = snapshot(tmp_path)
    with pytest.raises(FileExistsError, match="owner"):
        se.export_key(owner, 1, other, overwrite=True)
    with pytest.raises(FileExistsError, match="not an onnx-selenc key file"):
        se.export_key(owner, 1, note, overwrite=True)
    assert main(["export-key", str(owner), "--level", "1", "-o", str(other), "--overwrite"]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert snapshot(tmp_path) == before


# --- interruptions -----------------------------------------------------------------------
_FILE_CALLS = ("link", "replace", "rename", "fsync")


def _count_calls(monkeypatch, fail_at: int | None = None) -> list[str]:
    """Wrap the os calls the writers use; raise KeyboardInterrupt instead of call fail_at."""
    calls: list[str] = []
    for name in _FILE_CALLS:
        real = getattr(os, name)

        def wrapper(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            if len(calls) == fail_at:
                raise KeyboardInterrupt
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, wrapper)
    return calls


def _setup(root: Path, *, previous: bool, external: bool) -> tuple[Path, Path, Path]:
    """A plain model, and with ``previous`` an earlier encryption at the output."""
    plain = root / "src" / "m.onnx"
    plain.parent.mkdir(parents=True)
    onnx.save(tm.cnn(), plain)
    out = root / "out" / "m.enc.onnx"
    if previous:
        _encrypt(plain, out, root / "out" / "old.key", external_data=not external)
    return plain, out, root / "keys" / "new" / "owner.key"  # a key folder yet to make


@pytest.mark.parametrize("external", [False, True])
@pytest.mark.parametrize("previous", [False, True], ids=["new", "overwrite"])
def test_interruption_at_each_file_step_leaves_nothing_new(
    tmp_path, monkeypatch, external, previous
) -> None:
    with monkeypatch.context() as m:  # how many steps a whole run takes
        plain, out, key = _setup(tmp_path / "count", previous=previous, external=external)
        calls = _count_calls(m)
        _encrypt(plain, out, key, external_data=external, overwrite=previous)
        steps = len(calls)
    assert steps >= (5 if external else 4)  # >= 3 files fsynced, 2 placed
    for k in range(1, steps + 1):
        root = tmp_path / f"run{k}"
        plain, out, key = _setup(root, previous=previous, external=external)
        before = snapshot(root)
        with monkeypatch.context() as m:
            _count_calls(m, fail_at=k)
            with pytest.raises(KeyboardInterrupt):
                _encrypt(plain, out, key, external_data=external, overwrite=previous)
        assert snapshot(root) == before, f"interrupted at step {k} of {steps}"


@pytest.mark.parametrize("external", [False, True])
@pytest.mark.parametrize("where", ["_write_model", "_save_external", "stage_key_file"])
def test_interruption_while_writing_leaves_nothing_new(
    tmp_path, monkeypatch, external, where
) -> None:
    from onnx_selenc._encrypt import files as enc_mod

    plain, out, key = _setup(tmp_path, previous=True, external=external)
    before = snapshot(tmp_path)
    module = enc_mod if where == "stage_key_file" else _modelio
    real = getattr(module, where)

    def written_then_interrupted(*args, **kwargs):
        real(*args, **kwargs)  # the file is complete under its temporary name
        raise KeyboardInterrupt

    monkeypatch.setattr(module, where, written_then_interrupted)
    try:
        _encrypt(plain, out, key, external_data=external, overwrite=True)
    except KeyboardInterrupt:
        pass
    else:  # _save_external is not on the path of an inline model
        assert where == "_save_external" and not external
        return
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_writing_cleans_up_and_reaches_the_previous_handler(
    tmp_path, monkeypatch, sig
) -> None:
    """In-process: a Python handler was there before, so SIGTERM cannot end pytest."""
    plain, out, key = _setup(tmp_path, previous=True, external=True)
    before = snapshot(tmp_path)
    got: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    real = _modelio._write_model

    def signalled(*args, **kwargs):
        written = real(*args, **kwargs)
        os.kill(os.getpid(), sig)
        return written

    monkeypatch.setattr(_modelio, "_write_model", signalled)
    try:
        with pytest.raises(KeyboardInterrupt if sig == signal.SIGINT else InterruptedError):
            _encrypt(plain, out, key, external_data=True, overwrite=True)
        assert signal.getsignal(signal.SIGTERM) is not previous  # ours was restored
        assert got == ([signal.SIGTERM] if sig == signal.SIGTERM else [])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert snapshot(tmp_path) == before


_SLOW_ENCRYPT = """
import os, sys, time, warnings
from pathlib import Path
import onnx_selenc as se
from onnx_selenc._onnx import modelio as _modelio

where, plain, out, key = sys.argv[1:5]
if where == "write":  # stop after the model is written under its temporary name
    real = _modelio._write_model
    def slow(*args, **kwargs):
        result = real(*args, **kwargs)
        print("ready", flush=True)
        time.sleep(60)
        return result
    _modelio._write_model = slow
else:  # stop in the middle of moving the files into place
    real_link, calls = os.link, []
    def slow_link(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:  # the key is placed first; the model and data follow
            print("ready", flush=True)
            time.sleep(1)
        return real_link(*args, **kwargs)
    os.link = slow_link
warnings.simplefilter("ignore")
se.encrypt(plain, out, key_file=key, levels=3, budget=0.2, external_data=True)
print("finished", flush=True)
"""


@pytest.mark.parametrize("where", ["write", "commit"])
def test_sigterm_to_a_running_encrypt(tmp_path, where) -> None:
    """A real SIGTERM: while writing, nothing is left; while placing, all is placed."""
    plain, out, key = _setup(tmp_path, previous=False, external=True)
    before = snapshot(tmp_path)
    script = tmp_path.parent / f"slow_encrypt_{where}.py"
    script.write_text(textwrap.dedent(_SLOW_ENCRYPT))
    proc = subprocess.Popen(
        [sys.executable, str(script), where, str(plain), str(out), str(key)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", line + proc.communicate(timeout=60)[1]
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGTERM, stderr  # ended by the signal, as usual
    assert "finished" not in stdout
    if where == "write":
        assert snapshot(tmp_path) == before
    else:  # the moves were under way: they complete, then the process ends
        assert set(snapshot(tmp_path)) - set(before) == {
            "out",
            "out/m.enc.onnx",
            "out/m.enc.onnx.data",
            "keys",
            "keys/new",
            "keys/new/owner.key",
        }
        assert _top_matches_plain(out, key, plain)


# --- the demo ----------------------------------------------------------------------------
def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys) -> None:
    from samples import demo

    foreign = tmp_path / "checkout"
    foreign.mkdir()
    (foreign / "README.md").write_text("mine")
    (foreign / "owner.key").write_text("also mine")  # a demo file name, not the demo's
    before = snapshot(tmp_path)
    assert demo.main(["--out", str(foreign)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not made by this demo" in err
    assert demo.main(["--out", str(foreign / "README.md")]) == 1
    assert snapshot(tmp_path) == before

    ours = tmp_path / "demo-out"
    demo.prepare_out(ours)
    assert (ours / demo.MARKER).is_file()
    for name in (
        "model.enc.onnx",
        "model.enc.onnx.data",
        "owner.key",
        "tier3.key",
        "accuracy_per_level.png",
        "added-by-the-user.txt",
    ):
        (ours / name).write_text("x")
    demo.prepare_out(ours)  # a rerun removes the demo's own files, nothing else
    assert sorted(p.name for p in ours.iterdir()) == [demo.MARKER, "added-by-the-user.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    demo.prepare_out(empty)
    assert [p.name for p in empty.iterdir()] == [demo.MARKER]
