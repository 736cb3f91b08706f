"""Train tab handlers as plain functions: data set, captions, form -> config, job lifecycle."""

from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr
import pytest

from sdlora.errors import ConfigError, DatasetError, SdloraError
from sdlora_webui import training_job
from sdlora_webui.paths import AccessError
from sdlora_webui.tabs import train_tab
from sdlora_webui.tabs.common import guarded
from sdlora_webui.uploads import UploadError


def test_load_dataset_lists_images_and_captions(app):
    path, gallery, rows, summary = train_tab.load_dataset(app, "shapes", None)
    assert Path(path) == (app.config.data_dirs[0] / "shapes").resolve()
    assert rows == [["img0.png", ""], ["img1.png", "a square, number 1"], ["img2.png", "a square, number 2"]]
    assert len(gallery) == 3 and gallery[0][1] == "(no caption)"
    assert "3 images" in summary and "1 without" in summary


@pytest.mark.parametrize("attempt", ["../../", "/etc", "shapes/../../../"])
def test_load_dataset_refuses_folders_outside(app, attempt):
    with pytest.raises(AccessError):
        train_tab.load_dataset(app, attempt, None)


def test_load_dataset_symlink_outside_is_refused(app, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (app.config.data_dirs[0] / "link").symlink_to(outside)
    with pytest.raises(AccessError, match="outside"):
        train_tab.load_dataset(app, "link", None)


def test_uploaded_images_become_a_dataset(app, tmp_path):
    from tests_webui_helpers import write_png

    files = [str(write_png(tmp_path / "u" / "a.png")), str(write_png(tmp_path / "u" / "b.png"))]
    (tmp_path / "u" / "a.txt").write_text("hello")
    files.append(str(tmp_path / "u" / "a.txt"))
    path, _, rows, _ = train_tab.load_dataset(app, "", files)
    assert Path(path).is_relative_to(app.config.output_dir)
    assert rows == [["a.png", "hello"], ["b.png", ""]]


def test_oversized_or_disguised_upload_is_refused(app, tmp_path):
    from tests_webui_helpers import write_png

    big = write_png(tmp_path / "big.png", size=(600, 600), noise=True)
    assert big.stat().st_size > app.config.limits.image_bytes
    with pytest.raises(UploadError, match="limit"):
        train_tab.load_dataset(app, "", [str(big)])
    fake = tmp_path / "x.png"
    fake.write_text("<script>alert(1)</script>")
    with pytest.raises(UploadError, match="not a readable image"):
        train_tab.load_dataset(app, "", [str(fake)])
    exe = tmp_path / "x.sh"
    exe.write_text("rm -rf /")
    with pytest.raises(UploadError, match="only"):
        train_tab.load_dataset(app, "", [str(exe)])
    assert not (Path(app.config.output_dir) / "datasets").exists() or not any(
        p.suffix == ".sh" for p in (Path(app.config.output_dir) / "datasets").rglob("*"))


def test_add_trigger_puts_it_first_once():
    rows = [["a.png", "red, square"], ["b.png", "sks, blue"], ["c.png", ""]]
    assert train_tab.add_trigger(rows, "sks") == [["a.png", "sks, red, square"], ["b.png", "sks, blue"],
                                                  ["c.png", "sks"]]
    with pytest.raises(ConfigError):
        train_tab.add_trigger(rows, "  ")


def test_save_captions_copies_a_read_only_dataset(app):
    source = app.config.data_dirs[0] / "shapes"
    before = (source / "img1.txt").read_text()
    new_path, message = train_tab.save_captions(app, str(source), [["img0.png", "sks, first"],
                                                                   ["img1.png", "sks, second"]])
    assert "copied" in message
    assert Path(new_path).is_relative_to(app.config.output_dir)
    assert (Path(new_path) / "img0.txt").read_text().strip() == "sks, first"
    assert (source / "img1.txt").read_text() == before and not (source / "img0.txt").exists()
    # a second save writes in place (the copy is writable)
    again, message = train_tab.save_captions(app, new_path, [["img0.png", "third"]])
    assert again == new_path and "copied" not in message
    assert (Path(new_path) / "img0.txt").read_text().strip() == "third"


def test_save_captions_refuses_rows_naming_other_files(app):
    folder, _ = train_tab.save_captions(app, "shapes", [])
    with pytest.raises(DatasetError):
        train_tab.save_captions(app, folder, [["../../../evil.png", "x"]])


def test_form_becomes_a_confined_config(app):
    values = train_tab.preset_values(train_tab.DEFAULT_PRESET)
    form = {**values, "preset": train_tab.DEFAULT_PRESET, "model.base": "embedded", "data.path": "shapes",
            "lora.rank": 4, "optim.steps": 3.0, "output.name": "../../my style",
            "output.sample_prompts": "a red circle\n\n a blue square ", "data.trigger": "sks: #1"}
    cfg = train_tab.config_from_form(app, form)
    assert cfg.lora.rank == 4 and cfg.optim.steps == 3
    assert cfg.output.sample_prompts == ["a red circle", "a blue square"]
    assert cfg.data.trigger == "sks: #1"
    assert cfg.output.name == "my style"
    assert Path(cfg.output.dir).is_relative_to(app.config.output_dir)
    assert Path(cfg.data.path) == (app.config.data_dirs[0] / "shapes").resolve()


@pytest.mark.parametrize(
    ("change", "error"),
    [({"data.path": "../../.."}, AccessError), ({"model.base": "/etc/passwd"}, AccessError),
     ({"optim.steps": 2.5}, ConfigError), ({"lora.rank": 0}, ConfigError), ({"data.path": ""}, DatasetError),
     ({"preset": "../secrets"}, ConfigError)],
)
def test_bad_form_values_are_refused(app, change, error):
    form = {**train_tab.preset_values(train_tab.DEFAULT_PRESET), "model.base": "embedded", "data.path": "shapes",
            **change}
    with pytest.raises(error):
        train_tab.config_from_form(app, form)


def test_help_text_comes_from_the_config_fields():
    from sdlora.settings import field_spec

    for key in train_tab.SETTINGS:
        assert train_tab.setting_help(key) == field_spec(key).help and field_spec(key).help
    assert "qv" in train_tab.setting_choices("lora.targets")


class FakeStep:
    def __init__(self, step, loss, samples=()):
        self.step, self.loss, self.samples, self.total = step, loss, list(samples), 4


def fake_train(release: threading.Event, out: Path):
    def run(cfg, ctx):
        for step in range(1, 5):
            if ctx.cancelled():
                return None
            training_job.record_step(ctx, FakeStep(step, 1.0 / step, [str(out / "s.png")] if step == 2 else []), 4)
            release.wait(5)
        path = out / "trained.safetensors"
        path.write_bytes(b"weights")
        return str(path)

    return run


def test_start_poll_finish_and_add_to_library(app, monkeypatch, tmp_path):
    release = threading.Event()
    monkeypatch.setattr(train_tab, "training_job", fake_train(release, tmp_path))
    form = {**train_tab.preset_values(train_tab.DEFAULT_PRESET), "model.base": "embedded", "data.path": "shapes"}
    job_id, status = train_tab.start_training(app, form)
    assert f"job {job_id}" in status
    with pytest.raises(SdloraError, match="wait until it is done"):
        train_tab.add_result_to_library(app, job_id)
    while not app.jobs.job_state(job_id)["losses"]:
        threading.Event().wait(0.01)
    view = train_tab.poll(app, job_id)
    assert not view["finished"] and view["losses"][0] == (1, 1.0) and 'value="1" max="4"' in view["progress"]
    release.set()
    app.jobs.wait(job_id, 5)
    view = train_tab.poll(app, job_id)
    assert view["finished"] and view["result"].endswith("trained.safetensors")
    assert [s for s, _ in view["losses"]] == [1, 2, 3, 4] and view["samples"] == [str(tmp_path / "s.png")]
    assert view["queue"][0][2] == "done"
    frame = train_tab.loss_frame(view["losses"])
    assert list(frame[frame["series"] == "loss"]["loss"]) == [1.0, 0.5, 1 / 3, 0.25]
    name, _ = train_tab.add_result_to_library(app, job_id)
    assert (Path(app.config.lora_dir) / f"{name}.safetensors").read_bytes() == b"weights"


def test_second_job_waits_in_the_queue_and_cancel_works(app, monkeypatch, tmp_path):
    release = threading.Event()
    monkeypatch.setattr(train_tab, "training_job", fake_train(release, tmp_path))
    form = {**train_tab.preset_values(train_tab.DEFAULT_PRESET), "model.base": "embedded", "data.path": "shapes"}
    first, _ = train_tab.start_training(app, form)
    second, status = train_tab.start_training(app, form)
    assert "queued behind 1" in status
    assert train_tab.poll(app, second)["queue"][1][2] == "queued"
    train_tab.cancel_training(app, first)
    release.set()
    assert app.jobs.wait(first, 5).status == "cancelled"
    assert app.jobs.wait(second, 5).status == "done"
    with pytest.raises(SdloraError):
        train_tab.cancel_training(app, None)


def test_guarded_turns_errors_into_short_messages():
    def user_error():
        raise DatasetError("no images in /x; add png files")

    def bug():
        raise ZeroDivisionError("division by zero")

    with pytest.raises(gr.Error) as info:
        guarded(user_error)()
    assert info.value.message == "no images in /x; add png files"
    with pytest.raises(gr.Error) as info:
        guarded(bug)()
    assert info.value.message.startswith("internal error (ZeroDivisionError") and "Traceback" not in info.value.message


def test_loss_frame_is_numeric_even_when_empty():
    """An object-typed empty frame would make the loss plot's axis categorical."""
    for losses in ([], [(1, 0.5), (2, 0.25)]):
        frame = train_tab.loss_frame(losses)
        assert [str(t) for t in frame.dtypes][:2] == ["int64", "float64"]


def test_the_empty_loss_plot_already_names_both_series():
    """A LinePlot first drawn with no series draws no line for series that arrive later (seen in a browser),
    so the empty frame carries one NaN point per series."""
    frame = train_tab.loss_frame([])
    assert sorted(frame["series"]) == ["loss", "smoothed", "validation"] and frame["loss"].isna().all()


def test_loss_plot_has_a_validation_series_at_the_measured_steps(app, tmp_path):
    from sdlora.train.monitor import StepInfo

    job_id = app.jobs.submit("v", lambda ctx: [training_job.record_step(
        ctx, StepInfo(step, 4, 1.0 / step, 0.0, 0.0, val_loss=2.0 / step if step % 2 == 0 else None), 4)
        for step in range(1, 5)]).id
    app.jobs.wait(job_id, 5)
    view = train_tab.poll(app, job_id)
    assert view["val_losses"] == [(2, 1.0), (4, 0.5)]
    frame = train_tab.loss_frame(view["losses"], view["val_losses"])
    validation = frame[frame["series"] == "validation"]
    assert list(validation["step"]) == [2, 4] and list(validation["loss"]) == [1.0, 0.5]
    assert "validation" not in set(train_tab.loss_frame(view["losses"])["series"])  # none: no series


def test_loss_plot_has_a_smoothed_line_beside_the_raw_one():
    losses = [(s, 1.0 if s % 2 else 0.0) for s in range(1, 41)]  # alternating: the average is flat at 0.5
    frame = train_tab.loss_frame(losses)
    raw, smooth = frame[frame["series"] == "loss"], frame[frame["series"] == "smoothed"]
    assert list(raw["loss"]) == [v for _, v in losses] and list(smooth["step"]) == list(range(1, 41))
    assert all(abs(v - 0.5) < 1e-9 for v in smooth["loss"].iloc[4:])  # window 4 averages two highs, two lows


def test_step_line_shows_speed_elapsed_and_eta():
    class Info:
        loss, elapsed, first_step = 0.25, 10.0, 1

    assert training_job.step_line(Info(), 20, 100) == "loss 0.2500 · 2.00 steps/s · 10 s elapsed · ETA 40 s"


def test_queue_shows_jobs_of_every_session(app):
    import threading

    release = threading.Event()
    first = app.jobs.submit("someone else's run", lambda ctx: release.wait(5))
    second = app.jobs.submit("mine", lambda ctx: None)
    rows = train_tab.queue_rows(app)
    assert [r[1] for r in rows] == ["someone else's run", "mine"] and rows[1][2] == "queued"
    release.set()
    app.jobs.wait(second.id, 5)
    assert [r[2] for r in train_tab.queue_rows(app)] == ["done", "done"] and first.id < second.id


def test_load_dataset_shows_the_trainers_summary(app):
    folder = app.config.data_dirs[0] / "shapes"
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    summary = train_tab.load_dataset(app, "shapes", None)[3]
    assert "captions: 2/3" in summary and "top tags in" in summary and "square" in summary
    assert "skipped" in summary and "broken.png" in summary


def test_defaults_follow_the_base_and_far_off_sizes_are_warned(app):
    # the embedded base: its own recipe (the quickstart's) and its native 32 px fill the form
    values = train_tab.preset_values(train_tab.DEFAULT_PRESET, base="embedded")
    assert values["data.resolution"] == 32 and values["lora.targets"] == "locon-io" and values["optim.steps"] == 600
    assert train_tab.base_changed(app, "embedded", train_tab.DEFAULT_PRESET) == list(values.values())
    assert train_tab.preset_values("quick", base="embedded")["data.resolution"] == 256  # a preset's own size stays
    assert train_tab.resolution_note(app, "embedded", 32) == ""
    assert "256x the pixels" in train_tab.resolution_note(app, "embedded", 512)
    form = {**values, "preset": train_tab.DEFAULT_PRESET, "model.base": "embedded", "data.path": "shapes",
            "data.resolution": 512}
    cfg = train_tab.config_from_form(app, form)
    assert cfg.lora.targets == "locon-io" and cfg.data.resolution == 512
    job_id, status = train_tab.start_training(app, {**form, "optim.steps": 1})
    app.jobs.cancel(job_id)
    assert "256x the pixels of the base's native 32 px" in status
    form["data.resolution"] = None  # an emptied field: the base's size
    assert train_tab.config_from_form(app, form).data.resolution is None
