"""Benchmark: sdlora's LoraStack against diffusers (load_lora_weights + set_adapters + fuse_lora).

One command, no downloads:

    nice .venv/bin/python benchmarks/stack.py            # SD1.5-shaped UNet + CLIP-L, 5 rank-16 LoRAs
    .venv/bin/python benchmarks/stack.py --quick         # tiny models, a smoke run (used by a test)
    python benchmarks/stack.py --device cuda             # the same on a GPU (LoRA files are read on the CPU)

Builds the models from the shipped configs (sdlora/configs/models/sd15, random weights, float32), writes five
Kohya LoRAs over all sd-scripts default modules (UNet transformer linears and 1x1 proj convs,
text-encoder attention and MLP: 264 modules for SD1.5) with sdlora.save_lora, then runs the same
sequence through sdlora and through diffusers on the same weights and prints one table:
load+apply time, one strength change, UNet forward time vs the bare base, max relative weight error
after N random strength changes (float64 reference), exact restore, whether the text encoder changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
UNET_LEAVES = ("proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
TE_LEAVES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


# ----- models and LoRAs ------------------------------------------------------------------------


def build_models(quick: bool, device: str = "cpu"):
    """(unet, text_encoder) with random float32 weights on `device`: SD1.5 shapes, or tiny ones for --quick."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlora.configs import models_root

    torch.manual_seed(0)
    if quick:
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=8, cross_attention_dim=32,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), norm_num_groups=8,
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
        )
        te_config = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                   num_attention_heads=4, vocab_size=1000)
    else:
        folder = models_root() / "sd15"
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        te_config = CLIPTextConfig.from_json_file(folder / "text_encoder" / "config.json")
    return unet.eval().to(device), CLIPTextModel(te_config).eval().to(device)


def target_names(components) -> dict[str, torch.nn.Module]:
    """{canonical name: module} for sd-scripts' default LoRA targets."""
    from sdlora.arch.components import canonical_name

    found = {}
    for component, model in components.items():
        leaves = UNET_LEAVES if component == "unet" else TE_LEAVES
        for path, module in model.named_modules():
            in_scope = ".attentions." in path or component != "unet"
            if in_scope and isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and path.endswith(leaves):
                if isinstance(module, torch.nn.Conv2d) and module.kernel_size != (1, 1):
                    continue
                found[canonical_name(component, path)] = module
    return found


def make_lora(targets, rank: int, seed: int):
    """A random Kohya-style LoRA (alpha = rank / 2) on every target."""
    from sdlora.weights import LoraModule, LoraState

    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for name, module in targets.items():
        w = module.weight
        down = torch.randn((rank, *w.shape[1:]), generator=gen) * 0.02
        up = torch.randn((w.shape[0], rank, *w.shape[2:]), generator=gen) * 0.02
        modules[name] = LoraModule("lora", {"down": down, "up": up}, alpha=rank / 2)
    return LoraState(modules=modules, format="kohya")


def write_loras(targets, folder: Path, count: int, rank: int, family) -> tuple[list[Path], list]:
    from sdlora import save_lora

    paths, states = [], []
    for i in range(count):
        state = make_lora(targets, rank, seed=100 + i)
        state.family = family
        path = folder / f"bench_{i}.safetensors"
        save_lora(state, path, format="kohya")
        paths.append(path)
        states.append(state)
    return paths, states


# ----- measurements ----------------------------------------------------------------------------


def weight_of(module):
    """The base weight of a live module, also when PEFT wrapped it (diffusers adds `base_layer`)."""
    return getattr(module, "base_layer", module).weight


def live_targets(components, names):
    from types import SimpleNamespace

    from sdlora.arch.naming import module_map

    mapping = module_map(SimpleNamespace(**components))
    return {n: weight_of(mapping[n]) for n in names}


def digest(weights: dict) -> dict[str, str]:
    return {n: hashlib.sha1(w.detach().cpu().contiguous().numpy().view("uint8")).hexdigest()
            for n, w in weights.items()}


def max_relative_error(weights, originals, states, strengths) -> float:
    """max over layers of max|W - (W0 + Σ s·ΔW)| / max|W0 + Σ s·ΔW|, reference in float64."""
    worst = 0.0
    for name, w in weights.items():
        ref = originals[name].double()
        for state, s in zip(states, strengths, strict=True):
            m = state.modules[name]
            up = m.tensors["up"].to(ref.device, torch.float64).reshape(ref.shape[0], -1)
            down = m.tensors["down"].to(ref.device, torch.float64).reshape(up.shape[1], -1)
            ref = ref + (s * m.scale * (up @ down)).reshape(ref.shape)
        err = (w.detach().double() - ref).abs().max() / ref.abs().max()
        worst = max(worst, float(err))
    return worst


