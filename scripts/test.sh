#!/usr/bin/env bash
# Set up (if needed) and run the tests. By default the fast lane: everything but the tests marked `slow`
# (over ~20 s) or `e2e` (a real browser), in two worker processes (pytest-xdist; each test file stays in
# one). `--all` runs every test in one process, as CI does. Other arguments go to pytest (a `-m` of your
# own replaces the fast lane's selection; `-n 0` runs it in one process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ "${1:-}" == "--all" ]]; then
    shift
    exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -m "not slow and not e2e" -n 2 --dist loadfile "$@"
