"""Issue 13 item 5: past runs in the web UI (list, open, step files of a cancelled run, resume = the CLI's
--resume, add to library), and the run status files they read (sdlora.train.runs)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdlora.errors import SdloraError
from sdlora.settings.config import load_config
from sdlora.train import runs as runs_mod
from sdlora.train import train
from sdlora_webui.state import AppConfig, AppState
from sdlora_webui.tabs import runs_view


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images(folder: Path, count: int = 4) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (32, 32), (60 * i, 200 - 40 * i, 90)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a red circle {i}")
    return folder


@pytest.fixture
def cancelled_run(tmp_path):
    """An app and a run of 4 steps on the embedded base, cancelled after step 2 (as the Cancel button does)."""
    app = AppState(AppConfig(lora_dir=tmp_path / "loras", output_dir=tmp_path / "out"))
    folder = Path(app.config.output_dir) / "runs" / "style-1"
    cfg = load_config(None, [f"data.path={_images(tmp_path / 'data')}", f"output.dir={folder}", "optim.steps=4",
                             "lora.rank=2", "lora.alpha=2", "output.save_dtype=fp32", "output.name=style"])
    cancel = threading.Event()
    result = train(cfg, on_step=lambda info: cancel.set() if info.step == 2 else None, cancel=cancel)
    assert result.cancelled and result.steps == 2
    yield app, folder
    app.close()


def test_run_list_shows_a_cancelled_run_and_serves_its_step_file(cancelled_run):
    app, _ = cancelled_run
    assert runs_view.run_rows(app) == [["style-1", "cancelled", "2/4", runs_view.run_rows(app)[0][3],
                                        "style-step000002.safetensors"]]
    plot, config, samples, files, summary = runs_view.open_run(app, "style-1")
    assert Path(plot).is_file() and "resolution: 32" in config and samples == []
    assert [Path(f).name for f in files] == ["style-step000002.safetensors"] and Path(files[0]).is_file()
    assert "cancelled, step 2 of 4" in summary and "can resume from step-000002" in summary
    message = runs_view.add_run_to_library(app, "style-1")
    assert "the step file style-step000002.safetensors of cancelled run style-1 (step 2 of 4)" in message
    assert (Path(app.config.lora_dir) / "style-step000002.safetensors").read_bytes() == Path(files[0]).read_bytes()
    for bad in ("../../etc", "", "nosuch"):
        with pytest.raises(SdloraError):
            runs_view.open_run(app, bad)


def test_resume_from_the_web_ui_equals_the_cli_resume(cancelled_run):
    from sdlora.cli import main

    app, folder = cancelled_run
    twin = folder.parent.parent / "twin"
    shutil.copytree(folder, twin)
    job_id, status = runs_view.resume_run(app, "style-1")
    assert "resuming style-1 from step-000002" in status
    job = app.jobs.wait(job_id, 600)
    assert job.status == "done", job.error
    assert [s for s, _ in job.losses] == [3, 4]  # continued, not restarted
    # the CLI on an identical copy of the cancelled folder
    assert main(["train", "--config", str(twin / "run.yaml"), "--resume", "--output", str(twin)]) == 0
    ui, cli = load_file(folder / "style.safetensors"), load_file(twin / "style.safetensors")
    assert sorted(ui) == sorted(cli) and all(torch.equal(ui[k], cli[k]) for k in ui)
    assert runs_view.run_rows(app)[0][1:3] == ["done", "4/4"]
    with pytest.raises(SdloraError, match="only a cancelled, failed or crashed run"):
        runs_view.resume_run(app, "style-1")


def test_a_run_whose_process_is_gone_is_crashed(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()
    runs_mod.write_status(tmp_path / "r", runs_mod.RUNNING, total=10, started=1.0, pid=proc.pid)
    (tmp_path / "r" / "loss.csv").write_text("step,loss,lr\n1,0.5,0.1\n2,0.4,0.1\n")
    (run,) = runs_mod.list_runs(tmp_path)
    assert run.status == "crashed" and run.steps == 2 and run.total == 10 and not run.resumable
    assert runs_mod.loss_plot(run).is_file()
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "running"
