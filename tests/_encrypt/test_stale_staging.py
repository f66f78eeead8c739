"""Issue 25.5: an ``encrypt`` killed by SIGKILL before its commit leaves a hidden
``.owner.key.<pid>.*.tmp`` folder (a complete owner key, a model); the next run for the
same outputs removes it when its process is provably gone, and names any other leftover.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import onnx
import pytest

import onnx_selenc as se
from onnx_selenc.exceptions import LeftoverWarning
from tests import tiny_models as tm

KILLED = textwrap.dedent(
    """
    import os, signal, sys
    import onnx_selenc as se
    from onnx_selenc._onnx import files

    def killed(self):  # SIGKILL once every file is staged, before any is moved into place
        os.kill(os.getpid(), signal.SIGKILL)

    files.Staging.commit = killed
    folder = sys.argv[1]
    se.encrypt(folder + "/plain.onnx", folder + "/m.enc.onnx", key_file=folder + "/owner.key",
               options=se.EncryptOptions(levels=2, budget=0.2, seed=0))
    """
)


def _killed_encrypt(tmp_path: Path) -> list[Path]:
    onnx.save(tm.cnn(), tmp_path / "plain.onnx")
    run = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], check=False)
    assert run.returncode == -signal.SIGKILL
    left = sorted(p for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert left and not (tmp_path / "owner.key").exists()
    assert any((p / "owner.key").is_file() for p in left)  # the owner key was staged
    return left


def _encrypt(tmp_path: Path) -> se.EncryptResult:
    options = se.EncryptOptions(levels=2, budget=0.2, seed=0)
    return se.encrypt(
        tmp_path / "plain.onnx", tmp_path / "m.enc.onnx", key_file=tmp_path / "owner.key",
        options=options,
    )  # fmt: skip


def test_the_next_run_removes_a_killed_runs_folder(tmp_path: Path) -> None:
    left = _killed_encrypt(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeftoverWarning)
        result = _encrypt(tmp_path)
    assert result.key_file.is_file() and not any(p.exists() for p in left)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_leftover_that_cannot_be_proven_dead_is_named_and_kept(tmp_path: Path) -> None:
    (left,) = _killed_encrypt(tmp_path)
    pid = left.name.split(".")[3]
    # A live process under the same pid: perhaps still writing.
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        try:
            live = left.with_name(left.name.replace(f".{pid}.", f".{alive.pid}."))
            left.rename(live)
            with pytest.warns(LeftoverWarning, match="is running") as record:
                _encrypt(tmp_path)
        finally:
            alive.kill()
    assert live.is_dir() and str(live) in str(record[0].message)


@pytest.mark.parametrize("kind", ["old copy", "no pid", "a file of the user's"])
def test_other_leftovers_are_kept(tmp_path: Path, kind: str) -> None:
    (left,) = _killed_encrypt(tmp_path)
    if kind == "old copy":
        (left / "old").mkdir()
        (left / "old" / "m.enc.onnx").write_bytes(b"the previous model")
    elif kind == "no pid":
        pid = left.name.split(".")[3]
        left = left.rename(left.with_name(left.name.replace(f".{pid}.", ".")))
    else:
        (left / "notes.txt").write_text("mine")
    with pytest.warns(LeftoverWarning, match=re.escape(str(left))):
        _encrypt(tmp_path)
    assert left.is_dir()
