"""Issue 22 items 14 and 15 (server side): a started server prints one line with its address (no gradio
hint to set share=True), DeepSpeed's CPU notice and httpx's request lines are dropped, and the app asks
gradio to delete its temp copies (gradio's folder grew without end)."""

from __future__ import annotations

import logging
import socket

from sdlora.quiet import quiet_third_party
from sdlora_webui import app as webapp


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_launch_prints_its_address_and_no_share_hint(app, capsys):
    demo = webapp.build_app(app)
    assert demo.delete_cache == webapp.DELETE_CACHE
    try:
        _, url, _ = webapp.launch(demo, app, port=_port(), prevent_thread_lock=True)
    finally:
        demo.close()
    out = capsys.readouterr().out
    assert f"sdlora web UI running on {url}" in out
    assert "share=True" not in out and "public link" not in out


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_deepspeed_and_httpx_notices_are_dropped_and_others_kept():
    quiet_third_party()
    for name, noise, kept in (
        ("DeepSpeed", ("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to "
                       "detect it."), "ZeRO stage 2 enabled"),
        ("httpx", 'HTTP Request: GET http://127.0.0.1:7860/gradio_api/startup-events "HTTP/1.1 200 OK"',
         "connection reset"),
    ):
        logger = logging.getLogger(name)
        handler, level, disabled = _Collect(), logger.level, logger.disabled
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.disabled = False
        try:
            logger.warning(noise)
            logger.warning(kept)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.disabled = disabled
        assert handler.messages == [kept], name
