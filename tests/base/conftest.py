"""The base tests reuse the tiny-model helpers of the trainer and stack tests (tests_train_helpers.py,
stack_helpers.py): their folders go on sys.path as pytest does for a test folder's own helpers."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
for folder in ("train", "stack"):
    if str(TESTS / folder) not in sys.path:
        sys.path.insert(0, str(TESTS / folder))


import pytest
from stack_helpers import tiny_pipeline


@pytest.fixture
def components(tiny_unet, tiny_text_encoder):
    """{"unet", "text_encoder"}: the tiny real models from tests/conftest.py, in eval mode."""
    return {"unet": tiny_unet.eval(), "text_encoder": tiny_text_encoder.eval()}


@pytest.fixture
def pipe(components, tiny_vae, tmp_path):
    """A tiny StableDiffusionPipeline around `components` (see stack_helpers.tiny_pipeline)."""
    return tiny_pipeline(components, tiny_vae, tmp_path)
