"""The base tests reuse the trainer tests' tiny-model helpers (tests_train_helpers.py): their folder goes on
sys.path as pytest does for a test folder's own helpers. The stack helpers (tests/stack_helpers.py) and the
`components` / `pipe` fixtures come from tests/ itself (tests/conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

TRAIN_TESTS = Path(__file__).resolve().parent.parent / "train"
if str(TRAIN_TESTS) not in sys.path:
    sys.path.insert(0, str(TRAIN_TESTS))
