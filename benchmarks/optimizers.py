"""Optimizer benchmark: training steps/s of each registered optimizer on the embedded model, against AdamW.

    python benchmarks/optimizers.py                       # embedded model, sample_data, 32 px, CPU
    python benchmarks/optimizers.py --steps 30 --rounds 3 --device cuda

Two measurements per optimizer:
* train: sdlora's `train()` on the shipped embedded model and `sample_data/` (latents and text cached), timed
  from the `on_step` callback over the steps after the first (warm-up) one; wall steps/s and steps per
  CPU-second of the process (steadier on a shared machine: it does not count time spent waiting for a core);
* step: `optimizer.step()` alone over the same LoRA parameters with gradients of a fixed quadratic loss (CPU milliseconds
  per step on CPU, wall milliseconds on CUDA; median of `--micro` steps), which is where they differ.
Optimizers run in rounds (each round runs every optimizer once, in turn) so that all see the same machine
load; the tables give the median over rounds and the ratio to AdamW. Optimizers whose package is missing
(or that need CUDA) are listed as skipped.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
LRS = {"prodigy": 1.0}  # Prodigy's lr is a multiplier of its own step size; others train at 1e-4


def _config(name: str, steps: int, out: Path, device_steps: list[str]):
    from sdlora.settings.config import load_config

    return load_config(None, [f"data.path={ROOT / 'sample_data'}", f"output.dir={out}", "model.base=embedded",
                              "data.resolution=32", "data.min_bucket=32", "data.max_bucket=64",
                              "data.bucket_step=32", f"optim.steps={steps}", f"optim.optimizer={name}",
                              f"optim.lr={LRS.get(name, 1e-4)}", "output.log_with=none", "output.save_dtype=fp32",
                              *device_steps])


def time_training(name: str, components, steps: int, folder: Path) -> tuple[float, float]:
    """(wall steps/s, steps per CPU-second) over steps 2..steps of one `train()` run."""
    from sdlora.train import train

    marks: list[tuple[float, float]] = []
    train(_config(name, steps, folder / name, []), components,
          on_step=lambda info: marks.append((time.perf_counter(), time.process_time())))
    (wall0, cpu0), (wall1, cpu1) = marks[0], marks[-1]
    return (len(marks) - 1) / (wall1 - wall0), (len(marks) - 1) / max(cpu1 - cpu0, 1e-9)


def time_step(name: str, params: list[torch.Tensor], device: torch.device, micro: int) -> float:
    """Median CPU milliseconds (process time: steady under load) of one optimizer.step() over `params`
    with the gradients of a fixed quadratic loss (on CUDA: wall milliseconds after a synchronize)."""
    from sdlora.train import optimizers

    cfg = _config(name, 10, Path(tempfile.gettempdir()), [])
    generator = torch.Generator(device).manual_seed(0)
    targets = [p.detach() + torch.randn(p.shape, generator=generator, device=device) * 1e-2 for p in params]
    copies = [p.detach().clone().requires_grad_(True) for p in params]
    optimizer = optimizers.build([{"params": copies, "lr": LRS.get(name, 1e-4)}], cfg, device)
    times = []
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    for _ in range(micro):
        with torch.no_grad():  # a quadratic pull to fixed targets (kept out of the timing): a loss Prodigy's
            for p, target in zip(copies, targets, strict=True):  # step-size estimate settles on
                p.grad = p - target
        start = clock()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - start)
    return statistics.median(times[1:]) * 1000


def lora_parameters(components, device: torch.device) -> list[torch.Tensor]:
    """The LoRA parameters sdlora's default targets give the embedded model (as the training runs have)."""
    from sdlora.lora import inject_lora
    from sdlora.settings.config import load_config

    lc = load_config(None).lora
    network = inject_lora({"unet": components.unet, **components.text_encoders}, lc.targets, rank=lc.rank,
                          alpha=lc.alpha, conv_rank=lc.conv_rank, conv_alpha=lc.conv_alpha)
    params = [p.detach().to(device).clone() for p in network.parameters()]
    network.remove()
    return params


def available(names: list[str], device: torch.device) -> tuple[list[str], dict[str, str]]:
    from sdlora.errors import ConfigError
    from sdlora.train import optimizers

    usable, skipped = [], {}
    for name in names:
        spec = optimizers.REGISTRY[name]
        try:
            optimizers.check(_config(name, 10, Path(tempfile.gettempdir()), []))
            if spec.cuda_only and device.type != "cuda":
                raise ConfigError("needs CUDA")
            usable.append(name)
        except ConfigError as err:
            skipped[name] = str(err)
    return usable, skipped


def main(argv: list[str] | None = None) -> int:
    from sdlora.base.load import load_components
    from sdlora.train import optimizers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each runs every optimizer once)")
    parser.add_argument("--micro", type=int, default=50, help="optimizer.step() calls timed per optimizer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names, skipped = available(list(optimizers.NAMES), device)
    components = load_components("embedded")
    params = lora_parameters(components, device)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    step_ms: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name in names:
                w, c = time_training(name, components, args.steps, Path(tmp) / f"r{round_}")
                wall[name].append(w)
                cpu[name].append(c)
                step_ms[name].append(time_step(name, params, device, args.micro))
    base_wall, base_step = statistics.median(wall["adamw"]), statistics.median(step_ms["adamw"])
    print(f"embedded model, sample_data, 32 px, {args.steps} steps x {args.rounds} rounds, device {device}, "
          f"{args.threads} thread(s), {sum(p.numel() for p in params)} LoRA parameters")
    print("| optimizer | train steps/s (wall) | vs AdamW | steps per CPU-s | optimizer.step() ms (CPU) | vs AdamW |")
    print("|---|---|---|---|---|---|")
    for name in names:
        w, c, s = (statistics.median(v[name]) for v in (wall, cpu, step_ms))
        print(f"| {name} | {w:.2f} | {w / base_wall:.2f}x | {c:.2f} | {s:.3f} | {s / base_step:.2f}x |")
    for name, why in skipped.items():
        print(f"| {name} | skipped: {why} | | | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
