"""Third-party notices that tell a user nothing are silenced at the entry points, narrowly, and only there."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from sdlora.quiet import NOISE, DropMessages, quiet_third_party

ROOT = Path(__file__).resolve().parent.parent
TORCHVISION_NOTICE = (
    "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil` for "
    "backward compatibility."
)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_filter_drops_the_notice_and_keeps_other_messages_of_that_logger():
    logger = logging.getLogger("transformers.utils.import_utils")
    saved = list(logger.filters)  # an in-process CLI run in another test may have installed it already
    logger.filters[:] = [f for f in saved if not isinstance(f, DropMessages)]
    handler = _Collect()
    logger.addHandler(handler)
    # other tests (or transformers itself) may have raised the transformers loggers' level or disabled them
    level, disabled = logger.level, logger.disabled
    logger.setLevel(logging.WARNING)
    logger.disabled = False
    try:
        quiet_third_party()
        quiet_third_party()  # idempotent
        assert sum(isinstance(f, DropMessages) for f in logger.filters) == 1
        logger.warning(TORCHVISION_NOTICE)
        logger.warning("Could not import module 'X'")
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = saved
        logger.setLevel(level)
        logger.disabled = disabled
    assert handler.messages == ["Could not import module 'X'"]


def test_importing_the_library_installs_no_filter():
    names = [name for name, _ in NOISE]
    code = (
        "import logging, sdlora, sdlora.cli, sdlora.formats, sdlora.arch.naming; "
        f"print(sum(len(logging.getLogger(n).filters) for n in {names!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "0"


@pytest.mark.slow  # a model-loading subprocess, 10 s on two busy cores: outside the fast lane
def test_model_loading_command_prints_no_torchvision_notice(tmp_path):
    """`sdlora generate` loads the embedded pipeline through diffusers, which imports transformers' image
    processors; without torchvision transformers logs a fallback notice per processor class."""
    out = tmp_path / "image.png"
    result = subprocess.run(
        [sys.executable, "-m", "sdlora", "generate", "--prompt", "a red circle", "--steps", "1", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    assert "torchvision" not in result.stderr
