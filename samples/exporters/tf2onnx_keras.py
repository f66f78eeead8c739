"""TensorFlow/Keras through tf2onnx (producer ``tf2onnx``): names with ``/`` and ``:``.

TensorFlow does not go into the project's environment: ``tensorflow-cpu`` with its
dependencies is about 1.6 GB installed (against ~0.4 GB for everything else), so this
script makes its own virtual environment under ``cache_dir("venvs", "tf2onnx")`` on first
use (pinned ``tensorflow-cpu`` and ``tf2onnx``; a few minutes, ~600 MB of downloads) and
runs the conversion there. Nothing generated is committed.

Variant ``cnn``: a Keras CNN (Conv2D + ReLU, DepthwiseConv2D, 1x1 Conv2D,
Conv2DTranspose, Dense) in NHWC, converted at opset 13 from a ``tf.function``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

from samples._cache import cache_dir
from samples.exporters._tiny import cli

PINS = ("tensorflow-cpu==2.21.0", "tf2onnx==1.17.0")

_CONVERT = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, tensorflow as tf, tf2onnx, keras
keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.Input((32, 32, 3), name="image"),
    keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
    keras.layers.DepthwiseConv2D(3, padding="same"),
    keras.layers.Conv2D(12, 1, activation="relu"),
    keras.layers.Conv2DTranspose(4, 2, strides=2),
    keras.layers.GlobalAveragePooling2D(),
    keras.layers.Dense(3),
])
spec = (tf.TensorSpec((None, 32, 32, 3), tf.float32, name="image"),)
fn = tf.function(lambda x: model(x), input_signature=spec)
tf2onnx.convert.from_function(fn, input_signature=spec, opset=13, output_path=sys.argv[1])
"""


def _python() -> Path:
    """The interpreter of the TensorFlow venv, made (and pip-installed) if missing."""
    folder = cache_dir("venvs", "tf2onnx")
    python = folder / "bin" / "python"
    stamp = folder / "installed.txt"
    if python.is_file() and stamp.is_file() and stamp.read_text().split() == list(PINS):
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PINS]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"could not install {' '.join(PINS)}:\n{proc.stderr[-2000:]}")
    stamp.write_text("\n".join(PINS) + "\n")
    return python


def cnn(out: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([str(_python()), "-c", _CONVERT, str(out)], capture_output=True,
                          text=True, env=env, check=False)  # fmt: skip
    if proc.returncode != 0 or not out.is_file():
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        raise RuntimeError(f"tf2onnx conversion failed (exit {proc.returncode})")


if __name__ == "__main__":
    raise SystemExit(cli({"cnn": cnn}))
