"""The app builds without launching, binds loopback by default, and wires the cross-tab action."""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
import pytest

from sdlora.errors import SdloraError
from sdlora_webui import app as webapp
from sdlora_webui.tabs import generate_tab


def test_build_app_names_every_listener(app):
    demo = webapp.build_app(app)
    assert isinstance(demo, gr.Blocks)
    names = {fn.api_name for fn in demo.fns.values() if fn.api_name}
    for expected in ("train_start", "train_cancel", "train_poll", "train_add_to_stack", "generate", "gen_add",
                     "library_refresh", "library_upload", "library_save_notes", "tools_convert",
                     "tools_metadata", "tools_inspect"):
        assert expected in names


def test_two_apps_share_nothing(tmp_path):
    a = webapp.default_state(tmp_path / "a" / "l", tmp_path / "a" / "o", data_dirs=())
    b = webapp.default_state(tmp_path / "b" / "l", tmp_path / "b" / "o", data_dirs=())
    assert a.jobs is not b.jobs and a.generate_lock is not b.generate_lock
    a.close()
    b.close()


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                                ("0.0.0.0", False), ("192.168.1.5", False), ("", False)])
def test_is_loopback(host, loopback):
    assert webapp.is_loopback(host) is loopback


def test_exposed_host_warns(app, monkeypatch, caplog):
    calls = {}

    class FakeDemo:
        def queue(self, **kwargs):
            calls["queue"] = kwargs

        def launch(self, **kwargs):
            calls["launch"] = kwargs
            return None, "http://127.0.0.1:7860/", None

        def block_thread(self):
            calls["blocked"] = True

    with caplog.at_level(logging.WARNING):
        webapp.launch(FakeDemo(), app, host="0.0.0.0")
    assert "anyone who can reach" in caplog.text
    assert calls["launch"]["server_name"] == "0.0.0.0"
    assert calls["launch"]["max_file_size"] == app.config.limits.largest
    assert set(calls["launch"]["allowed_paths"]) == {str(p) for p in app.config.read_roots}
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        webapp.launch(FakeDemo(), app)
    assert calls["launch"]["server_name"] == "127.0.0.1" and "anyone" not in caplog.text


def test_add_training_result_fills_the_library_and_a_slot(app, tmp_path):
    trained = tmp_path / "trained.safetensors"
    trained.write_bytes(b"weights")
    job = app.jobs.submit("style", lambda ctx: str(trained))
    app.jobs.wait(job.id, 5)
    message, name, slots = webapp.add_training_result(app, job.id, [generate_tab.Slot("other")])
    assert (Path(app.config.lora_dir) / f"{name}.safetensors").read_bytes() == b"weights"
    assert [s.name for s in slots] == ["other", "trained"] and "stack" in message
    with pytest.raises(SdloraError):
        webapp.add_training_result(app, None, [])


def test_cli_parser_defaults_to_loopback():
    from sdlora.cli import build_parser

    args = build_parser().parse_args(["webui"])
    assert args.host == "127.0.0.1" and args.base == "embedded"
    assert args.run.__module__ == "sdlora.cli.webui"


def test_cli_module_does_not_import_gradio():
    import subprocess
    import sys

    code = "import sys, sdlora.cli, sdlora.cli.webui; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_webui_builds_and_launches_with_the_folders(tmp_path, monkeypatch):
    from sdlora.cli import main

    seen = {}

    def fake_launch(demo, state, *, host, port):
        seen.update(demo=demo, state=state, host=host, port=port)

    monkeypatch.setattr(webapp, "launch", fake_launch)
    model = tmp_path / "model"
    model.mkdir()
    code = main(["webui", "--lora-dir", str(tmp_path / "l"), "--output-dir", str(tmp_path / "o"),
                 "--data-dir", str(tmp_path), "--base", str(model), "--port", "7999"])
    assert code == 0 and isinstance(seen["demo"], gr.Blocks)
    assert seen["host"] == "127.0.0.1" and seen["port"] == 7999
    state = seen["state"]
    assert state.config.lora_dir == (tmp_path / "l").resolve() and state.config.data_dirs == (tmp_path.resolve(),)
    assert state.base_model(None) == str(model.resolve())
    state.close()
