"""Benchmark: sdlora's LoraStack against diffusers (load_lora_weights + set_adapters + fuse_lora).

One command, no downloads:

    nice .venv/bin/python benchmarks/stack.py            # SD1.5-shaped UNet + CLIP-L, 5 rank-16 LoRAs
    .venv/bin/python benchmarks/stack.py --quick         # tiny models, a smoke run (used by a test)
    python benchmarks/stack.py --device cuda             # the same on a GPU (LoRA files are read on the CPU)

    python benchmarks/stack.py --sdxl-memory          # also: backup memory per mode for an SDXL LoRA set

Builds the models from the shipped configs (sdlora/configs/models/sd15, random weights, float32) and saves
them once as a diffusers folder in the system temp dir (reused by later runs); every run then loads them
from there as a user would (`from_pretrained`), for each side afresh. Writes five Kohya LoRAs over all
sd-scripts default modules (UNet transformer linears and 1x1 proj convs, text-encoder attention and MLP:
264 modules for SD1.5) with sdlora.save_lora, then runs the same sequence through sdlora (W0 read back from
the model file, and with w0="copy") and through diffusers and prints one table: load+apply time, one
strength change, UNet forward time vs the bare base (interleaved with it, median of paired ratios), max
relative weight error after N random strength changes (float64 reference), exact restore, whether the text
encoder changed, and the memory each side keeps (RSS growth and tracked bytes of W0 copies and factors).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import mmap
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

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


def model_folder(quick: bool) -> Path:
    """A diffusers-style folder (unet/, text_encoder/) with the random models, written once into the system
    temp dir and reused (written under another name and renamed, so a concurrent run never sees half)."""
    folder = Path(tempfile.gettempdir()) / "sdlora-bench-stack" / ("tiny-v1" if quick else "sd15-v1")
    if (folder / "unet").is_dir() and (folder / "text_encoder").is_dir():
        return folder
    unet, text_encoder = build_models(quick)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=folder.parent))
    unet.save_pretrained(partial / "unet")
    text_encoder.save_pretrained(partial / "text_encoder")
    del unet, text_encoder
    try:
        partial.rename(folder)
    except OSError:  # another run finished first: use its folder
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def load_models(folder: Path, device: str) -> dict:
    """{"unet", "text_encoder"} loaded from the folder as a user would (float32), moved to `device`."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the random tiny config's token ids draw a warning per load
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    return {"unet": unet.eval().to(device), "text_encoder": text_encoder.eval().to(device)}


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
        ref = originals[name].to(w.device, torch.float64)
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


def forward_inputs(unet, quick: bool):
    gen = torch.Generator().manual_seed(0)
    size = 8 if quick else 32
    device = next(unet.parameters()).device
    sample = torch.randn(1, 4, size, size, generator=gen).to(device)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=gen).to(device)
    return sample, context


def one_forward(unet, inputs) -> float:
    device = inputs[0].device
    with torch.inference_mode():
        sync(device)
        start = time.perf_counter()
        unet(inputs[0], 10, encoder_hidden_states=inputs[1])
        sync(device)
    return time.perf_counter() - start


