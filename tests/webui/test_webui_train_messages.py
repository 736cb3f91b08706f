"""Issue 22 item 7: a cancel before the first step says nothing was kept (it said "the last checkpoint was
kept"); the end of a run says its total time and the saved path; a resumed run keeps its start date."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from sdlora.settings.config import load_config
from sdlora.train import runs as runs_mod
from sdlora_webui.training_job import training_job


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(app, name: str, *extra: str):
    folder = Path(app.config.output_dir) / "runs" / name
    data = Path(app.config.data_dirs[0]) / "shapes"
    return load_config(None, [f"data.path={data}", f"output.dir={folder}", "optim.steps=1", "lora.rank=2",
                              "lora.alpha=2", "output.save_dtype=fp32", f"output.name={name}", "data.resolution=32",
                              "data.batch_size=1", *extra])


def test_a_cancel_before_the_first_step_says_nothing_was_kept(app):
    cfg = _cfg(app, "early")

    def body(ctx):
        ctx.cancel_event.set()  # pressed before the run began
        return training_job(cfg, ctx)

    job = app.jobs.wait(app.jobs.submit("early", body).id, 120)
    assert job.status == "cancelled"
    assert "before any checkpoint was saved; nothing was kept" in job.message
    assert "last checkpoint" not in job.message


def test_the_end_of_a_run_says_its_time_and_path(app):
    cfg = _cfg(app, "whole")
    job = app.jobs.wait(app.jobs.submit("whole", lambda ctx: training_job(cfg, ctx)).id, 600)
    assert job.status == "done", job.error
    saved = Path(cfg.output.dir) / "whole.safetensors"
    assert job.message.startswith("finished in ") and job.message.endswith(f"; saved {saved}")
    assert job.result == str(saved) and saved.is_file()


def test_a_resumed_run_keeps_its_start_date(app, tmp_path):
    cfg = _cfg(app, "again")
    runs_mod.start_run(cfg)
    status = Path(cfg.output.dir) / runs_mod.STATUS_FILE
    data = json.loads(status.read_text())
    data["started"] = 1_000_000.0
    status.write_text(json.dumps(data))
    runs_mod.start_run(cfg)  # what a resume does
    assert json.loads(status.read_text())["started"] == 1_000_000.0


def test_jobs_keep_a_cancelled_jobs_own_line(app):
    release = threading.Event()

    def body(ctx):
        release.wait(5)
        ctx.message("cancelled at step 3; checkpoint step-000003 kept (Resume continues from it)")

    job = app.jobs.submit("x", body)
    while app.jobs.get(job.id).status != "running":
        threading.Event().wait(0.01)
    app.jobs.cancel(job.id)
    release.set()
    assert app.jobs.wait(job.id, 5).message.startswith("cancelled at step 3; checkpoint step-000003 kept")
