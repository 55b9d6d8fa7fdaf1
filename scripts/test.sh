#!/usr/bin/env bash
# Install what is missing, then run the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check src tests bench tools
.venv/bin/ruff format --check src tests bench tools
exec .venv/bin/pytest -q "$@"
