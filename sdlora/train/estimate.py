"""Peak accelerator memory of a training run, before it runs (`sdlora train --estimate`). Depends on torch.

The base is built from its config files on the meta device (no weights read, as `verify --base` does), the
LoRA is injected into it as the run would, and each part is counted:

- frozen weights: every parameter and buffer of the models on the accelerator during the steps, in the
  dtype the run stores them (the compute dtype; the VAE float32; Linear/Conv2d weights one byte each with
  `optim.fp8_base`, plus the largest layer's upcast copy). The VAE and frozen text encoders are left out when
  both caches make the steps never call them (`sdlora.train.parking` moves them off the accelerator).
- LoRA parameters: float32, from the injected network's shapes.
- gradients: one float32 gradient per LoRA parameter; with `optim.fused_backward` the largest single one
  (each is freed as soon as its tensor is updated).
- optimizer states: per tensor, what the optimizer allocates (AdamW: two moments and a step counter;
  Adafactor: factored row and column second moments for matrices; ...).
- activations: a forward pass on the meta device with autograd's saved-tensor hooks counts every tensor
  kept for backward (each storage once, weights excluded). With gradient checkpointing, diffusers keeps only
  the input of each checkpointed block (each resnet and transformer block; each CLIP layer) and recomputes
  one block at a time in backward: the estimate is the tensors saved outside those blocks, plus their
  inputs, plus the largest block's own saved tensors. The largest saved tensor is added once more for the
  gradient flowing back at backward's start.

The first three parts and the optimizer states are exact (the tests compare them to the byte with the real
tensors of a small model). The activations are a model: allocator rounding and fragmentation, cuDNN and
cuBLAS workspaces, the CUDA context (not counted by `torch.cuda.max_memory_allocated` either), and the VAE's
own peak when latents are not cached are not in it; `benchmarks/memory_estimate.py` compares it with a
measured run when a GPU is present (docs/training.md, "Fitting your GPU").
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from torch import nn

from sdlora.base.ref import config_folder, parse_base
from sdlora.errors import ConfigError
from sdlora.settings.config import apply_dict, read_yaml
from sdlora.settings.presets import preset_path
from sdlora.train import data as data_mod
from sdlora.train import fp8
from sdlora.train.loop import inject_network

GIB = 1024 ** 3
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# modules diffusers and transformers wrap in torch.utils.checkpoint when gradient checkpointing is on
_CHECKPOINTED = ("ResnetBlock2D", "Transformer2DModel", "CLIPEncoderLayer")
_PARTS = ("frozen weights", "LoRA parameters", "gradients", "optimizer states", "activations")


@dataclass
class MemoryEstimate:
    """Expected peak accelerator memory of a run, in bytes, by part (see the module docstring)."""

    frozen: int
    lora: int
    gradients: int
    optimizer: int
    activations: int
    models: dict[str, int] = field(default_factory=dict)  # frozen bytes per model on the accelerator

    @property
    def total(self) -> int:
        return self.frozen + self.lora + self.gradients + self.optimizer + self.activations

    def parts(self) -> dict[str, int]:
        return dict(zip(_PARTS, (self.frozen, self.lora, self.gradients, self.optimizer, self.activations),
                        strict=True))

    def line(self) -> str:
        """One line: the total and its split."""
        split = ", ".join(f"{name} {gib(size)}" for name, size in self.parts().items())
        return f"estimated peak accelerator memory: {gib(self.total)} ({split})"

    def lines(self) -> list[str]:
        width = max(len(p) for p in _PARTS)
        rows = [f"  {name:<{width}}  {gib(size):>10}" for name, size in self.parts().items()]
        models = ", ".join(f"{name} {gib(size)}" for name, size in self.models.items())
        return ["estimated peak accelerator memory:", *rows, f"  {'total':<{width}}  {gib(self.total):>10}",
                (f"  (frozen weights on the accelerator: {models or 'none'}; activations are a model, see "
                 "docs/training.md)")]


def gib(size: int) -> str:
    """`3.20 GiB`, or `6.1 MiB` below one GiB (LoRA parts are megabytes)."""
    return f"{size / GIB:.2f} GiB" if size >= GIB else f"{size / 1024 ** 2:.1f} MiB"


def parse_size(text: str) -> int:
    """`8GB`, `12 GiB`, `8g`, `24000MB` -> bytes (GB and GiB both count 1024^3, as GPUs are sold)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([gm])?i?b?\s*", str(text).lower())
    if not match:
        raise ConfigError(f"--vram {text!r}: expected a size such as 8GB, 12GiB or 24000MB")
    scale = {"g": GIB, "m": 1024 ** 2, None: GIB}[match.group(2)]
    return int(float(match.group(1)) * scale)


