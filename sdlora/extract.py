"""Model-level tools: extract a LoRA from two checkpoints, bake a stack into a base model.

Depends on torch, safetensors and sdlora (tools, stack, models, naming); diffusers only inside bake.
* extract (docs/formats.md §4, sd-scripts extract_lora_from_models.py): per targeted Linear / Conv2d,
  ΔW = tuned - base, SVD (randomized with oversampling for a large one, sdlora.lowrank), keep `rank`
  (alpha = rank, so scale 1). Weights are read one module at a
  time, so two diffusers folders or UNet files are never fully in memory.
* bake: a LoraStack patches the base in place, then the pipeline is written as a diffusers folder
  (safetensors) or, for an `out` ending in `.safetensors`, as one original-layout ("single-file", A1111 /
  ComfyUI) checkpoint through sdlora.arch.ldm_keys; atomically either way, and the in-memory model is restored.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from sdlora.arch.components import canonical_name, components_of
from sdlora.arch.family import unet_config_family
from sdlora.arch.ldm_keys import models_to_ldm
from sdlora.atomic import atomic_folder, atomic_path
from sdlora.base.load import load_components, pipeline_from
from sdlora.configs import CONFIG_DIRS, models_root
from sdlora.errors import ConfigError, FormatError, Interrupted
from sdlora.generate import short_hash
from sdlora.lowrank import choose_rank, svd_of_matrix
from sdlora.progress import ProgressCallback, report
from sdlora.stack import LoraStack
from sdlora.tools import ModuleResult, ToolResult, rank_metadata, rebuild_module
from sdlora.weights import LoraState

UNET_LEAVES = ("proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
TE_LEAVES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
CONV_LEAVES = ("conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv")
FOLDER_FILES = {
    "unet": ("unet/diffusion_pytorch_model.safetensors",),
    "text_encoder": ("text_encoder/model.safetensors",),
    "text_encoder_2": ("text_encoder_2/model.safetensors",),
}


def is_target(canonical: str, ndim: int, kernel: int, with_convs: bool) -> bool:
    """sd-scripts' default LoRA targets (+ 3x3 ResNet/sampler convs with `with_convs`)."""
    component, _, path = canonical.partition(".")
    if component == "unet":
        if ".attentions." in canonical and path.endswith(UNET_LEAVES):
            return ndim == 2 or kernel == 1
        return with_convs and ndim == 4 and kernel > 1 and path.endswith(CONV_LEAVES)
    return ndim == 2 and path.endswith(TE_LEAVES) and ".layers." in path


# ----- weight sources --------------------------------------------------------------------------


class _Weights:
    """{canonical module name: weight} for a model source, read lazily (one module at a time)."""

    def __init__(self, source, stack: ExitStack, allow_pickle: bool = False):
        self.readers: dict[str, tuple] = {}  # canonical -> (reader, key) or (tensor, None)
        self.allow_pickle = allow_pickle
        if isinstance(source, str | os.PathLike):
            self._open_path(Path(source), stack)
        else:
            self._from_modules(source)

    def _open_path(self, path: Path, stack: ExitStack) -> None:
        if path.is_dir():
            files = {c: path / rel for c, (rel,) in FOLDER_FILES.items() if (path / rel).is_file()}
            if not files:
                raise FormatError(f"{path}: no unet/diffusion_pytorch_model.safetensors in this folder")
        elif path.suffix == ".safetensors" and path.is_file():
            files = {"unet": path}
        else:
            self._from_modules(load_components(str(path), allow_pickle=self.allow_pickle))
            return
        for component, file in files.items():
            reader = stack.enter_context(_open_safetensors(file))
            keys = list(reader.keys())
            if component == "unet" and any(k.startswith("model.diffusion_model.") for k in keys):
                self._from_modules(load_components(str(path), allow_pickle=self.allow_pickle))  # an original checkpoint: convert it
                return
            self._add_keys(component, reader, keys)

    def _add_keys(self, component: str, reader, keys) -> None:
        for key in keys:
            if key.endswith(".weight"):
                self.readers[canonical_name(component, key[: -len(".weight")])] = (reader, key)

    def _from_modules(self, model) -> None:
        for component, module in components_of(model).items():
            for path, child in module.named_modules():
                if isinstance(child, torch.nn.Linear | torch.nn.Conv2d):
                    self.readers[canonical_name(component, path)] = (child.weight, None)

    def get(self, name: str) -> torch.Tensor:
        reader, key = self.readers[name]
        return reader.detach() if key is None else reader.get_tensor(key)

    def shape(self, name: str) -> tuple[int, ...]:
        reader, key = self.readers[name]
        return tuple(reader.shape) if key is None else tuple(reader.get_slice(key).get_shape())


