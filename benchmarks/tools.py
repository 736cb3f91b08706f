"""Benchmark: merge and resize in factor space (sdlora.lowrank) against the dense path and kohya's scripts.

Run: .venv/bin/python benchmarks/tools.py [--sd-scripts DIR] [--peer-python PY] [--modules 140] [--dense-sample 3]

Two jobs, each by every contender, in one run:
1. The newcomer's merge (issue 25): a LyCORIS LoKr (tests/fixtures/wild_loras/lycoris_lokr_sd1_d16_f16) at 0.6
   and a cloneofsimo LoRA (cloneofsimo_sd15_r4_f16) at 0.4, to rank 4. Target: <= 10 s on two cores.
2. Resize of a hand-built rank-64 SDXL LoRA (random fp16 factors on `--modules` SDXL attention / MLP
   modules, kohya keys) to rank 16. Target: >= 10x faster than kohya's resize_lora.py, at equal or lower
   error (mean relative Frobenius error |dW - dW16| / |dW| over the modules).
Contenders: sdlora (factor space), the dense path sdlora had before (every module's full float64 ΔW and a
full SVD; timed on `--dense-sample` modules and scaled to all, since it takes minutes to hours), and
kohya's sd-scripts (`networks/resize_lora.py`, `networks/svd_merge_lora.py`) from the checkout `--sd-scripts`
points to, run as a subprocess with `--peer-python` (its requirements must be importable there; nothing of
theirs is copied here). kohya's svd_merge_lora.py reads kohya-keyed LoRA only, so it has no entry for job 1.
Seconds are wall time of the work (files read and written included, interpreter start excluded for
sdlora; the whole process for kohya) with the process CPU seconds beside, and the load average.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WILD = REPO / "tests" / "fixtures" / "wild_loras"
LOKR = WILD / "lycoris_lokr_sd1_d16_f16.safetensors"
CLONE = WILD / "cloneofsimo_sd15_r4_f16.safetensors"
SDXL_LEAVES = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def make_sdxl_lora(path: Path, modules: int, rank: int = 64) -> None:
    """A kohya SDXL LoRA of rank `rank` on the first `modules` UNet attention / MLP modules, fp16."""
    import torch
    from safetensors.torch import save_file

    from sdlora.arch.naming import kohya_name
    from sdlora.arch.tables import family_table

    gen = torch.Generator().manual_seed(0)
    picked = [(n, i) for n, i in family_table("sdxl").items() if n.startswith("unet.") and n.endswith(SDXL_LEAVES)]
    tensors = {}
    for name, info in picked[:modules]:
        key = kohya_name(name, "sdxl")
        decay = torch.linspace(1.0, 0.05, rank)  # a spectrum that falls off, as trained LoRAs have
        tensors[f"{key}.lora_down.weight"] = (torch.randn(rank, info.shape[1], generator=gen) * 0.02).half()
        tensors[f"{key}.lora_up.weight"] = (torch.randn(info.shape[0], rank, generator=gen) * decay * 0.02).half()
        tensors[f"{key}.alpha"] = torch.tensor(float(rank / 2), dtype=torch.float16)
    save_file(tensors, str(path), metadata={"ss_network_dim": str(rank), "ss_base_model_version": "sdxl_base_v1-0"})


# ----- the dense path sdlora had before (full ΔW, full SVD per module) ---------------------------------


def dense_module(parts, name, rank):
    """Old `_svd_module`: the weighted dense sum of every part's ΔW in float64, then a full SVD."""
    import torch

    total = None
    for lora, weight in parts:
        delta = lora.delta(name).double()
        delta = delta.reshape(delta.shape[0], -1) * weight
        total = delta if total is None else total + delta
    dtype = torch.float64 if total.numel() <= 4_000_000 else torch.float32
    u, s, vh = torch.linalg.svd(total.to(dtype), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank], s.double()


def dense_seconds(parts, names, rank, sample):
    """Seconds per module of the dense path over `sample` modules (the largest ones), and the total for all."""
    picked = sorted(names, key=lambda n: -max(lora.modules[n].delta_shape()[0] for lora, _ in parts
                                              if n in lora.modules))[:sample]
    _, wall, cpu = timed(lambda: [dense_module([(lo, w) for lo, w in parts if n in lo.modules], n, rank)
                                  for n in picked])
    return wall / len(picked), cpu / len(picked)


# ----- kohya ------------------------------------------------------------------------------------------------


