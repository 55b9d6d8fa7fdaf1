#!/usr/bin/env bash
# Install what is missing, then run the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check src tests bench tools
.venv/bin/ruff format --check src tests bench tools
if (($#)); then
    exec .venv/bin/pytest -q "$@"
fi
# The unit and integration tiers on four workers (they wait more than they compute),
# then the mount tier alone (its timing-sensitive tests get the machine to themselves);
# both run, whatever fails.
rc=0
.venv/bin/pytest -q -n 4 -m "not mount" || rc=$?
.venv/bin/pytest -q -m mount || rc=$?
exit "$rc"
