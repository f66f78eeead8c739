"""A saved model's own requirements build its serving environment: nothing else installed.

A fresh virtual environment (no system site packages, no onnx-selenc) gets exactly
``pip install -r requirements.txt`` of the saved folder, from the package index (pip's
cache makes a rerun fast), and loads the model there with MLflow's own loader and a
tier key. onnx-selenc comes from the folder's ``code/``, which MLflow puts on sys.path.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlflow")

from onnx_selenc import mlflow as om
from tests._deploy.test_mlflow_serving import Saved, _reference, saved  # noqa: F401

_NETWORK_ERRORS = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeoutError",
    "No matching distribution found",
)

_SERVE = """
import sys
import numpy as np
import mlflow.pyfunc

folder, x_file, out_file = sys.argv[1:]
model = mlflow.pyfunc.load_model(folder)
import onnx_selenc
assert onnx_selenc.__file__.startswith(folder), onnx_selenc.__file__
np.save(out_file, model.predict(np.load(x_file)))
print(model.unwrap_python_model().describe()["level"])
"""


def _index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_fresh_venv_with_only_the_model_requirements_serves_a_tier(
    saved: Saved,  # noqa: F811
    tmp_path: Path,
) -> None:
    if not _index_reachable():
        pytest.skip("the package index (pypi.org) is unreachable: cannot build a fresh env")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    requirements = saved.single / "requirements.txt"
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    if pip.returncode != 0 and any(e in pip.stderr for e in _NETWORK_ERRORS):
        pytest.skip(f"pip could not reach the index: {pip.stderr.strip().splitlines()[-1]}")
    assert pip.returncode == 0, pip.stderr[-3000:]
    probe = subprocess.run(
        [str(python), "-c", "import onnx_selenc"],
        env=env,
        cwd=tmp_path,  # not the repository: `-c` puts the working folder on sys.path
        capture_output=True,
        timeout=60,
    )
    assert probe.returncode != 0  # the fresh environment has no onnx-selenc of its own

    x_file, out_file = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x_file, saved.x)
    script = tmp_path / "serve.py"
    script.write_text(_SERVE)
    served = subprocess.run(
        [str(python), str(script), str(saved.single.resolve()), str(x_file), str(out_file)],
        env={**env, om.DEFAULT_KEY_ENV: str(saved.tier1), "MLFLOW_DISABLE_TELEMETRY": "true"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    assert served.stdout.split()[-1] == "1"
    (y,) = _reference(saved.single_pkg, saved.tier1, saved.x)
    np.testing.assert_array_equal(np.load(out_file), y)