def run_kohya(script: str, args: list[str], sd_scripts: Path, python: str) -> tuple[float | None, str]:
    """(wall seconds or None, one line: the failure) of kohya's script as a subprocess."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(sd_scripts), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    done = subprocess.run([python, str(sd_scripts / "networks" / script), *args], cwd=sd_scripts, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        return None, tail[-1][:160] if tail else f"exit {done.returncode}"
    return time.perf_counter() - start, ""


def mean_error(original, resized, names) -> float:
    """Mean relative Frobenius error of `resized` against `original` over `names` (dense, float64)."""
    total = 0.0
    for name in names:
        before = original.delta(name).double()
        total += float((before - resized.delta(name).double()).norm() / before.norm())
    return total / len(names)


# ----- jobs -------------------------------------------------------------------------------------------------


def merge_job(args) -> list[tuple]:
    from sdlora.formats import load_lora, save_lora
    from sdlora.tools import merge

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        def ours():
            items = [(load_lora(LOKR), 0.6), (load_lora(CLONE), 0.4)]
            result = merge(items, mode="svd", rank=4)
            save_lora(result.lora, Path(tmp) / "merged.safetensors", format="kohya")
            return result

        result, wall, cpu = timed(ours)
        rows.append(("merge LoKr d16 + cloneofsimo -> rank 4", "sdlora (factor space)", wall, cpu,
                     f"{len(result.modules)} modules, mean error {_mean(result):.4f}"))
        parts = [(load_lora(LOKR), 0.6), (load_lora(CLONE), 0.4)]
        names = sorted({n for lora, _ in parts for n in lora.modules})
        per_wall, per_cpu = dense_seconds(parts, names, 4, args.dense_sample)
        rows.append(("", "dense path before (scaled from a sample)", per_wall * len(names), per_cpu * len(names),
                     f"{per_wall:.2f} s per module on the {args.dense_sample} largest"))
        rows.append(("", "kohya svd_merge_lora.py", None, None, "reads kohya-keyed LoRA only (no LoKr, no cloneofsimo)"))
    return rows


def resize_job(args) -> list[tuple]:
    from sdlora.formats import load_lora, save_lora
    from sdlora.tools import resize

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "sdxl_r64.safetensors"
        make_sdxl_lora(source, args.modules)
        job = f"resize SDXL rank 64 -> 16 ({args.modules} modules)"

        def ours():
            result = resize(load_lora(source), rank=16)
            save_lora(result.lora, Path(tmp) / "ours.safetensors", format="kohya")
            return result

        result, wall, cpu = timed(ours)
        ours_error = _mean(result)
        rows.append((job, "sdlora (factor space)", wall, cpu, f"mean error {ours_error:.4f}"))
        original = load_lora(source)
        names = list(original.modules)
        per_wall, per_cpu = dense_seconds([(original, 1.0)], names, 16, args.dense_sample)
        rows.append(("", "dense path before (scaled from a sample)", per_wall * len(names), per_cpu * len(names),
                     f"{per_wall:.2f} s per module on the {args.dense_sample} largest"))
        if args.sd_scripts:
            out = Path(tmp) / "kohya.safetensors"
            seconds, failure = run_kohya("resize_lora.py", ["--model", str(source), "--save_to", str(out),
                                                            "--new_rank", "16", "--save_precision", "fp16"],
                                         args.sd_scripts, args.peer_python)
            if seconds is None:
                rows.append(("", "kohya resize_lora.py", None, None, f"did not run: {failure}"))
            else:
                sample = names[: args.error_sample]
                theirs = mean_error(original, load_lora(out), sample)
                mine = mean_error(original, load_lora(Path(tmp) / "ours.safetensors"), sample)
                note = (f"mean error {theirs:.4f} (sdlora's file on the same {len(sample)}: {mine:.4f}); "
                        f"sdlora {seconds / wall:.1f}x faster")
                rows.append(("", "kohya resize_lora.py (whole process)", seconds, None, note))
        else:
            rows.append(("", "kohya resize_lora.py", None, None, "not run: give --sd-scripts DIR"))
    return rows


def _mean(result) -> float:
    return sum(m.error for m in result.modules.values()) / len(result.modules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd-scripts", type=Path, help="a kohya-ss/sd-scripts checkout")
    parser.add_argument("--peer-python", default=sys.executable, help="the python that runs kohya's scripts")
    parser.add_argument("--modules", type=int, default=140, help="SDXL modules of the rank-64 LoRA")
    parser.add_argument("--dense-sample", type=int, default=3, help="modules the dense path is timed on")
    parser.add_argument("--error-sample", type=int, default=20, help="modules the kohya error is measured on")
    args = parser.parse_args()
    from sdlora.threads import apply_threads

    threads = apply_threads()  # as the CLI's resize / merge do
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; cores: {os.cpu_count()}; "
          f"torch threads: {threads}")
    rows = merge_job(args) + resize_job(args)
    print("| job | contender | wall s | CPU s | notes |\n|---|---|---|---|---|")
    for job, who, wall, cpu, note in rows:
        print(f"| {job} | {who} | {_fmt(wall)} | {_fmt(cpu)} | {note} |")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
