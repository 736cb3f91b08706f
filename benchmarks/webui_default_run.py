"""The web UI's default training run on sample_data/: its time and its style distance (issue 13, item 2).

    python benchmarks/webui_default_run.py              # every default (embedded base: the embedded preset)
    python benchmarks/webui_default_run.py --steps 200  # shorter, to check the setup

The run goes through the web UI's own code path (the Train tab's form with its default values for the
embedded base -> `config_from_form` -> the job queue -> `train`), with only the data set folder chosen.
Then, as tests/embedded/test_quickstart.py does, the prompts in scripts/sample_prompts.txt are drawn 4 times
each (24 images, 15 steps) by the base and through the LoRA at strength 1, and `showcase.style_distance`
to the 32 style images is printed for both with the cut in percent (the quickstart measured 51.1% /
50.6% / 49.9% at training seeds 0 / 1 / 2). Wall times depend on the machine's load (printed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"


def train_with_ui_defaults(tmp: Path, steps: int | None) -> tuple[Path, float, dict]:
    from sdlora_webui.state import AppConfig, AppState
    from sdlora_webui.tabs import train_tab

    app = AppState(AppConfig(lora_dir=tmp / "loras", output_dir=tmp / "out", data_dirs=(SAMPLE.parent,)))
    try:
        form = train_tab.preset_values(train_tab.DEFAULT_PRESET, base=app.base_model(None))
        form.update({"preset": train_tab.DEFAULT_PRESET, "model.base": "embedded", "data.path": str(SAMPLE)})
        if steps:
            form["optim.steps"] = steps
        started = time.perf_counter()
        job_id, _ = train_tab.start_training(app, form)
        job = app.jobs.wait(job_id, 3600)
        seconds = time.perf_counter() - started
        if job.status != "done":
            raise SystemExit(f"the run ended {job.status}: {job.error}")
        return Path(job.result), seconds, {"steps": job.step, "form": form}
    finally:
        app.close()


def style_cut(lora: Path) -> tuple[float, float]:
    from sdlora.embedded import load_pipeline, showcase

    pipe = load_pipeline()
    prompts = [p for p in (SAMPLE.parent / "scripts" / "sample_prompts.txt").read_text().splitlines() if p.strip()] * 4
    seeds = list(range(1, len(prompts) + 1))
    sweep = showcase.strength_sweep(pipe, lora, prompts, seeds, [0.0, 1.0], 15)
    style = showcase.load_images(SAMPLE)
    before = showcase.style_distance(sweep[0.0], style)["total"]
    after = showcase.style_distance(sweep[1.0], style)["total"]
    return before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="override the default steps (for a quick check)")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        lora, seconds, info = train_with_ui_defaults(Path(tmp), args.steps)
        before, after = style_cut(lora)
    form = info["form"]
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"web UI defaults: targets {form['lora.targets']}, rank {form['lora.rank']}, lr {form['optim.lr']}, "
          f"resolution {form['data.resolution']}, steps {info['steps']}")
    print(f"{'training s':>10} {'distance base':>14} {'distance LoRA':>14} {'cut':>6}")
    print(f"{seconds:>10.1f} {before:>14.3f} {after:>14.3f} {100 * (1 - after / before):>5.1f}%")


if __name__ == "__main__":
    main()