def device_of(components) -> torch.device:
    return next(components["unet"].parameters()).device


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def unet_forward_time(components, quick: bool, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    size = 8 if quick else 32
    unet, device = components["unet"], device_of(components)
    sample = torch.randn(1, 4, size, size, generator=gen).to(device)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=gen).to(device)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            unet(sample, 10, encoder_hidden_states=context)
            sync(device)
            times.append(time.perf_counter() - start)
    return min(times)


def te_output(components):
    ids = (torch.arange(3, 40).unsqueeze(0) % components["text_encoder"].config.vocab_size).to(device_of(components))
    with torch.inference_mode():
        return components["text_encoder"](ids)[0].clone()


def te_applied(components, te_before, weights, originals, states, strengths) -> bool:
    """The text encoder's output changed AND its weights hold W0 + Σ sΔW (not some other change)."""
    te = {n: w for n, w in weights.items() if not n.startswith("unet.")}
    changed = not torch.equal(te_before, te_output(components))
    return changed and max_relative_error(te, originals, states, strengths) <= 1e-4


def machine_floors(weights: dict) -> dict:
    """What this machine needs for the two unavoidable passes, measured on the patched layers' sizes.

    fresh_write: write every patched weight's size into fresh memory where the stack keeps W0 (what a
    first patch that keeps W0 must do at least): on the CPU new tensors; on a GPU a copy of each weight
    to the CPU (where LoraStack keeps W0 on other devices). rewrite: one in-place read+write pass over
    those weights (what any strength change of a merged stack must do at least). Measured after both
    runs, so neither side gets memory the other already had mapped.
    """
    device = next(iter(weights.values())).device
    sync(device)
    start = time.perf_counter()
    if device.type == "cpu":
        fresh = [_fresh_tensor(w.numel()).fill_(1.0) for w in weights.values()]
    else:
        kept = [w.detach().to("cpu", copy=True) for w in weights.values()]
    sync(device)
    fresh_write = time.perf_counter() - start
    if device.type != "cpu":
        del kept
        fresh = [w.detach().clone() for w in weights.values()]  # GPU tensors for the in-place pass
        sync(device)
    start = time.perf_counter()
    for tensor in fresh:
        tensor.mul_(1.0001)
    sync(device)
    rewrite = time.perf_counter() - start
    gigabytes = sum(t.numel() * t.element_size() for t in fresh) / 1e9
    return {"gigabytes": gigabytes, "fresh_write": fresh_write, "rewrite": rewrite}


def _fresh_tensor(numel: int) -> torch.Tensor:
    """float32 memory straight from the kernel (an anonymous mapping), never reused from the allocator."""
    return torch.frombuffer(mmap.mmap(-1, numel * 4), dtype=torch.float32)


def strength_plan(count: int, changes: int, seed: int = 0):
    rng = random.Random(seed)
    initial = [round(rng.uniform(0.3, 1.0), 3) for _ in range(count)]
    return initial, [(rng.randrange(count), round(rng.uniform(-1.0, 1.5), 3)) for _ in range(changes)]


# ----- the two runners -------------------------------------------------------------------------


def run_sdlora(components, paths, states, plan, args) -> dict:
    from sdlora.stack import LoraStack

    initial, changes = plan
    weights = live_targets(components, states[0].modules)
    originals = {n: w.detach().clone() for n, w in weights.items()}
    before, te_before = digest(weights), te_output(components)
    device = device_of(components)
    sync(device)
    start = time.perf_counter()
    stack = LoraStack(components)
    with stack.batch():
        names = [stack.add(p, s) for p, s in zip(paths, initial, strict=True)]
    sync(device)
    result = {"load_apply": time.perf_counter() - start}
    result["forward"] = unet_forward_time(components, args.quick, args.repeats)
    result["te_applied"] = te_applied(components, te_before, weights, originals, states, initial)
    strengths, times = list(initial), []
    for index, value in changes:
        start = time.perf_counter()
        stack.set_strength(names[index], value)
        sync(device)
        times.append(time.perf_counter() - start)
        strengths[index] = value
    result["change"] = statistics.median(times)
    result["error"] = max_relative_error(weights, originals, states, strengths)
    stack.clear()
    result["restored"] = digest(weights) == before
    return result


