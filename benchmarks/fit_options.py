"""What each memory option costs and saves, measured: s/step and peak memory of the same run with
gradient checkpointing, fp8 base weights and the fused backward pass, one at a time and together.

    python benchmarks/fit_options.py                       # SD1.5-shaped random base, 64 px, CPU
    python benchmarks/fit_options.py --resolution 512      # on a CUDA GPU

Each variant runs in its own process (so its peak is its own): CUDA reports `torch.cuda.max_memory_allocated`
over the steps after the first; on CPU the peak RSS of the whole process, which includes building the model
in float32 before it is cast (so fp8 storage shows there only as a smaller working set, not a smaller peak).
s/step is the median over the steps after the first.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {
    "plain": [],
    "gradient checkpointing": ["optim.gradient_checkpointing=true"],
    "fp8 base": ["optim.fp8_base=true"],
    "fused backward": ["optim.fused_backward=true"],
    "all three": ["optim.gradient_checkpointing=true", "optim.fp8_base=true", "optim.fused_backward=true"],
}


def child(args) -> None:
    from train import build_components, peak_memory_mb, write_data

    from sdlora.settings import load_config
    from sdlora.train import train

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    data = write_data(work / "data", 4, args.resolution)
    cfg = load_config(None, [f"data.path={data}", f"output.dir={work / 'out'}", f"data.resolution={args.resolution}",
                             f"data.min_bucket={args.resolution}", f"data.max_bucket={args.resolution}",
                             f"optim.steps={args.steps}", "lora.targets=attn", "lora.rank=16", "lora.alpha=16",
                             "lora.train_text_encoder=false", f"optim.mixed_precision={args.precision}",
                             *VARIANTS[args.variant]])
    stamps = []

    def on_step(info) -> None:
        stamps.append(time.perf_counter())
        if info.step == 1 and args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    train(cfg, build_components("sd15", args.device, work), on_step=on_step)
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    print(json.dumps({"s_per_step": statistics.median(steps), "peak_mb": peak_memory_mb(args.device)}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precision", default="bf16", choices=("no", "fp16", "bf16"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                        help="which variants, in this order (a name may repeat: runs alternate on a busy machine)")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        child(args)
        return 0
    memory = "peak CUDA MB (max allocated)" if args.device == "cuda" else "peak RSS MB (whole process)"
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {args.device}, SD1.5-shaped random base, {args.resolution} px, "
          f"batch 1, attn LoRA rank 16, {args.precision}, {args.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.2f}\n")
    print(f"| variant | s/step | {memory} |\n|---|---|---|")
    for name in args.variants:
        with tempfile.TemporaryDirectory() as work:
            cmd = [sys.executable, __file__, f"--resolution={args.resolution}", f"--steps={args.steps}",
                   f"--precision={args.precision}", f"--threads={args.threads}", f"--device={args.device}",
                   "--variant", name, "--work", work]
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            print(f"| {name} | failed: {proc.stderr.strip().splitlines()[-1]} | |")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {name} | {row['s_per_step']:.2f} | {row['peak_mb']:.0f} |", flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
