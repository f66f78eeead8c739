#!/usr/bin/env bash
# Create .venv (if missing) and install onnx-selenc with the CPU runtime, the test
# tools and the sample extras. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch==2.13.0 (samples extra) resolves to the local CPU build where one is offered;
# an unpinned torch would pull several GB of CUDA packages.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[cpu,dev,samples]"
