"""Loading a protected model leaves no ONNX Runtime telemetry under the home folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx

from onnx_selenc import EncryptOptions, encrypt
from tests.tiny_models import cnn

_LOAD = """
import sys
import numpy as np
import onnx_selenc as se
session = se.load_session(sys.argv[1], key=sys.argv[2])
session.run(None, {"x": np.zeros((1, 3, 8, 8), np.float32)})
"""

# The CI markers found in onnxruntime 1.32's binary, beside the telemetry code.
_CI_VARIABLES = frozenset(
    [
        "CI",
        "TF_BUILD",
        "GITHUB_ACTIONS",
        "GITLAB_CI",
        "CIRCLECI",
        "TRAVIS",
        "JENKINS_URL",
        "CODEBUILD_BUILD_ID",
        "BUILDKITE",
        "TEAMCITY_VERSION",
        "APPVEYOR",
        "BITBUCKET_BUILD_NUMBER",
    ]
)


def _load_with_home(home: Path, model: Path, key: Path, **env: str) -> list[Path]:
    # ONNX Runtime writes under $XDG_CACHE_HOME when set, else under $HOME/.cache, and writes
    # nothing when it sees a CI variable (CI, GITHUB_ACTIONS, ...): the opt-in half needs neither.
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ORT_", "XDG_")) and k not in _CI_VARIABLES
    }
    environ.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / "xdg-cache"),
        XDG_DATA_HOME=str(home / "xdg-data"),
        XDG_CONFIG_HOME=str(home / "xdg-config"),
        XDG_STATE_HOME=str(home / "xdg-state"),
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
        **env,
    )
    subprocess.run(
        [sys.executable, "-c", _LOAD, str(model), str(key)], env=environ, check=True, timeout=300
    )
    return sorted(p for p in home.rglob("*") if p.is_file())


def test_a_load_writes_nothing_under_home_and_the_caller_can_opt_in(tmp_path: Path) -> None:
    onnx.save(cnn(), tmp_path / "plain.onnx")
    encrypt(
        tmp_path / "plain.onnx",
        tmp_path / "enc.onnx",
        key_file=tmp_path / "owner.key",
        options=EncryptOptions(levels=2, budget=0.1, seed=0),
    )
    quiet, loud = tmp_path / "home-quiet", tmp_path / "home-loud"
    quiet.mkdir()
    loud.mkdir()
    assert _load_with_home(quiet, tmp_path / "enc.onnx", tmp_path / "owner.key") == []
    # Opting in shows the test can see what ONNX Runtime writes where it does.
    written = _load_with_home(
        loud, tmp_path / "enc.onnx", tmp_path / "owner.key", ORT_DISABLE_TELEMETRY="0"
    )
    assert written and all("Microsoft" in str(p) for p in written)