def forward_vs_bare(unet, bare, quick: bool, repeats: int) -> dict:
    """UNet forward of the patched model and of the bare base, interleaved (A B B A ...), so that load
    changes on a shared machine hit both alike; the overhead is the median of the paired ratios."""
    inputs = forward_inputs(bare, quick)
    one_forward(unet, inputs), one_forward(bare, inputs)  # warm-up
    ours, base = [], []
    for index in range(repeats):
        pair = (unet, bare) if index % 2 == 0 else (bare, unet)
        times = {id(model): one_forward(model, inputs) for model in pair}
        ours.append(times[id(unet)])
        base.append(times[id(bare)])
    ratios = sorted(a / b for a, b in zip(ours, base, strict=True))
    return {"forward": statistics.median(ours), "bare_forward": statistics.median(base),
            "overhead": statistics.median(ratios) - 1,
            "overhead_iqr": (ratios[len(ratios) // 4] - 1, ratios[(3 * len(ratios)) // 4] - 1)}


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


# ----- memory ----------------------------------------------------------------------------------


class RssPeak:
    """The process RSS before a block, after it and its peak inside (sampled every 5 ms by a thread)."""

    def __init__(self):
        import psutil

        self.process = psutil.Process()
        self.before = self.after = self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self):
        gc.collect()
        self.before = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.after = self.process.memory_info().rss
        self.peak = max(self.peak, self.after)

    def report(self) -> dict:
        return {"rss_growth": self.after - self.before, "rss_peak_growth": self.peak - self.before}


def peft_kept_bytes(components) -> dict:
    """What diffusers keeps after fuse_lora: the PEFT lora_A/lora_B factors (fusing keeps no W0 copy;
    unfuse subtracts the delta again, which is why its restore is not exact)."""
    factors = sum(p.nbytes for model in components.values() for name, p in model.named_parameters()
                  if ".lora_" in name)
    return {"weight_copies": 0, "factors": factors}


# ----- the runners -------------------------------------------------------------------------------


class Setup(NamedTuple):
    """What every runner gets: the model folder, the bare UNet, the LoRA files and states, the plan."""

    folder: Path
    bare: torch.nn.Module
    paths: list
    states: list
    plan: tuple
    args: argparse.Namespace


def run_sdlora(setup: Setup, w0: str = "auto") -> dict:
    from sdlora.stack import LoraStack

    folder, bare, paths, states, plan, args = setup

    components = load_models(folder, args.device)
    initial, changes = plan
    weights = live_targets(components, states[0].modules)
    originals = {n: w.detach().to("cpu", copy=True) for n, w in weights.items()}
    before, te_before = digest(weights), te_output(components)
    device = device_of(components)
    sync(device)
    with RssPeak() as rss:
        start = time.perf_counter()
        stack = LoraStack(components, w0=w0)
        with stack.batch():
            names = [stack.add(p, s) for p, s in zip(paths, initial, strict=True)]
        sync(device)
        result = {"load_apply": time.perf_counter() - start}
    kept = stack.kept_bytes()
    result.update(rss.report(), mode=stack.mode, weight_copies=kept.weight_copies, factors=kept.factors)
    result.update(forward_vs_bare(components["unet"], bare, args.quick, args.repeats))
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


def run_diffusers(setup: Setup) -> dict:
    folder, bare, paths, states, plan, args = setup
    components = load_models(folder, args.device)
    pipe = diffusers_pipeline(components)
    initial, changes = plan
    names = [f"l{i}" for i in range(len(paths))]
    weights = live_targets(components, states[0].modules)
    originals = {n: w.detach().to("cpu", copy=True) for n, w in weights.items()}
    before, te_before = digest(weights), te_output(components)
    device = device_of(components)
    sync(device)
    with RssPeak() as rss:
        start = time.perf_counter()
        for path, name in zip(paths, names, strict=True):
            pipe.load_lora_weights(str(path), adapter_name=name)
        pipe.set_adapters(names, adapter_weights=list(initial))
        pipe.fuse_lora(components=["unet", "text_encoder"], adapter_names=names)
        sync(device)
        result = {"load_apply": time.perf_counter() - start}
    result.update(rss.report(), **peft_kept_bytes(components))
    result.update(forward_vs_bare(components["unet"], bare, args.quick, args.repeats))
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


# ----- SDXL memory (meta device: no weights are allocated) ------------------------------------------


def sdxl_memory(rank: int = 16, count: int = 5) -> dict:
    """Bytes each mode keeps for an SDXL LoRA set on all attention and MLP linears (the sd-scripts targets
    of UNet and both text encoders), counted on the meta device from the shipped SDXL configs."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdlora.configs import models_root

    folder = models_root() / "sdxl"
    with init_empty_weights():
        components = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_json_file(folder / "text_encoder" / "config.json")),
            "text_encoder_2": CLIPTextModelWithProjection(
                CLIPTextConfig.from_json_file(folder / "text_encoder_2" / "config.json")),
        }
    targets = target_names(components)
    numel = {name: module.weight.numel() for name, module in targets.items()}
    # OpenCLIP stores q/k/v fused (in_proj_weight) in a single-file checkpoint: no 1:1 key, so a copy
    fused = sum(n for name, n in numel.items() if name.startswith("text_encoder_2.") and
                name.endswith(("q_proj", "k_proj", "v_proj")))
    factor_numel = sum(rank * (m.weight.shape[0] + m.weight[0].numel()) for m in targets.values())
    per_component = {c: sum(n for name, n in numel.items() if name.startswith(c + ".")) for c in components}
    return {"modules": len(targets), "weights": sum(numel.values()), "per_component": per_component,
            "single_file_fused": fused, "factor_numel": factor_numel, "rank": rank, "count": count}


def sdxl_table(sdxl: dict) -> str:
    weights, gb = sdxl["weights"], 1e9
    lines = [f"SDXL, {sdxl['modules']} modules (all attention and MLP linears of UNet and both text encoders; "
             f"{weights / 1e6:.0f} M weights: " + ", ".join(f"{c} {n / 1e6:.0f} M" for c, n in
                                                           sdxl["per_component"].items()) + "), W0 kept for restore:",
             "| mode | fp16 pipeline (GB) | fp32 pipeline (GB) |", "|---|---|---|"]
    rows = [
        ("sdlora, W0 from the file (diffusers folder)", 0),
        ("sdlora, W0 from the file (single-file checkpoint: OpenCLIP q/k/v fused there, kept as copies)",
         sdxl["single_file_fused"]),
        ("sdlora w0='copy' (like ComfyUI/A1111 backups)", weights),
        ("diffusers fuse_lora (keeps no W0: unfuse is inexact)", 0),
    ]
    lines += [f"| {name} | {2 * n / gb:.2f} | {4 * n / gb:.2f} |" for name, n in rows]
    factors = sdxl["factor_numel"] * sdxl["count"]
    lines.append(f"LoRA factors of {sdxl['count']} rank-{sdxl['rank']} LoRAs: {2 * factors / gb:.2f} GB in fp16 "
                 f"files; sdlora adds its float32 concatenation ({4 * factors / gb:.2f} GB).")
    return "\n".join(lines)


# ----- report ----------------------------------------------------------------------------------


def table(ours: dict, theirs: dict, copy: dict, n_changes: int, repeats: int) -> str:
    def ratio(key, side=ours):
        return f"{side[key] / theirs[key]:.3f}x" if theirs[key] else "nan"

    rows = [
        ("load + apply 5 LoRAs (s)", f"{ours['load_apply']:.3f}", f"{theirs['load_apply']:.3f}",
         ratio("load_apply"), f"{copy['load_apply']:.3f} ({ratio('load_apply', copy)})", "<= 0.2x"),
        ("one strength change (s, median)", f"{ours['change']:.3f}", f"{theirs['change']:.3f}",
         ratio("change"), f"{copy['change']:.3f} ({ratio('change', copy)})", "<= 0.05x"),
        (f"UNet forward vs bare base ({repeats} interleaved pairs, median ratio)", overhead(ours),
         overhead(theirs), f"bare {ours['bare_forward']:.3f} s", overhead(copy), "<= +1%"),
        (f"max rel. weight error after {n_changes} changes", f"{ours['error']:.1e}", f"{theirs['error']:.1e}",
         "", f"{copy['error']:.1e}", "<= 1e-5"),
        ("clear restores W0 bit for bit", yes(ours["restored"]), yes(theirs["restored"]), "",
         yes(copy["restored"]), "yes"),
        ("text-encoder deltas applied", yes(ours["te_applied"]), yes(theirs["te_applied"]), "",
         yes(copy["te_applied"]), "yes"),
        ("W0 copies kept (MB, tracked)", mb(ours["weight_copies"]), mb(theirs["weight_copies"]) + " (none: inexact)",
         f"W0 from: {ours['mode']}", mb(copy["weight_copies"]), "0"),
        ("LoRA factors kept (MB, tracked)", mb(ours["factors"]), mb(theirs["factors"]), "", mb(copy["factors"]), ""),
        ("RSS growth by load+apply (MB, held / peak)", rss(ours), rss(theirs), "", rss(copy), ""),
    ]
    header = ("measure", "sdlora", "diffusers", "ratio / note", "sdlora w0=copy", "target")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def overhead(side: dict) -> str:
    low, high = side["overhead_iqr"]
    return f"{100 * side['overhead']:+.1f}% (IQR {100 * low:+.1f}..{100 * high:+.1f}%)"


def mb(count: int) -> str:
    return f"{count / 1e6:.1f}"


def rss(side: dict) -> str:
    return f"{mb(side['rss_growth'])} / {mb(side['rss_peak_growth'])}"


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models: a smoke run in seconds")
    parser.add_argument("--changes", type=int, default=20, help="random strength changes (default 20)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=16,
                        help="interleaved (stacked, bare) UNet forward pairs per side (default 16)")
    parser.add_argument("--sdxl-memory", action="store_true",
                        help="also print the W0 backup memory per mode for an SDXL LoRA set (meta device)")
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
    folder = model_folder(args.quick)
    bare = load_models(folder, args.device)  # the base as loaded, for the interleaved forward timing
    targets = target_names(bare)
    plan = strength_plan(5, args.changes)
    with tempfile.TemporaryDirectory() as tmp:
        paths, states = write_loras(targets, Path(tmp), 5, args.rank, None if args.quick else "sd1")
        setup = Setup(folder, bare["unet"], paths, states, plan, args)
        ours = run_sdlora(setup)
        gc.collect()
        copy = run_sdlora(setup, w0="copy")
        gc.collect()
        theirs = run_diffusers(setup)
        gc.collect()
        floors = machine_floors(live_targets(bare, states[0].modules))
    print(f"{len(targets)} modules per LoRA, rank {args.rank}, {'tiny' if args.quick else 'SD1.5'} UNet + "
          f"CLIP text encoder loaded from {folder}, float32, device {args.device}, {torch.get_num_threads()} CPU "
          f"threads; 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other jobs slow "
          "both sides)")
    print(table(ours, theirs, copy, args.changes, args.repeats))
    print(f"This machine, on the {floors['gigabytes']:.2f} GB of patched weights: writing that much fresh memory "
          f"{'' if args.device == 'cpu' else '(W0 kept on the CPU) '}takes {floors['fresh_write']:.3f} s (the "
          f"least a first patch that keeps W0 needs), one in-place "
          f"read+write pass {floors['rewrite']:.3f} s (the least any strength change of merged weights needs).")
    sdxl = sdxl_memory() if args.sdxl_memory else None
    if sdxl:
        print(sdxl_table(sdxl))
    if args.json:
        args.json.write_text(json.dumps({"sdlora": ours, "sdlora_copy": copy, "diffusers": theirs,
                                         "bare_forward": ours["bare_forward"], "modules": len(targets),
                                         "machine": floors, "device": args.device, "sdxl_memory": sdxl,
                                         "load_average": [load_before, os.getloadavg()[0]]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
