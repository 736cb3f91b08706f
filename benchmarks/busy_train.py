"""A default short training on a busy machine: quiet vs with competing CPU-bound processes (issue 13, item 4).

    python benchmarks/busy_train.py                    # 10 steps, embedded base, sample_data/, 1 competitor
    python benchmarks/busy_train.py --steps 20 --competitors 2 --compare-threads

Each run is `sdlora train --data sample_data --base embedded --steps N` in its own process with no
OMP_NUM_THREADS set, so the trainer picks its own thread count (`sdlora.threads`), on the `embedded`
preset that the CLI and the web UI use for that base. The busy runs start `--competitors` processes that
spin on one core each (`while True: pass`) for the whole run. The table shows the whole run's wall time
(process start to exit: imports, loading, caching, steps, export), the steps' wall time (the trainer's own
`StepInfo.elapsed` at the last step, read by a small driver) and the busy/quiet ratios of both. `--compare-threads` adds the same
pair with torch's thread count forced to every CPU of the machine (what torch does on its own), to show
what the automatic choice avoids.

Wall times on a shared machine depend on what else runs: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DRIVER = """
import json, sys, time
from sdlora.settings.config import load_config
from sdlora.train import train
import torch
started = time.perf_counter()
cfg = load_config("embedded", sys.argv[2:])
infos = []
result = train(cfg, on_step=infos.append)
total = time.perf_counter() - started
print(json.dumps({"total": total, "steps": result.steps, "loop": infos[-1].elapsed,
                  "first": infos[0].elapsed, "threads": torch.get_num_threads()}))
"""


def run_once(steps: int, out: Path, threads: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO)
    overrides = [f"data.path={REPO / 'sample_data'}", f"output.dir={out}", f"optim.steps={steps}"]
    if threads:
        overrides.append(f"optim.threads={threads}")
    proc = subprocess.run([sys.executable, "-c", DRIVER, "--", *overrides], capture_output=True, text=True,
                          env=env, cwd=REPO, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start_competitors(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:  # only the processes this script started, by their own handle
        proc.kill()
        proc.wait()


def measure(label: str, steps: int, competitors: int, threads: int | None, tmp: Path) -> dict:
    procs = start_competitors(competitors)
    try:
        time.sleep(1.0 if procs else 0.0)  # let the competitors reach full speed
        row = run_once(steps, tmp / label, threads)
    finally:
        stop(procs)
    row.update(label=label, competitors=competitors)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--competitors", type=int, default=1, help="CPU-bound processes in the busy runs")
    parser.add_argument("--compare-threads", action="store_true",
                        help="also run with torch's thread count forced to every CPU (torch's own default)")
    args = parser.parse_args()
    from sdlora.threads import available_cpus

    print(f"CPUs available: {available_cpus()} (os.cpu_count {os.cpu_count()}); "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    cases = [("quiet, auto threads", 0, None), ("busy, auto threads", args.competitors, None)]
    if args.compare_threads:
        cpus = os.cpu_count() or 1
        cases += [(f"quiet, {cpus} threads", 0, cpus), (f"busy, {cpus} threads", args.competitors, cpus)]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(label, args.steps, comp, threads, Path(tmp)) for label, comp, threads in cases]
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\n{args.steps} steps, embedded preset on sample_data/ (batch 8, 32 px), {args.competitors} competitor(s)")
    print(f"{'run':<22} {'threads':>7} {'total s':>8} {'steps s':>8} {'s/step':>7} {'ratio total':>11} "
          f"{'ratio steps':>11}")
    quiet = {}
    for row in rows:
        key = row["label"].split(", ")[1]
        if row["competitors"] == 0:
            quiet[key] = row
        base = quiet.get(key)
        ratios = (row["total"] / base["total"], row["loop"] / base["loop"]) if base else (float("nan"),) * 2
        per_step = row["loop"] / max(1, row["steps"])
        print(f"{row['label']:<22} {row['threads']:>7} {row['total']:>8.1f} {row['loop']:>8.1f} "
              f"{per_step:>7.2f} {ratios[0]:>11.2f} {ratios[1]:>11.2f}")
    print("\nratios: against the quiet run with the same thread setting")


if __name__ == "__main__":
    main()
