"""Past runs (inside the Train tab): the runs in the output folder with status, steps and date; open one to
see its loss plot, resolved config, samples and every LoRA file it wrote (downloadable, a cancelled run's
step files too); resume a cancelled or crashed run with one button (the CLI's `--resume` on its run.yaml);
add a run's newest file to the library.

Handlers take `app` first and run names (folder names under `<output>/runs/`), never paths.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import gradio as gr

from sdlora.errors import SdloraError
from sdlora.train.runs import list_runs, loss_plot, read_run, resume_config
from sdlora_webui.paths import safe_filename, unique_path
from sdlora_webui.tabs.common import bound
from sdlora_webui.training_job import training_job

COLUMNS = ["run", "status", "steps", "started", "newest file"]


def runs_root(app) -> Path:
    """Where the web UI's runs live (train_tab.config_from_form puts every run there)."""
    return Path(app.config.output_dir) / "runs"


def run_rows(app) -> list[list]:
    """One row per run, newest first: [name, status, steps done/planned, start date, newest LoRA file]."""
    return [[r.name, r.status, f"{r.steps}/{r.total}", r.date, r.last_file.name if r.last_file else ""]
            for r in list_runs(runs_root(app))]


def find_run(app, name: str | None):
    """The RunInfo of run `name` (a folder directly under the runs folder; nothing else is reachable)."""
    name = str(name or "").strip()
    root = runs_root(app).resolve()
    folder = (root / name).resolve()
    if not name or folder.parent != root:
        raise SdloraError(f"pick a run from the list (got {name!r})")
    run = read_run(folder)
    if run is None:
        raise SdloraError(f"{name}: not a training run (no run.json); refresh the list")
    return run


def open_run(app, name: str) -> tuple[str | None, str, list[str], list[str], str]:
    """(loss plot, resolved config text, sample images, LoRA files, summary line) of run `name`."""
    run = find_run(app, name)
    plot = loss_plot(run)
    config = run.config.read_text(encoding="utf-8") if run.config else "(no run.yaml)"
    summary = f"{run.name}: {run.status}, step {run.steps} of {run.total}, started {run.date}"
    if run.error:
        summary += f"; error: {run.error}"
    if run.resumable:
        summary += f"; can resume from {run.checkpoints[-1].name}"
    return (str(plot) if plot else None, config, [str(p) for p in run.samples], [str(p) for p in run.files],
            summary)


def resume_run(app, name: str) -> tuple[int, str]:
    """Queue the run's continuation: `sdlora train --config <run>/run.yaml --resume`. Returns (job id, status)."""
    run = find_run(app, name)
    if not run.resumable:
        raise SdloraError(f"{run.name} is {run.status}" + ("" if run.checkpoints else " with no checkpoint")
                          + "; only a cancelled, failed or crashed run with a checkpoint can be resumed")
    cfg = resume_config(run)
    job = app.jobs.submit(f"{run.name} (resumed)", lambda ctx: training_job(cfg, ctx, resume=True))
    return job.id, f"job {job.id}: resuming {run.name} from {run.checkpoints[-1].name}"


def add_run_to_library(app, name: str) -> str:
    """Copy the run's newest LoRA file (a cancelled run's last step file) into the library; say what it is."""
    run = find_run(app, name)
    source = run.last_file
    if source is None:
        raise SdloraError(f"{run.name} wrote no LoRA file yet (it stopped before its first checkpoint)")
    target = unique_path(Path(app.config.lora_dir), safe_filename(source.name))
    shutil.copyfile(source, target)
    what = "the final LoRA" if "-step" not in source.stem else f"the step file {source.name}"
    return (f"added {target.name} to the library: {what} of {run.status} run {run.name} "
            f"(step {run.steps} of {run.total})")


def create_ui(app, c: dict[str, Any]) -> None:
    """The Past runs accordion (wired by `wire` once the tab's c['job_id'], c['status'], c['timer'] exist:
    Resume hands its job to the tab's progress display)."""
    with gr.Accordion("Past runs", open=False):
        with gr.Row():
            c["runs_refresh"] = gr.Button("Refresh", elem_id="runs-refresh", scale=0)
            c["run_pick"] = gr.Dropdown([], label="Run", allow_custom_value=True, elem_id="runs-pick", scale=3)
            c["run_open"] = gr.Button("Open", elem_id="runs-open", scale=0)
        c["runs_table"] = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="runs-table")
        c["run_summary"] = gr.Markdown(elem_id="runs-summary")
        with gr.Row():
            c["run_resume"] = gr.Button("Resume", elem_id="runs-resume")
            c["run_add"] = gr.Button("Add newest file to library", elem_id="runs-add")
        with gr.Row():
            c["run_plot"] = gr.Image(label="Loss", type="filepath", interactive=False, elem_id="runs-plot")
            c["run_samples"] = gr.Gallery(label="Samples", columns=4, height=260, elem_id="runs-samples")
        c["run_files"] = gr.File(label="LoRA files (every step file)", file_count="multiple", interactive=False,
                                 elem_id="runs-files")
        c["run_config"] = gr.Code(label="Resolved config (run.yaml)", language="yaml", elem_id="runs-config")


def _refresh(app):
    rows = run_rows(app)
    return rows, gr.Dropdown(choices=[r[0] for r in rows], value=rows[0][0] if rows else None)


def wire(app, c: dict[str, Any]) -> None:
    c["runs_refresh"].click(bound(_refresh, app), None, [c["runs_table"], c["run_pick"]], api_name="runs_refresh")
    c["run_open"].click(bound(open_run, app), c["run_pick"],
                        [c["run_plot"], c["run_config"], c["run_samples"], c["run_files"], c["run_summary"]],
                        api_name="runs_open")
    c["run_resume"].click(bound(resume_run, app), c["run_pick"], [c["job_id"], c["status"]],
                          api_name="runs_resume").success(lambda: gr.Timer(active=True), None, c["timer"])
    c["run_add"].click(bound(add_run_to_library, app), c["run_pick"], c["run_summary"], api_name="runs_add")
