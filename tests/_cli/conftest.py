"""An encrypted tiny model with its owner and tier-1 keys, for the command-line tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_selenc._cli.commands import main
from tests import tiny_models as tm


@pytest.fixture
def encrypted(tmp_path: Path) -> dict[str, Path]:
    """``plain``, ``enc`` (3 levels), ``owner`` and ``tier`` (level 1) keys, input ``x``."""
    return make_encrypted(tmp_path)


def make_encrypted(tmp_path: Path) -> dict[str, Path]:
    """What :func:`encrypted` gives, written into ``tmp_path``."""
    plain = tmp_path / "m.onnx"
    onnx.save(tm.cnn(), plain)
    paths = {
        "plain": plain,
        "enc": tmp_path / "m.enc.onnx",
        "owner": tmp_path / "owner.key",
        "tier": tmp_path / "tier1.key",
        "x": tmp_path / "x.npy",
    }
    argv = ["encrypt", str(plain), "-o", str(paths["enc"]), "--keys", str(paths["owner"])]
    assert main([*argv, "--levels", "3", "--budget", "0.2", "--seed", "0", "-q"]) == 0
    assert main(["export-key", str(paths["owner"]), "--level", "1", "-o", str(paths["tier"])]) == 0
    np.save(paths["x"], tm.feeds(tm.cnn())["x"])
    return paths
