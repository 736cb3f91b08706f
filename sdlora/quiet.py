"""Silencing of third-party messages that tell a sdlora user nothing. Standard library only.

Only the entry points call `quiet_third_party()` (the CLI's `main`, the web UI's `build_app`); importing the
library changes no logging or warning settings. Each rule names the logger (or warning module) and a
fragment of the message, so nothing else from that library is hidden.
"""

from __future__ import annotations

import logging

# (logger name, message fragment) of log records to drop.
# transformers 5 logs, once per image-processor class, that it falls back to a PIL backend without
# torchvision whenever diffusers imports its pipelines; sdlora uses no image processor at all.
# DeepSpeed (imported by accelerate when installed) warns on every CPU-only run that it found no GPU; httpx logs
# a line per request gradio makes to its own server at start.
NOISE = (
    ("transformers.utils.import_utils", "requires torchvision (not installed)"),
    ("DeepSpeed", "Setting accelerator to CPU"),
    ("httpx", "HTTP Request: "),
)


class DropMessages(logging.Filter):
    """A logging filter that drops records whose message contains one of `fragments`."""

    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_third_party() -> None:
    """Install the filters for `NOISE` (once; calling again changes nothing). Works before or after the
    third-party library is imported: loggers are looked up by name."""
    for name, fragment in NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) and fragment in f.fragments for f in logger.filters):
            logger.addFilter(DropMessages((fragment,)))