def run_diffusers(components, paths, states, plan, args) -> dict:
    pipe = diffusers_pipeline(components)
    initial, changes = plan
    names = [f"l{i}" for i in range(len(paths))]
    weights = live_targets(components, states[0].modules)
    originals = {n: w.detach().clone() for n, w in weights.items()}
    before, te_before = digest(weights), te_output(components)
    device = device_of(components)
    sync(device)
    start = time.perf_counter()
    for path, name in zip(paths, names, strict=True):
        pipe.load_lora_weights(str(path), adapter_name=name)
    pipe.set_adapters(names, adapter_weights=list(initial))
    pipe.fuse_lora(components=["unet", "text_encoder"], adapter_names=names)
    sync(device)
    result = {"load_apply": time.perf_counter() - start}
    result["forward"] = unet_forward_time(components, args.quick, args.repeats)
    result["te_applied"] = te_applied(components, te_before, weights, originals, states, initial)
    strengths, times = list(initial), []
    for index, value in changes:
        strengths[index] = value
        start = time.perf_counter()
        pipe.unfuse_lora(components=["unet", "text_encoder"])
        pipe.set_adapters(names, adapter_weights=list(strengths))
        pipe.fuse_lora(components=["unet", "text_encoder"], adapter_names=names)
        sync(device)
        times.append(time.perf_counter() - start)
    result["change"] = statistics.median(times)
    weights = live_targets(components, states[0].modules)
    result["error"] = max_relative_error(weights, originals, states, strengths)
    pipe.unfuse_lora(components=["unet", "text_encoder"])
    pipe.unload_lora_weights()
    result["restored"] = digest(live_targets(components, states[0].modules)) == before
    return result


def diffusers_pipeline(components):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    vae = AutoencoderKL(block_out_channels=[32], norm_num_groups=8, latent_channels=4).to(device_of(components))
    return StableDiffusionPipeline(
        vae=vae, text_encoder=components["text_encoder"], tokenizer=None, unet=components["unet"],
        scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


# ----- report ----------------------------------------------------------------------------------


def table(ours: dict, theirs: dict, bare_forward: float, n_changes: int) -> str:
    def ratio(key):
        return ours[key] / theirs[key] if theirs[key] else float("nan")

    rows = [
        ("load + apply 5 LoRAs (s)", f"{ours['load_apply']:.3f}", f"{theirs['load_apply']:.3f}",
         f"{ratio('load_apply'):.3f}x", "<= 0.2x"),
        ("one strength change (s, median)", f"{ours['change']:.3f}", f"{theirs['change']:.3f}",
         f"{ratio('change'):.3f}x", "<= 0.05x"),
        ("UNet forward with stack (s)", f"{ours['forward']:.3f}", f"{theirs['forward']:.3f}",
         overhead(ours, theirs, bare_forward), "<= +1%"),
        (f"max rel. weight error after {n_changes} changes", f"{ours['error']:.1e}", f"{theirs['error']:.1e}",
         "", "<= 1e-5"),
        ("clear restores W0 bit for bit", yes(ours["restored"]), yes(theirs["restored"]), "", "yes"),
        ("text-encoder deltas applied", yes(ours["te_applied"]), yes(theirs["te_applied"]), "", "yes"),
    ]
    header = ("measure", "sdlora", "diffusers", "ratio / note", "target")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def overhead(ours: dict, theirs: dict, bare: float) -> str:
    return (f"bare {bare:.3f}: {100 * (ours['forward'] / bare - 1):+.1f}% / "
            f"{100 * (theirs['forward'] / bare - 1):+.1f}%")


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models: a smoke run in seconds")
    parser.add_argument("--changes", type=int, default=20, help="random strength changes (default 20)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="UNet forwards per timing (min is kept)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--threads", type=int, help="torch threads for both sides (default: torch's own choice)")
    parser.add_argument("--device", default="cpu", help="where the models live: cpu (the issue's setting) or cuda")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # no_grad as a context, not set_grad_enabled(False): tests call main() in-process, and a global switch
    # leaked into every later test (training then had no graph).
    with torch.no_grad():
        return _run(args)


def _run(args) -> int:
    load_before = os.getloadavg()[0]
    unet, text_encoder = build_models(args.quick, args.device)
    components = {"unet": unet, "text_encoder": text_encoder}
    targets = target_names(components)
    plan = strength_plan(5, args.changes)
    with tempfile.TemporaryDirectory() as tmp:
        paths, states = write_loras(targets, Path(tmp), 5, args.rank, None if args.quick else "sd1")
        bare = unet_forward_time(components, args.quick, args.repeats)
        ours = run_sdlora(components, paths, states, plan, args)
        theirs = run_diffusers(components, paths, states, plan, args)
        floors = machine_floors(live_targets(components, states[0].modules))
    print(f"{len(targets)} modules per LoRA, rank {args.rank}, {'tiny' if args.quick else 'SD1.5'} UNet + "
          f"CLIP text encoder, float32, device {args.device}, {torch.get_num_threads()} CPU threads; 1-min load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other jobs slow both sides)")
    print(table(ours, theirs, bare, args.changes))
    print(f"This machine, on the {floors['gigabytes']:.2f} GB of patched weights: writing that much fresh memory "
          f"{'' if args.device == 'cpu' else '(W0 kept on the CPU) '}takes {floors['fresh_write']:.3f} s (the "
          f"least a first patch that keeps W0 needs), one in-place "
          f"read+write pass {floors['rewrite']:.3f} s (the least any strength change of merged weights needs).")
    if args.json:
        args.json.write_text(json.dumps({"sdlora": ours, "diffusers": theirs, "bare_forward": bare,
                                         "modules": len(targets), "machine": floors, "device": args.device},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
