"""Trainer benchmark: sdlora vs a reference loop written after diffusers'
`examples/text_to_image/train_text_to_image_lora.py`, same model, data, batch, resolution and targets.

    python benchmarks/train.py                  # tiny SD-shaped pipeline on CPU (a few minutes)
    python benchmarks/train.py --shape embedded --resolution 32 --batch 8 --images 16   # the shipped model
    python benchmarks/train.py --shape sd15 --resolution 512 --device cuda   # SD1.5-shaped, random weights
    python benchmarks/train.py --shape embedded --resolution 32 --batch 8 --images 16 --compile   # + compile

Both runs train UNet attention LoRA (to_q, to_k, to_v, to_out.0; text encoder frozen), as the diffusers
script does. The reference loop does what that script does every step: decode and transform the images,
tokenize, VAE-encode the batch, run the text encoder, noise, predict, MSE, backward, clip, step (PEFT LoRA
via `unet.add_adapter`, torch's default AdamW). sdlora runs its `train()` with latent and text-encoder
caching on.

Two kinds of run:
* paired (`--paired N`, the speed-up): both trainers in one process, alternating blocks of `--block` steps,
  so both see the same machine load (on a shared machine, runs a minute apart see different loads);
* separate (`--repeats N`): each side alone in its own subprocess, so that peak memory (CUDA: max
  allocated; CPU: peak RSS) is its own; "total s" includes setup, caching, export and the loss plot.
steps/s is measured over training steps after the first (warm-up) one, in wall time and per CPU-second of
the process (steadier on a shared machine: with one thread, it does not count time spent waiting for a core).

`--compile` runs sdlora with `optim.compile=true` (torch.compile of the UNet); the tables then show each run's
first step in seconds, which is where the compile happens (inductor compiles in worker processes as well, so
wall seconds are the honest cost). Inductor reuses its on-disk cache: point TORCHINDUCTOR_CACHE_DIR at an
empty folder to measure a cold compile.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def build_components(shape: str, device: str, folder: Path):
    """Random-weight SD-shaped components (tiny, or SD1.5's configs from sdlora/configs/models/sd15), or the shipped
    embedded model (`--shape embedded`, 32 px)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sdlora.base.load import Components, load_components
    from sdlora.configs import models_root, tokenizers_root

    if shape == "embedded":
        return load_components("embedded")
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizers_root() / "clip-vit-large-patch14")
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012)
    if shape == "sd15":
        root = models_root() / "sd15"
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
    else:
        unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4,
                                    out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                                    norm_num_groups=8, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                            norm_num_groups=8)
        te = CLIPTextModel(CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, vocab_size=49408, max_position_embeddings=77))
    return Components(unet=unet, vae=vae, text_encoder=te.eval(), tokenizer=tokenizer, scheduler=scheduler,
                      family="sd1", name=f"random-{shape}")