def _open_safetensors(file: Path):
    """safe_open, with a damaged file or a renamed pickle refused as a FormatError naming the file."""
    try:
        return safe_open(str(file), framework="pt")
    except SafetensorError as err:
        raise FormatError(f"{file}: not a readable .safetensors file ({err}); a pickle checkpoint renamed "
                          ".safetensors is refused too: give the real file name (and --allow-pickle)") from err


# ----- extract ---------------------------------------------------------------------------------


def extract(base, tuned, rank: int, conv_rank: int | None = None, min_diff: float = 1e-7,  # noqa: PLR0913
            on_progress: ProgressCallback | None = None, *, allow_pickle: bool = False,
            should_stop: Callable[[], bool] | None = None) -> ToolResult:
    """A LoRA that turns `base` into (approximately) `tuned`, by SVD of each targeted weight's difference.

    Args:
        base, tuned: diffusers folders, UNet `.safetensors` files (diffusers names), single-file
            checkpoints or "embedded" (through sdlora.base.load), or in-memory components/pipelines.
        rank: rank for Linear and 1x1 modules; conv_rank: rank for 3x3 convs (None: convs skipped).
        min_diff: modules whose largest |ΔW| is at most min_diff · max|W| are left out (unchanged).
        allow_pickle: let a .ckpt/.pt/.pth/.bin model be read (see `sdlora.base.load.load_components`).
        should_stop: asked before each module; True raises Interrupted.

    Returns:
        ToolResult with the LoRA (alpha = rank) and per-module energy kept.
    """
    for value, what in ((rank, "rank"), (conv_rank, "conv_rank")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{what} must be a whole number >= 1, got {value!r}")
    with ExitStack() as stack:
        before, after = _Weights(base, stack, allow_pickle), _Weights(tuned, stack, allow_pickle)
        names = _extract_targets(before, after, conv_rank is not None)
        lora = LoraState(format="sdlora", metadata={"ss_training_comment": "extracted by sdlora"})
        result = ToolResult(lora)
        for done, name in enumerate(names, 1):
            if should_stop is not None and should_stop():
                raise Interrupted(f"stopped after {done - 1} of {len(names)} modules; nothing was written")
            _extract_one(name, (before, after), (rank, conv_rank), min_diff, result)
            report(on_progress, done, len(names), name)
    if not lora.modules:
        raise ConfigError("the two models have the same weights in every targeted module; nothing to extract")
    lora.metadata.update(rank_metadata(lora))
    return result


def _extract_targets(before: _Weights, after: _Weights, with_convs: bool) -> list[str]:
    names = []
    for name in sorted(before.readers):
        if name not in after.readers:
            continue
        shape = before.shape(name)
        if is_target(name, len(shape), shape[-1] if len(shape) == 4 else 1, with_convs):
            if after.shape(name) != shape:
                raise FormatError(f"{name}: base {shape} and tuned {after.shape(name)} differ; not the same architecture")
            names.append(name)
    if not names:
        raise FormatError("no common Linear/Conv2d weights found between base and tuned; are both SD models?")
    return names


def _extract_one(name, models, ranks, min_diff, result) -> None:
    (before, after), (rank, conv_rank) = models, ranks
    w0 = before.get(name).float()
    diff = after.get(name).float() - w0
    if diff.abs().max() <= min_diff * max(float(w0.abs().max()), 1e-12):
        return
    target = conv_rank if diff.dim() == 4 and diff.shape[-1] > 1 else rank
    svd = svd_of_matrix(diff.reshape(diff.shape[0], -1), target)  # no structure: randomized when large
    keep, kept = choose_rank(svd, target, None)
    result.lora.modules[name] = rebuild_module(svd, keep, tuple(diff.shape), float(keep))
    result.modules[name] = ModuleResult(None, keep, kept, svd.randomized)


# ----- bake ------------------------------------------------------------------------------------


def bake(base, loras, out, on_progress: ProgressCallback | None = None, family: str | None = None,  # noqa: PLR0913
         dtype: str | None = None, *, allow_pickle: bool = False, force: bool = False) -> Path:
    """Merge LoRAs into a base model and write it as a diffusers folder or one single-file checkpoint.

    Args:
        base: what `sdlora.base.load.load_components` takes ("embedded", a folder, a checkpoint), or
            loaded components / a pipeline (restored to their original weights afterwards).
        loras: [(path or LoraState, strength), ...]; a strength is a number or a `sdlora.strength.Strength`
            (text-encoder / UNet / block strengths).
        out: a new folder (diffusers layout), or a new `.safetensors` file: one checkpoint with the original
            (LDM/SGM) keys A1111, ComfyUI and diffusers' `from_single_file` read, with metadata naming the
            LoRAs and strengths. Written to a temporary name first, then renamed.
        family: "sd1"/"sd2"/"sdxl" layout of a single file when the base's family is unknown (default: from
            the base; models of no standard size, like the embedded one, are written in the SD1/SDXL layout
            and get a `<name>.config/` folder beside the file, which `load_components` uses to read it back).
        dtype: "fp16", "bf16" or "fp32" for a single file's weights (default: the model's own dtype).
        allow_pickle: let a .ckpt/.pt/.pth/.bin base be read (see `sdlora.base.load.load_components`).
        force: overwrite an existing `out` (and its `.config/` folder), once the new one is written.
    """
    out = Path(out)
    single = out.suffix.lower() == ".safetensors"
    if out.exists() and (not force or single != out.is_file()):
        kind = "file name" if single else "folder name"
        hint = "" if force else " (or pass --force to overwrite it)"
        raise ConfigError(f"{out}: already exists; give a new {kind} for the baked model{hint}")
    if single and family not in (None, "sd1", "sd2", "sdxl"):
        raise ConfigError(f"family {family!r}: a single-file checkpoint is written as sd1, sd2 or sdxl")
    if dtype is not None and (not single or dtype not in SAVE_DTYPES):
        raise ConfigError(f"dtype {dtype!r}: choose one of {', '.join(SAVE_DTYPES)}, for a .safetensors output "
                          "(a diffusers folder keeps the model's dtype)")
    components = load_components(base, allow_pickle=allow_pickle) if isinstance(base, str | os.PathLike) else base
    stack = LoraStack(components, exact=True, on_progress=on_progress)
    try:
        with stack.batch():
            for lora, strength in loras:
                stack.add(lora, strength)
        if single:
            _save_single_file(components, out, _bake_record(stack), family, dtype, force)
        else:
            _save_pipeline(components, out, _bake_record(stack), force)
    finally:
        stack.clear()
    return out


def _bake_record(stack) -> dict:
    return {"baked_by": "sdlora", "loras": [
        {"name": e.name, "strength": e.strength.overall, "te_strength": e.strength.te, "unet_strength": e.strength.unet,
         "path": e.lora.path, "hash": short_hash(e.lora.path)}
        for e in stack.entries]}


def _save_pipeline(components, out: Path, record: dict, replace: bool = False) -> None:
    pipe = pipeline_from(components)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out, replace=replace) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "sdlora_bake.json").write_text(json.dumps(record, indent=1))


