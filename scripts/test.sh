#!/usr/bin/env bash
# Install what is missing, then run the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
exec .venv/bin/pytest -q "$@"