def write_data(folder: Path, count: int, resolution: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = Image.new("RGB", (resolution, resolution), (30 * i % 256, 90, 200 - 20 * i % 200))
        img.paste((255, 255, 255), (i, i, resolution // 2, resolution // 3))
        img.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a shape number {i}, white box")
    return folder


def run_sdlora(args, components, data: Path, out: Path, on_step=None) -> dict:
    from sdlora.settings.config import load_config
    from sdlora.train import train

    cfg = load_config(None, [f"data.path={data}", f"output.dir={out}", f"data.resolution={args.resolution}",
                             f"data.min_bucket={args.resolution}", f"data.max_bucket={args.resolution}",
                             f"data.batch_size={args.batch}", f"optim.steps={args.steps}", "lora.targets=attn",
                             f"lora.rank={args.rank}", f"lora.alpha={args.rank}", "lora.train_text_encoder=false",
                             "data.cache_latents=memory", "data.cache_text=true", "optim.lr=1e-4", "data.flip=true",
                             f"optim.mixed_precision={args.precision}", f"optim.compile={args.compile}"])
    stamps, first = [], []
    start = time.perf_counter()

    def stamp(info) -> None:
        stamps.append((time.perf_counter(), time.process_time()))
        if info.step == 1:
            first.append(info.elapsed)
        if on_step is not None:
            on_step(info)

    train(cfg, components, on_step=stamp)
    return {"total": time.perf_counter() - start, "stamps": stamps, "first_step_s": first[0]}


def reference_batch(paths: list[Path], tokenizer, args, generator: torch.Generator):
    """The diffusers script's per-batch work (`preprocess_train` via `dataset.with_transform`, dataloader
    workers 0 by default): open each image, resize (bilinear), center crop, random flip, normalize to
    [-1, 1], and tokenize its caption. torchvision is not a dependency here, so PIL + numpy do the same."""
    import numpy as np
    from PIL import Image

    pixels, ids = [], []
    for path in paths:
        img = Image.open(path).convert("RGB")
        scale = args.resolution / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
        left, top = (img.width - args.resolution) // 2, (img.height - args.resolution) // 2
        img = img.crop((left, top, left + args.resolution, top + args.resolution))
        if torch.rand((), generator=generator) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        pixels.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
        ids.append(tokenizer(path.with_suffix(".txt").read_text(), max_length=tokenizer.model_max_length,
                             padding="max_length", truncation=True, return_tensors="pt").input_ids[0])
    return torch.stack(pixels), torch.stack(ids)


def reference_steps(args, components, data: Path):
    """One optimizer step per batch, as in train_text_to_image_lora.py's main loop; yields after each step
    (setup runs before the first)."""
    from accelerate import Accelerator
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig as PeftLoraConfig

    acc = Accelerator(mixed_precision=args.precision)
    unet, vae, te, sched = components.unet, components.vae, components.text_encoder, components.scheduler
    # the script casts all three frozen models to the mixed-precision dtype, then (fp16 only) upcasts LoRA
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.precision, torch.float32)
    for m in (unet, vae, te):
        m.requires_grad_(False)
        m.to(acc.device, dtype=weight_dtype)
    unet.add_adapter(PeftLoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                    target_modules=TARGETS))
    if args.precision == "fp16":
        cast_training_params(unet, dtype=torch.float32)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    unet, optimizer = acc.prepare(unet, optimizer)
    images = sorted(data.glob("*.png"))
    generator = torch.Generator().manual_seed(0)
    for _ in range(args.steps):
        index = torch.randint(0, len(images), (args.batch,), generator=generator)
        pixels, ids = reference_batch([images[i] for i in index], components.tokenizer, args, generator)
        batch_pixels = pixels.to(acc.device, dtype=weight_dtype)
        with acc.accumulate(unet):
            latents = vae.encode(batch_pixels).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), device=acc.device)
            noisy = sched.add_noise(latents, noise, timesteps)
            hidden = te(ids.to(acc.device), return_dict=False)[0]
            pred = unet(noisy, timesteps, hidden, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="mean")
            # the script logs the loss gathered over processes every step (`.item()`: a device sync)
            float(acc.gather(loss.detach().repeat(args.batch)).mean())
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad()
        yield


def run_reference(args, components, data: Path) -> dict:
    start, stamps = time.perf_counter(), []
    for _ in reference_steps(args, components, data):
        stamps.append((time.perf_counter(), time.process_time()))
    return {"total": time.perf_counter() - start, "stamps": stamps}


