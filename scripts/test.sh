#!/usr/bin/env bash
# One command on a fresh machine: install, lint, check formatting, type-check, and run
# every test (slow real-model and training tests included; pass -m "not slow" for the
# quick ones). .pre-commit-config.yaml runs the same checks on each commit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy onnx_selenc
exec .venv/bin/python -m pytest -q --durations=15 "$@"
