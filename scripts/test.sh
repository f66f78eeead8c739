#!/usr/bin/env bash
# One command on a fresh machine: install, lint, and run every test (slow
# real-model and training tests included; pass -m "not slow" for the quick ones).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q --durations=15 "$@"