def run_paired(args, work: Path, data: Path) -> dict:
    """Both trainers in this one process, in alternating blocks of `--block` steps: sdlora's `train()` runs,
    and after every block its `on_step` callback runs a block of reference steps, so both sides see the same
    machine load within a second or so of each other (on a shared machine, separate runs minutes apart do
    not). Each side has its own copy of the model. The first step of each block is not counted (it runs with
    the other side's model in the caches), nor the first block (setup, sdlora's latent pre-pass). sdlora's
    step is everything between two callbacks: its whole loop (batch, step, logging, callback)."""
    reference = reference_steps(args, build_components(args.shape, args.device, work), data)
    ours, theirs = [], []
    last = [time.perf_counter(), time.process_time()]

    def lap(rows: list) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        rows.append((wall - last[0], cpu - last[1]))
        last[:] = [wall, cpu]

    def on_step(info) -> None:
        lap(ours)
        if info.step % args.block == 0:
            for _ in range(args.block):
                next(reference, None)
                lap(theirs)
            last[:] = [time.perf_counter(), time.process_time()]

    ran = run_sdlora(args, build_components(args.shape, args.device, work), data, work / "out-paired", on_step)

    def rate(rows: list, column: int) -> float:
        warm = [r[column] for i, r in enumerate(rows) if i >= args.block and i % args.block]
        if not warm:
            raise SystemExit(f"--steps {args.steps} is too few for paired blocks of {args.block}; use >= "
                             f"{3 * args.block}")
        return len(warm) / sum(warm)

    result = {side: {"steps_per_s": rate(rows, 0), "steps_per_cpu_s": rate(rows, 1)}
              for side, rows in (("reference", theirs), ("sdlora", ours))}
    result["sdlora"]["first_step_s"] = ran["first_step_s"]
    return result


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args) -> None:
    """Run one side (or both, paired) and print its measurements as JSON (one line)."""
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    data = work / "data"
    if args.side == "paired":
        print(json.dumps(run_paired(args, work, data)))
        return
    components = build_components(args.shape, args.device, work)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if args.side == "sdlora":
        result = run_sdlora(args, components, data, work / f"out-{args.side}")
    else:
        result = run_reference(args, components, data)
    stamps = result["stamps"]
    steps = len(stamps) - 1
    wall = steps / (stamps[-1][0] - stamps[0][0])
    cpu = steps / (stamps[-1][1] - stamps[0][1])
    print(json.dumps({"side": args.side, "steps_per_s": wall, "steps_per_cpu_s": cpu, "total_s": result["total"],
                      "peak_mb": peak_memory_mb(args.device), "first_step_s": result.get("first_step_s", 0.0)}))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("tiny", "sd15", "embedded"), default="tiny")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per side (same for both)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="separate runs per side (memory, total time), alternating; the lowest memory and "
                             "time and the best steps/s of each are kept")
    parser.add_argument("--paired", type=int, default=2,
                        help="paired runs (both trainers step for step in one process): the speed-up")
    parser.add_argument("--compile", action="store_true",
                        help="sdlora with optim.compile=true (torch.compile of the UNet); the first step's seconds "
                             "(the compile) are shown; set TORCHINDUCTOR_CACHE_DIR to an empty folder for a cold "
                             "compile (inductor reuses its on-disk cache otherwise)")
    parser.add_argument("--block", type=int, default=5, help="steps per side per turn in the paired runs")
    parser.add_argument("--side", choices=("sdlora", "reference", "paired"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _run_child(args, side: str, work: str) -> dict:
    cmd = [sys.executable, __file__, *sys.argv[1:], "--side", side, "--work", work]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _print_separate(rows: dict[str, list[dict]], repeats: int, ours: str) -> dict[str, dict]:
    best = {side: {key: (min if key in ("total_s", "peak_mb") else max)(r[key] for r in runs) for key in runs[0]
                   if key != "side"} for side, runs in rows.items()}
    print(f"\nSeparate processes (memory is each side's own), best of {repeats} alternating runs per side "
          "(first step: every run, in order):")
    print("| trainer | steps/s (wall) | steps per CPU-second | total s | peak memory MB | first step s |\n"
          "|---|---|---|---|---|---|")
    for name, side in (("diffusers-style reference", "reference"), (ours, "sdlora")):
        row = best[side]
        first = ", ".join(f"{r['first_step_s']:.1f}" for r in rows[side]) if side == "sdlora" else "-"
        print(f"| {name} | {row['steps_per_s']:.2f} | {row['steps_per_cpu_s']:.2f} | {row['total_s']:.1f} "
              f"| {row['peak_mb']:.0f} | {first} |")
    return best


def _print_paired(paired: list[dict], ours: str) -> None:
    print(f"\nPaired in one process, alternating blocks of steps ({len(paired)} runs; {ours}):")
    print("| run | reference steps/s | sdlora steps/s | speed-up (wall) | reference steps/CPU-s "
          "| sdlora steps/CPU-s | speed-up (CPU) | sdlora first step s |\n|---|---|---|---|---|---|---|---|")
    for i, run in enumerate(paired, 1):
        ref, mine = run["reference"], run["sdlora"]
        print(f"| {i} | {ref['steps_per_s']:.2f} | {mine['steps_per_s']:.2f} "
              f"| {mine['steps_per_s'] / ref['steps_per_s']:.2f}x | {ref['steps_per_cpu_s']:.2f} "
              f"| {mine['steps_per_cpu_s']:.2f} | {mine['steps_per_cpu_s'] / ref['steps_per_cpu_s']:.2f}x "
              f"| {mine['first_step_s']:.1f} |")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.side:
        child(args)
        return 0
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as work:
        write_data(Path(work) / "data", args.images, args.resolution)
        rows: dict[str, list[dict]] = {"reference": [], "sdlora": []}
        paired = []
        try:
            for i in range(max(args.repeats, args.paired)):
                if i < args.paired:
                    paired.append(_run_child(args, "paired", work))
                for side, runs in rows.items():
                    if i < args.repeats:
                        runs.append(_run_child(args, side, work))
        except RuntimeError as err:
            print(err, file=sys.stderr)
            return 1
    print(f"shape={args.shape} resolution={args.resolution} batch={args.batch} steps={args.steps} "
          f"rank={args.rank} targets=UNet attention, TE frozen, device={args.device}, threads={args.threads}")
    print("load average (1, 5, 15 min) before: {:.1f} {:.1f} {:.1f}, after: {:.1f} {:.1f} {:.1f}".format(
        *load_before, *os.getloadavg()))
    ours = "sdlora + compile (caching on)" if args.compile else "sdlora (caching on)"
    if paired:
        _print_paired(paired, ours)
    if args.repeats:
        best = _print_separate(rows, args.repeats, ours)
        print(f"memory: {best['sdlora']['peak_mb'] / best['reference']['peak_mb']:.2f}x of the reference's")
    if paired:
        cpu = sorted(r["sdlora"]["steps_per_cpu_s"] / r["reference"]["steps_per_cpu_s"] for r in paired)
        wall = sorted(r["sdlora"]["steps_per_s"] / r["reference"]["steps_per_s"] for r in paired)
        print(f"speed-up (paired): {cpu[0]:.2f}-{cpu[-1]:.2f}x per CPU-second, {wall[0]:.2f}-{wall[-1]:.2f}x wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
