#!/usr/bin/env bash
# Set up (if needed) and run the tests. By default the fast lane: everything but the tests marked `slow`
# (over ~20 s) or `e2e` (a real browser). `--all` runs every test, as CI does. Other arguments go to
# pytest (a `-m` of your own replaces the fast lane's selection).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ "${1:-}" == "--all" ]]; then
    shift
    exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -m "not slow and not e2e" "$@"
