#!/usr/bin/env bash
# One command on a fresh machine: install, lint, type-check, and run every test (slow
# real-model and training tests included; pass -m "not slow" for the quick ones).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy onnx_selenc
exec .venv/bin/python -m pytest -q --durations=15 "$@"
