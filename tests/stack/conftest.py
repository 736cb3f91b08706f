"""Fixtures for the stack tests (helpers live in stack_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def components(tiny_unet, tiny_text_encoder):
    """{"unet", "text_encoder"}: the tiny real models from tests/conftest.py, in eval mode."""
    return {"unet": tiny_unet.eval(), "text_encoder": tiny_text_encoder.eval()}