# --- the base on the meta device ---------------------------------------------------------------------------

def meta_components(cfg):
    """The base's UNet, VAE and text encoder(s) built on the meta device from its config files."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = config_folder(parse_base(cfg.model.base), cfg.model.family)
    if folder is None:
        raise ConfigError(f"model.base {cfg.model.base!r}: its architecture is only known once it is loaded (a hub "
                          "id); give a family (sd1, sd2, sdxl), a model folder or a .safetensors file")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_json(folder / "unet" / "config.json"))
        vae = AutoencoderKL.from_config(_json(folder / "vae" / "config.json"))
        encoders = {name: _meta_text_encoder(folder / name) for name in ("text_encoder", "text_encoder_2")
                    if (folder / name / "config.json").is_file()}
    family = cfg.model.family or ("sdxl" if "text_encoder_2" in encoders else None)
    return SimpleNamespace(unet=unet, vae=vae, text_encoders=encoders, family=family)


def _json(path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the model config ({err})") from err


def _meta_text_encoder(folder):
    import transformers

    config = _json(folder / "config.json")
    architecture = (config.get("architectures") or ["CLIPTextModel"])[0]
    return getattr(transformers, architecture)(transformers.CLIPTextConfig.from_dict(config))


# --- the exact parts ----------------------------------------------------------------------------------------

def compute_dtype(cfg) -> torch.dtype:
    return _DTYPES.get(cfg.optim.mixed_precision, torch.float32)


def stored_bytes(model: nn.Module, dtype: torch.dtype, fp8_weights: bool) -> int:
    """Bytes of `model` after `.to(dtype)` (floating tensors only), Linear/Conv2d weights one byte each when
    `fp8_weights` (what sdlora.train.fp8 stores)."""
    total = 0
    for module in model.modules():
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if tensor is None:
                continue
            if fp8_weights and name == "weight" and fp8.convertible(module):
                size = 1
            else:
                size = dtype.itemsize if tensor.is_floating_point() else tensor.element_size()
            total += tensor.numel() * size
    return total


def parked(cfg, train_text: bool) -> bool:
    """Whether the VAE and text encoders leave the accelerator during the steps (sdlora.train.parking)."""
    latents = cfg.data.cache_latents != "off" and cfg.data.crop != "random"
    text = cfg.data.cache_text and not train_text and data_mod.captions_fixed(cfg.data)
    return latents and text


def frozen_models(cfg, components, train_text: bool) -> dict[str, int]:
    """Frozen bytes per model on the accelerator during the steps."""
    dtype = compute_dtype(cfg)
    models = {"unet": stored_bytes(components.unet, dtype, cfg.optim.fp8_base)}
    if not parked(cfg, train_text):
        models["vae"] = stored_bytes(components.vae, torch.float32, False)
        for name, encoder in components.text_encoders.items():
            models[name] = stored_bytes(encoder, dtype, cfg.optim.fp8_base and not train_text)
    if cfg.optim.fp8_base:  # one layer's weight upcast at a time
        layers = [m for m in components.unet.modules() if fp8.convertible(m)]
        models["fp8 upcast"] = max((m.weight.numel() * dtype.itemsize for m in layers), default=0)
    return models


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def optimizer_state_bytes(name: str, named: list[tuple[str, torch.Tensor]]) -> int:
    """What `optim.optimizer` allocates for the LoRA's (name, float32 tensor) pairs once it has stepped."""
    total = 0
    for param_name, p in named:
        n, size = p.numel(), p.element_size()
        if name in ("adamw", "adamw_schedulefree"):
            total += 2 * n * size + (4 if name == "adamw" else 0)  # torch's fused AdamW: a float32 step tensor
        elif name == "lion":
            total += n * size
        elif name == "prodigy":  # exp_avg, exp_avg_sq, s; the initial point p0 is one scalar for an all-zero
            zero = param_name.endswith("up.weight")  # tensor: the LoRA up matrices start at zero
            total += 3 * n * size + (size if zero else n * size)
        elif name == "adafactor":  # transformers' Adafactor without beta1: factored second moments, an RMS scalar
            shape = p.shape
            total += (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1] if len(shape) >= 2 else n) * size + 4
        elif name == "adamw8bit":  # bitsandbytes: 8-bit moments with a float32 absmax per 256 values
            total += 2 * n + 2 * 4 * -(-n // 256) if n >= 4096 else 2 * n * size
        else:
            raise ConfigError(f"optim.optimizer: no memory model for {name!r}")
    return total


# --- activations ------------------------------------------------------------------------------------------

@dataclass
class _Saved:
    outside: int = 0
    unit_inputs: int = 0
    units: dict = field(default_factory=lambda: defaultdict(int))
    largest: int = 0

    def activations(self, checkpointing: bool) -> int:
        inside = max(self.units.values(), default=0) + self.unit_inputs if checkpointing else \
            sum(self.units.values())
        return self.outside + inside + self.largest


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def saved_for_backward(models: list[nn.Module], run, exclude: list[torch.Tensor]) -> _Saved:
    """Bytes autograd keeps for backward while `run()` does a forward on the meta device, split by
    checkpointed block (see the module docstring)."""
    skip = {_storage(t) for t in exclude}
    seen: set[int] = set()
    saved, current = _Saved(), []

    def pack(t):
        key = _storage(t)
        if key not in skip and key not in seen and t.device.type == "meta":
            seen.add(key)
            size = t.untyped_storage().nbytes()
            saved.largest = max(saved.largest, size)
            if current:
                saved.units[current[-1]] += size
            else:
                saved.outside += size
        return t

    calls = itertools.count()

    def enter(module, args):
        current.append(next(calls))  # one entry per call: a block called twice is recomputed twice
        if args and isinstance(args[0], torch.Tensor):
            saved.unit_inputs += _tensor_bytes(args[0])

    def leave(module, args, output):
        current.pop()

    handles = [h for model in models for m in model.modules() if type(m).__name__ in _CHECKPOINTED
               for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
    finally:
        for handle in handles:
            handle.remove()
    return saved


def _unet_inputs(unet, batch: int, height: int, width: int, dtype: torch.dtype) -> dict:
    c = unet.config
    kwargs = {"sample": torch.zeros(batch, c.in_channels, height // 8, width // 8, dtype=dtype, device="meta"),
              "timestep": torch.zeros(batch, dtype=torch.long, device="meta"),
              "encoder_hidden_states": torch.zeros(batch, 77, c.cross_attention_dim, dtype=dtype, device="meta")}
    if c.addition_embed_type == "text_time":  # SDXL: pooled text and size ids
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, pooled, dtype=dtype, device="meta"),
                                       "time_ids": torch.zeros(batch, 6, dtype=dtype, device="meta")}
    return kwargs


def activation_bytes(cfg, components, network, train_text: bool) -> int:
    dtype, batch, res = compute_dtype(cfg), cfg.data.batch_size, cfg.data.resolution
    unet = components.unet
    models = [unet]
    exclude = [*network.parameters(), *unet.parameters()]

    def run():
        out = unet(**_unet_inputs(unet, batch, res, res, dtype)).sample
        if train_text:
            for encoder in components.text_encoders.values():
                tokens = min(77, encoder.config.max_position_embeddings)  # CLIP: 77; a tiny test encoder: fewer
                encoder(torch.zeros(batch, tokens, dtype=torch.long, device="meta"))
        return out

    if train_text:
        models += list(components.text_encoders.values())
        exclude += [p for encoder in components.text_encoders.values() for p in encoder.parameters()]
    saved = saved_for_backward(models, run, exclude)
    return saved.activations(cfg.optim.gradient_checkpointing)


# --- the estimate -----------------------------------------------------------------------------------------

def estimate(cfg, components=None) -> MemoryEstimate:
    """The estimate for a resolved `cfg` (data.resolution set). `components`: the base on the meta device
    (built from the base's configs when None); left unchanged."""
    if cfg.data.resolution is None:
        raise ConfigError("data.resolution: unset; resolve the config for its base first")
    components = components if components is not None else meta_components(cfg)
    dtype = compute_dtype(cfg)
    # nn.Module.to: diffusers' own `to` warns about fp32 modules, which a meta copy does not have
    work = SimpleNamespace(unet=nn.Module.to(copy.deepcopy(components.unet), dtype), vae=components.vae,
                           text_encoders={n: nn.Module.to(copy.deepcopy(e), dtype)
                                          for n, e in components.text_encoders.items()},
                           family=components.family)
    for model in (work.unet, *work.text_encoders.values()):
        model.requires_grad_(False)
    with torch.device("meta"):
        network = inject_network(cfg, work)
    try:
        train_text = cfg.lora.train_text_encoder and any(n.startswith("text_encoder") for n in network.names)
        params = list(network.parameters())
        lora = sum(_tensor_bytes(p) for p in params)
        gradients = max(map(_tensor_bytes, params), default=0) if cfg.optim.fused_backward else lora
        models = frozen_models(cfg, components, train_text)
        return MemoryEstimate(frozen=sum(models.values()), lora=lora, gradients=gradients,
                              optimizer=optimizer_state_bytes(cfg.optim.optimizer, list(network.named_parameters())),
                              activations=activation_bytes(cfg, work, network, train_text), models=models)
    finally:
        network.remove()


# --- what would fit ---------------------------------------------------------------------------------------

# cumulative steps toward less memory, cheapest in quality and speed first: (what, settings)
_LADDER = (
    ("gradient checkpointing", {"optim": {"gradient_checkpointing": True}}),
    ("frozen text encoder, cached latents and text", {"lora": {"train_text_encoder": False},
                                                      "data": {"cache_latents": "memory", "cache_text": True}}),
    ("bf16", {"optim": {"mixed_precision": "bf16"}}),
    ("fused backward", {"optim": {"fused_backward": True}}),
    ("fp8 base", {"optim": {"fp8_base": True}}),
)


@dataclass
class Fit:
    budget: int
    current: MemoryEstimate
    changes: list[str]                 # `--set key=value` strings that reach the fitting estimate
    fitted: MemoryEstimate | None      # None: nothing on the ladder fits
    presets: dict[str, MemoryEstimate]

    def lines(self) -> list[str]:
        head = f"budget {gib(self.budget)}:"
        if self.current.total <= self.budget:
            lines = [f"{head} fits with the current settings ({gib(self.current.total)})"]
        elif self.fitted is None:
            lines = [(f"{head} does not fit even with all memory options ({', '.join(self.changes)}); lower "
                      "data.resolution or data.batch_size")]
        else:
            lines = [f"{head} fits ({gib(self.fitted.total)}) with: " + " ".join(f"--set {c}" for c in self.changes)]
        for name, est in self.presets.items():
            verdict = "fits" if est.total <= self.budget else "does not fit"
            lines.append(f"  the {name} preset on these settings: {gib(est.total)} ({verdict})")
        return lines


def _with(cfg, settings: dict):
    return apply_dict(copy.deepcopy(cfg), settings, "memory estimate")


def _set_lines(settings: dict) -> list[str]:
    return [f"{section}.{key}={json.dumps(value)}" for section, values in settings.items()
            for key, value in values.items()]


def fit(cfg, budget: int, components=None, presets: tuple[str, ...] = ("low-memory",)) -> Fit:
    """The settings (cumulative, along `_LADDER`) at which `cfg` fits `budget` bytes, and the presets'
    estimates applied on top of `cfg`."""
    components = components if components is not None else meta_components(cfg)
    current = estimate(cfg, components)
    changes, fitted, work = [], None, cfg
    if current.total > budget:
        for _, settings in _LADDER:
            if settings.get("optim", {}).get("fused_backward") and work.optim.optimizer not in ("adamw", "adafactor"):
                continue
            step = {s: {k: v for k, v in vals.items() if getattr(getattr(work, s), k) != v}
                    for s, vals in settings.items()}
            step = {s: vals for s, vals in step.items() if vals}
            if not step:
                continue
            work = _with(work, step)
            changes += _set_lines(step)
            est = estimate(work, components)
            if est.total <= budget:
                fitted = est
                break
    named = {name: estimate(_with(cfg, read_yaml(preset_path(name))), components) for name in presets}
    return Fit(budget, current, changes, fitted if current.total > budget else current, named)
