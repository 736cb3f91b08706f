"""Train tab: the "Advanced settings" accordion (issue 18's config keys) and loading a kohya config."""

from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr
import pytest

from sdlora.errors import ConfigError
from sdlora.settings import field_spec
from sdlora.settings.kohya_import import read_kohya
from sdlora_webui.paths import AccessError
from sdlora_webui.tabs import train_tab
from sdlora_webui.uploads import UploadError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kohya"
# the keys issue 18 added that a user sets per run; each must have a widget in the accordion
NEW_KEYS = ("optim.optimizer", "optim.optimizer_args", "optim.scheduler", "optim.lr_cycles", "optim.lr_power",
            "optim.loraplus_ratio", "optim.ema_decay", "optim.loss_type", "optim.huber_schedule", "optim.huber_c",
            "optim.ip_noise_gamma", "optim.multires_noise_iterations", "optim.debiased_estimation",
            "optim.min_timestep", "optim.max_timestep", "data.reg_path", "optim.prior_loss_weight",
            "data.validation_path", "data.validation_split", "output.validate_every", "output.log_with")


def advanced_keys() -> list[str]:
    return [key for keys in train_tab.ADVANCED.values() for key in keys]


def test_every_new_key_has_a_widget_with_the_fields_help_and_choices(app):
    with gr.Blocks():
        c = train_tab.create_ui(app)
    by_key = {key: widget for widget, key in c["settings"].items()}
    assert list(by_key) == train_tab.form_keys()  # the order the preset/base handlers fill them in
    for key in NEW_KEYS:
        widget = by_key[key]
        assert widget.info == field_spec(key).help, key
        choices = train_tab.setting_choices(key)
        if choices:
            assert isinstance(widget, gr.Dropdown) and [ch[0] for ch in widget.choices] == choices, key
    assert isinstance(by_key["optim.debiased_estimation"], gr.Checkbox)
    assert isinstance(by_key["optim.lr_cycles"], gr.Number) and by_key["optim.lr_cycles"].precision == 0
    assert by_key["optim.optimizer_args"].lines > 1  # a list: one key=value per line


def test_advanced_values_come_from_the_preset():
    assert train_tab.preset_values("low-memory")["optim.optimizer"] == "adamw8bit"
    assert train_tab.preset_values("embedded")["optim.scheduler"] == "cosine"
    assert train_tab.preset_values("quick")["optim.optimizer_args"] == ""  # an empty list: an empty box
    assert set(advanced_keys()) <= set(train_tab.preset_values("quick"))


def capture_config(monkeypatch) -> dict:
    seen: dict = {}

    def run(cfg, ctx):
        seen["cfg"] = cfg

    monkeypatch.setattr(train_tab, "training_job", run)
    return seen


def test_a_start_with_advanced_values_puts_them_in_the_jobs_config(app, monkeypatch):
    from sdlora.settings.config import dump_config

    seen = capture_config(monkeypatch)
    form = {**train_tab.preset_values(train_tab.DEFAULT_PRESET), "model.base": "embedded", "data.path": "shapes",
            "optim.scheduler": "polynomial", "optim.lr_power": 2.0, "optim.lr_cycles": 3.0,
            "optim.optimizer_args": "d_coef=2\n\n safeguard_warmup=True ", "optim.loss_type": "huber",
            "optim.debiased_estimation": True, "data.reg_path": "shapes", "data.validation_split": 0.25,
            "output.validate_every": 5, "output.log_with": "none", "optim.max_timestep": None}
    job_id, _ = train_tab.start_training(app, form)
    app.jobs.wait(job_id, 30)
    cfg = seen["cfg"]
    assert (cfg.optim.scheduler, cfg.optim.lr_power, cfg.optim.lr_cycles) == ("polynomial", 2.0, 3)
    assert cfg.optim.optimizer_args == ["d_coef=2", "safeguard_warmup=True"]
    assert cfg.optim.loss_type == "huber" and cfg.optim.debiased_estimation is True
    assert Path(cfg.data.reg_path) == (app.config.data_dirs[0] / "shapes").resolve()  # confined, resolved
    assert (cfg.data.validation_split, cfg.output.validate_every, cfg.output.log_with) == (0.25, 5, "none")
    assert cfg.optim.max_timestep is None  # an emptied number keeps the preset's value
    assert "scheduler: polynomial" in dump_config(cfg)  # what the run writes as its run.yaml


