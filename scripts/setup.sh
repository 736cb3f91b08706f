#!/usr/bin/env bash
# Create .venv at the repository root and install sdlora with its test tools.
# torch is installed first so that pip does not pull a multi-GB CUDA build on CPU machines:
#   SDLORA_TORCH (default "torch==2.13.0", the CPU build on this project's machines) picks it.
#   GPU users: SDLORA_TORCH="torch" (CUDA build from PyPI) or install torch into .venv yourself first;
#   an importable torch is kept as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "${SDLORA_TORCH:-torch==2.13.0}"
fi
if ! .venv/bin/python -c "import sdlora, diffusers, pytest" 2>/dev/null || [ pyproject.toml -nt .venv/.sdlora-installed ]; then
  .venv/bin/pip install -q -e ".[dev]"
  touch .venv/.sdlora-installed
fi
