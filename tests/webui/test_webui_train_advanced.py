"""Train tab: the "Advanced settings" accordion (issue 18's config keys)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from sdlora.config import field_help
from webui.paths import AccessError
from webui.tabs import train_tab

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
        assert widget.info == field_help(key), key
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

    monkeypatch.setattr(train_tab, "run_training", run)
    return seen


def test_a_start_with_advanced_values_puts_them_in_the_jobs_config(app, monkeypatch):
    from sdlora.config import dump_config

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