def _part(components, name: str):
    if isinstance(components, dict):
        return components.get(name)
    return getattr(components, name, None)


def _bake_family(components, family: str | None) -> tuple[str, bool]:
    """(layout family, whether the model has the size of sdlora's shipped configs for it) of the bake."""
    known = getattr(components, "family", None) or unet_config_family(_part(components, "unet").config)
    if family and known and family != known:
        raise ConfigError(f"family {family!r} given, but the base model is {known}")
    fallback = "sdxl" if _part(components, "text_encoder_2") is not None else "sd1"
    return family or known or fallback, known is not None and _shipped_size(components, known)


def _shipped_size(components, family: str) -> bool:
    """Whether every component has the parameter shapes of the shipped configs for `family` (then
    `load_components` reads the file without a config folder; a tiny test model, an inpainting UNet or a
    pruned text encoder does not). The reference models are built on the meta device (no memory)."""
    from accelerate import init_empty_weights  # accelerate only for a single-file bake

    folder = models_root() / CONFIG_DIRS[family]
    for name in ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else []):
        model, path = _part(components, name), folder / name
        if model is None or not (path / "config.json").is_file():
            return False
        cls = type(model)
        with init_empty_weights():
            if hasattr(cls, "load_config"):  # diffusers models
                reference = cls.from_config(cls.load_config(path))
            else:  # transformers text encoders
                reference = cls(type(model.config).from_pretrained(path))
        if _shapes(reference) != _shapes(model):
            return False
    return True


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _save_single_file(components, out: Path, record: dict, family: str | None, dtype: str | None,
                      replace: bool = False) -> None:
    """One original-layout checkpoint (plus `<stem>.config/` for models of no standard size), atomically."""
    missing = [k for k in ("unet", "vae", "text_encoder") if _part(components, k) is None]
    if missing:
        raise ConfigError(f"{out}: a single-file checkpoint needs the whole model; missing components {missing}")
    family, standard = _bake_family(components, family)
    state = models_to_ldm(_part(components, "unet"), _part(components, "vae"), _part(components, "text_encoder"),
                          _part(components, "text_encoder_2"), family=family)
    if dtype is not None:  # cast after merging: the merge itself ran in float32
        state = {k: v.to(SAVE_DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()}
    record = {**record, "family": family, "dtype": dtype or "as loaded"}
    metadata = {"format": "pt", "sdlora_bake": json.dumps(record), "modelspec.title": out.stem}
    out.parent.mkdir(parents=True, exist_ok=True)
    configs = None if standard else out.with_suffix(".config")
    if configs is not None and replace:
        _write_safetensors(state, metadata, out)  # the file first: a failure leaves the old file and configs
        _save_configs(components, configs, replace=True)
        return
    if configs is not None:
        _save_configs(components, configs)
    try:
        _write_safetensors(state, metadata, out)
    except BaseException:
        if configs is not None:  # written just above for this file: a retry must not find it
            shutil.rmtree(configs, ignore_errors=True)
        raise


def _write_safetensors(state: dict, metadata: dict[str, str], out: Path) -> None:
    """Streamed to a temporary file in the same folder, fsynced, renamed (no second copy in memory)."""
    from safetensors.torch import save_file  # looked up per call, so a test can make the write fail

    with atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata=metadata)


def _save_configs(components, folder: Path, replace: bool = False) -> None:
    """The pipeline's configs and tokenizers without weights (what `from_single_file(config=...)` needs)."""
    if folder.exists() and not replace:
        raise ConfigError(f"{folder}: already exists; remove it or choose another name for the baked file")
    pipe = pipeline_from(components)
    with atomic_folder(folder, replace=replace) as tmp:
        pipe.save_config(tmp)  # model_index.json
        for name, part in pipe.components.items():
            if part is None:
                continue
            if hasattr(part, "save_config"):  # diffusers models and schedulers
                part.save_config(tmp / name)
            elif hasattr(part, "config") and hasattr(part.config, "save_pretrained"):  # transformers models
                part.config.save_pretrained(tmp / name)
            elif hasattr(part, "save_pretrained"):  # tokenizers
                part.save_pretrained(tmp / name)
