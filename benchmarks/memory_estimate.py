"""The memory estimate (`sdlora train --estimate`) against a measured run.

    python benchmarks/memory_estimate.py                 # every case: estimate; measured too with a CUDA GPU
    python benchmarks/memory_estimate.py --cases sd15-512 --steps 4

For each case the base is built with random weights from sdlora's shipped configs (no download), trained for
`--steps` steps through `sdlora.train.train`, and `torch.cuda.max_memory_allocated` is read over the steps
after the first (the peak statistics are reset when step 1 reports, so caching latents before the steps
does not count). The table shows the estimate's parts, the measured peak and estimate / measured; the
target is within 15% for the SD1.5 and SDXL cases. Without a CUDA device nothing can be measured: the script
says so and prints the estimates alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

# name -> (family, resolution, settings)
CASES = {
    "sd15-512": ("sd1", 512, ["optim.mixed_precision=bf16"]),
    "sd15-512-gc": ("sd1", 512, ["optim.mixed_precision=bf16", "optim.gradient_checkpointing=true"]),
    "sd15-512-fp8-fused": ("sd1", 512, ["optim.mixed_precision=bf16", "optim.gradient_checkpointing=true",
                                        "optim.fp8_base=true", "optim.fused_backward=true"]),
    "sdxl-1024-gc": ("sdxl", 1024, ["optim.mixed_precision=bf16", "optim.gradient_checkpointing=true"]),
    "sdxl-1024-fp8-fused": ("sdxl", 1024, ["optim.mixed_precision=bf16", "optim.gradient_checkpointing=true",
                                           "optim.fp8_base=true", "optim.fused_backward=true"]),
}
COMMON = ["lora.train_text_encoder=false", "data.cache_latents=memory", "data.cache_text=true", "lora.rank=16",
          "lora.alpha=16", "lora.targets=attn", "data.batch_size=1"]


def config(family: str, resolution: int, settings: list[str], data: Path, out: Path, steps: int):
    from sdlora.settings import load_config

    return load_config(None, [f"model.base={family}", f"data.path={data}", f"output.dir={out}",
                              f"data.resolution={resolution}", f"data.min_bucket={resolution}",
                              f"data.max_bucket={resolution}", f"optim.steps={steps}", *COMMON, *settings])


def random_components(family: str):
    """Random-weight components of the family's shipped configs."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from sdlora.base.load import Components
    from sdlora.configs import CONFIG_DIRS, models_root, tokenizers_root

    root = models_root() / CONFIG_DIRS[family]
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizers_root() / "clip-vit-large-patch14")
    parts = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet")),
             "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")),
             "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder")),
             "tokenizer": tokenizer, "family": family, "name": f"random-{family}",
             "scheduler": DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                        beta_start=0.00085, beta_end=0.012)}
    if family == "sdxl":
        parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2"))
        parts["tokenizer_2"] = tokenizer
    return Components(**parts)


def measure(cfg, family: str) -> float:
    """Peak CUDA bytes allocated over the steps after the first."""
    from sdlora.train import train

    def reset(info) -> None:
        if info.step == 1:
            torch.cuda.reset_peak_memory_stats()

    train(cfg, random_components(family), on_step=reset)
    return torch.cuda.max_memory_allocated()


def main(argv=None) -> int:
    from train import write_data

    from sdlora.train.estimate import GIB, estimate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda:
        print("no CUDA device: the peak accelerator memory cannot be measured on this machine; estimates only")
    print(f"\n{time.strftime('%Y-%m-%d')}, {torch.cuda.get_device_name() if cuda else 'CPU only'}, torch "
          f"{torch.__version__}; common settings: {' '.join(COMMON)}\n")
    print("| case | frozen GiB | LoRA+grad+optim GiB | activations GiB | estimate GiB | measured GiB | est/measured |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            family, resolution, settings = CASES[name]
            data = write_data(Path(tmp) / f"data-{resolution}", 2, resolution)
            cfg = config(family, resolution, settings, data, Path(tmp) / name, args.steps)
            e = estimate(cfg)
            measured = measure(cfg, family) if cuda else None
            ratio = f"{e.total / measured:.2f}" if measured else "-"
            shown = f"{measured / GIB:.2f}" if measured else "not measured"
            print(f"| {name} | {e.frozen / GIB:.2f} | {(e.lora + e.gradients + e.optimizer) / GIB:.3f} | "
                  f"{e.activations / GIB:.2f} | {e.total / GIB:.2f} | {shown} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
