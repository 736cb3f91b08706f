"""Benchmark: a base switch in the web UI, and a 3x3 strength grid against 9 separate generations.

One command, no downloads, the embedded model on the CPU:

    nice .venv/bin/python benchmarks/grid.py              # 32 px, 20 steps, a rank-4 LoRA
    .venv/bin/python benchmarks/grid.py --steps 4 --repeat 1   # a smoke run

Through the web UI's own functions (no browser): `switch_base_slots` from the embedded model to a second
tiny base (a diffusers folder with wider UNet blocks, written to a temporary folder) and back, then one
LoRA at 3 strengths x 3 seeds drawn as one grid (`draw_grid`) and as 9 Generate clicks (`generate`, each a
slider move plus an image). The grid must be no slower: both paths change strengths in place and draw the
same 9 images; the grid also writes one labelled sheet instead of 9 PNGs. Prints one table; the median of
`--repeat` runs is shown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "webui")]

STRENGTHS = (0.0, 0.5, 1.0)
SEEDS = (1, 2, 3)


def _form(steps: int, strength: float = 1.0, seed: int = 1, **extra) -> dict:
    return {"prompt": "a red circle", "negative": "", "seed": seed, "steps": steps, "cfg": 7.0, "width": 32,
            "height": 32, "slot0.name": "style", "slot0.strength": strength, "slot0.enabled": True,
            "slot0.separate": False, "slot0.te": 1.0, "slot0.unet": 1.0, **extra}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(steps: int, repeat: int) -> list[tuple[str, float]]:
    from tests_webui_models import random_lora, write_wide_base

    from sdlora.base.load import load_components
    from sdlora_webui.state import AppConfig, AppState
    from sdlora_webui.tabs import generate_runs, generate_tab

    tmp = Path(tempfile.mkdtemp(prefix="sdlora-grid-bench-"))
    wide = write_wide_base(tmp / "models" / "wide")
    (tmp / "loras").mkdir()
    random_lora(tmp / "loras" / "style.safetensors", load_components("embedded").unet)
    app = AppState(AppConfig(lora_dir=tmp / "loras", output_dir=tmp / "out", model_dirs=(tmp / "models",)))
    slots = generate_tab.slots_from_values(_form(steps))
    generate_tab.generate(app, _form(steps))  # load the embedded model once: the switch is timed from here

    switches, grids, singles = [], [], []
    for _ in range(repeat):
        switches.append(_timed(lambda: generate_tab.switch_base_slots(app, str(wide), slots)))
        switches.append(_timed(lambda: generate_tab.switch_base_slots(app, "embedded", slots)))
        generate_tab.generate(app, _form(steps))  # a fresh pipeline's first image is slower: keep it out
        form = _form(steps, grid_x="style", grid_x_values=", ".join(map(str, STRENGTHS)),
                     grid_y="", grid_y_values=", ".join(map(str, SEEDS)))
        grid = lambda f=form: generate_runs.draw_grid(app, f, generate_tab._syncer(app, f))
        separate = lambda: [generate_tab.generate(app, _form(steps, s, seed))
                            for seed in SEEDS for s in STRENGTHS]
        # alternate which goes first, so neither always runs on a warmer process
        first, second = (grid, separate) if len(grids) % 2 == 0 else (separate, grid)
        times = {first: _timed(first), second: _timed(second)}
        grids.append(times[grid])
        singles.append(times[separate])
    app.close()
    return [("base switch (embedded <-> wide tiny base, LoRA re-applied)", statistics.median(switches)),
            ("3x3 strength grid (one sheet)", statistics.median(grids)),
            ("9 separate generations (slider move + Generate)", statistics.median(singles))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rows = run(args.steps, args.repeat)
    print(f"embedded model, CPU, 32x32, {args.steps} steps, median of {args.repeat}")
    print(f"| {'what':<58} | seconds |")
    print(f"|{'-' * 60}|---------|")
    for what, seconds in rows:
        print(f"| {what:<58} | {seconds:7.2f} |")
    grid, separate = rows[1][1], rows[2][1]
    print(f"grid / separate: {grid / separate:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