@pytest.mark.parametrize("key", ["data.reg_path", "data.validation_path"])
def test_advanced_folders_are_confined(app, key):
    form = {**train_tab.preset_values(train_tab.DEFAULT_PRESET), "model.base": "embedded", "data.path": "shapes",
            key: "../../.."}
    with pytest.raises(AccessError):
        train_tab.config_from_form(app, form)


def test_a_new_field_is_added_by_naming_it(monkeypatch):
    monkeypatch.setitem(train_tab.ADVANCED, "Tracking", ["output.log_with", "output.keep_last"])
    assert train_tab.setting_kind("output.keep_last") == "int"
    assert train_tab.preset_values("quick")["output.keep_last"] == 3


@pytest.mark.parametrize("name", ["sd-scripts-train.toml", "SDXL - LoRA AI_Now prodigy v1.0.json"])
def test_a_kohya_file_fills_the_form_with_the_importers_values(app, name):
    shutil.copy(FIXTURES / name, app.config.data_dirs[0] / name)
    imported = read_kohya(FIXTURES / name)
    *fills, status, extras = train_tab.load_kohya(app, name, None)
    keys = train_tab.form_keys()
    filled = {key: value for key, value in zip(keys, fills, strict=True) if not isinstance(value, dict)}
    assert filled == {key: train_tab._form_value(key, value) for key, value in imported.values.items()
                      if key in keys}
    assert any(key in advanced_keys() for key in filled)
    assert f"{len(imported.mapped)} keys mapped, {len(imported.ignored)} ignored" in status
    for kohya_key, _ in imported.ignored:
        assert sum(line.startswith(f"- ignored {kohya_key}:") for line in status.splitlines()) == 1
    # the filled form starts a run with the imported values
    form = {**train_tab.preset_values(train_tab.DEFAULT_PRESET), **filled, "model.base": "embedded",
            "data.path": "shapes", "kohya": extras}
    cfg = train_tab.config_from_form(app, form)
    for key in filled:
        if key != "output.name":  # made a safe file name
            assert train_tab._get(cfg, key) == imported.values[key], key
    # the mapped values without a field are applied too; the other machine's paths are not
    assert extras == {k: v for k, v in imported.values.items()
                      if k not in keys and k not in ("model.base", "data.path", "output.dir")}
    for key, value in extras.items():
        assert train_tab._get(cfg, key) == value, key
    assert cfg.model.base == "embedded" and cfg.data.path.endswith("shapes")


def test_the_train_toml_fills_the_advanced_optimizer_fields(app):
    upload = str(FIXTURES / "sd-scripts-train.toml")
    *fills, status, extras = train_tab.load_kohya(app, "", upload)
    values = dict(zip(train_tab.form_keys(), fills, strict=True))
    assert values["optim.optimizer"] == "lion" and values["optim.scheduler"] == "cosine_with_restarts"
    assert values["optim.optimizer_args"] == "betas=0.9,0.99\nweight_decay=0.1"
    assert values["optim.loraplus_ratio"] == 16.0 and values["output.log_with"] == "tensorboard"
    assert "lora.conv_rank" in status and "applied when you start" in status and "lora.conv_rank" in extras


def test_a_bad_kohya_file_is_a_one_line_error_and_a_refused_upload_is_deleted(app, tmp_path, monkeypatch):
    uploads = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    broken = uploads / "u1" / "preset.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^preset\.json: not valid JSON") as err:
        train_tab.load_kohya(app, "", str(broken))
    assert "\n" not in str(err.value) and not broken.exists()
    binary = uploads / "u2" / "preset.toml"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(UploadError, match="not a text file"):
        train_tab.load_kohya(app, "", str(binary))
    assert not binary.exists()
    other = uploads / "u3" / "preset.yaml"
    other.parent.mkdir(parents=True)
    other.write_text("optim: {lr: 1}")
    with pytest.raises(UploadError, match="only .json, .toml"):
        train_tab.load_kohya(app, "", str(other))
    with pytest.raises(ConfigError, match="no kohya config"):
        train_tab.load_kohya(app, "  ", None)
    with pytest.raises(AccessError):
        train_tab.load_kohya(app, "/etc/passwd", None)


def test_the_kohya_loader_is_wired(app):
    from sdlora_webui import app as webapp

    demo = webapp.build_app(app)
    fn = next(fn for fn in demo.fns.values() if fn.api_name == "train_load_kohya")
    assert len(fn.outputs) == len(train_tab.form_keys()) + 2  # the fields, the status, the field-less values
