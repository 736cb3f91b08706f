"""Base-model loading: `load_components(base)` -> `Components`, `load_base(base)` -> (pipeline, name). The
only module that calls `from_pretrained` / `from_single_file`. Imports diffusers and transformers lazily (inside functions).

A base is one of:
* ``"embedded"``: sdlora's small shipped SD1-architecture model (`sdlora.embedded.weights_dir()`);
* a diffusers folder (``model_index.json`` with unet/, vae/, text_encoder/, tokenizer/, scheduler/);
* a single-file checkpoint of SD1.x, SD2.x or SDXL (``.safetensors``), loaded offline with the model
  configs in ``sdlora/configs/models/`` and the CLIP tokenizer files in ``sdlora/configs/tokenizers/``; a model of another
  size (a baked embedded model, a test model) brings its own config folder: ``config=`` or ``<stem>.config/``
  beside the file (which ``sdlora bake`` writes);
* a pickle checkpoint (``.ckpt/.pt/.pth/.bin``), or a diffusers folder whose weights are only pickles:
  refused unless ``allow_pickle=True``; diffusers then reads it with ``torch.load(weights_only=True)``,
  which cannot run code from the file;
* a Hugging Face hub id (``org/name``) when online.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sdlora.arch.family import unet_config_family
from sdlora.base.ref import parse_base, single_file_config
from sdlora.configs import CONFIG_DIRS, models_root, tokenizers_root
from sdlora.errors import CompatibilityError, ConfigError, FormatError
from sdlora.suffixes import PICKLE_SUFFIXES

log = logging.getLogger(__name__)


@dataclass
class Components:
    """The parts of a Stable Diffusion pipeline the trainer uses."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    family: str | None = None   # "sd1" | "sd2" | "sdxl"
    name: str = ""              # base name for metadata (ss_sd_model_name)

    @property
    def text_encoders(self) -> dict[str, Any]:
        found = {"text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2}
        return {k: v for k, v in found.items() if v is not None}

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None



def checkpoint_layout(keys) -> str:
    """The key layout (sd1/sd2/sdxl prefixes) of an original (LDM/SGM) single-file checkpoint, from its key
    names: which pipeline class and per-component prefixes load it. Not its family: a model of another size
    in SD1's layout is "sd1" here (its family comes from its shapes, `sdlora.arch.family`)."""
    keys = list(keys)
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys) or any(
            k.startswith("model.diffusion_model.") for k in keys):
        return "sd1"
    raise FormatError("not a Stable Diffusion checkpoint: no model.diffusion_model.* / cond_stage_model.* "
                      "/ conditioner.* keys")


def _from_pipeline(pipe, name: str, family: str | None = None) -> Components:
    return Components(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                      scheduler=pipe.scheduler, text_encoder_2=getattr(pipe, "text_encoder_2", None),
                      tokenizer_2=getattr(pipe, "tokenizer_2", None),
                      family=family or unet_config_family(pipe.unet.config), name=name)


def _pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _pickle_message(what: str) -> str:
    return (f"{what} can run code when loaded; convert it to .safetensors, or pass --allow-pickle (sdlora "
            "train, generate, bake, extract and webui take it; model.allow_pickle: true in a training config) "
            "to load it with torch.load(weights_only=True)")


def pickle_only_components(folder: Path) -> list[str]:
    """The component subfolders of a diffusers folder whose weights exist only as pickles (.bin, .pt, ...):
    diffusers falls back to those when no .safetensors is there."""
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        suffixes = {f.suffix.lower() for f in sub.iterdir() if f.is_file()}
        if ".safetensors" not in suffixes and suffixes & set(PICKLE_SUFFIXES):
            found.append(sub.name)
    return found


def _load_folder(folder: Path, dtype, allow_pickle: bool = False) -> Components:
    from diffusers import DiffusionPipeline

    if not (folder / "model_index.json").is_file():
        raise FormatError(f"{folder}: not a diffusers model folder (no model_index.json)")
    pickled = pickle_only_components(folder)
    if pickled and not allow_pickle:
        raise ConfigError(_pickle_message(f"{folder}: the weights of {', '.join(pickled)} are pickle files, which"))
    try:
        pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, local_files_only=True,
                                                 safety_checker=None, requires_safety_checker=False)
    except Exception as err:  # diffusers raises OSError, ValueError, EnvironmentError... for broken folders
        raise FormatError(f"{folder}: cannot load this diffusers model folder ({type(err).__name__}: {err})") from err
    components = _from_pipeline(pipe, folder.name)
    _record_sources(components, folder=folder)
    return components


def _record_sources(components: Components, folder: Path | None = None, checkpoint: Path | None = None,
                    layout: str | None = None) -> None:
    """Note which file each component's weights came from, with the file's identity now (LoraStack then
    reads W0 back from it instead of keeping a copy; sdlora.weight_source)."""
    from sdlora.weight_source import record_folder, record_single_file  # torch: not on quick paths

    models = {name: model for name, model in components.text_encoders.items()}
    models["unet"] = components.unet
    if checkpoint is not None:
        record_single_file(models, checkpoint, layout)
        return
    for name, model in models.items():
        record_folder(model, folder / name)


def _checkpoint_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except Exception as err:  # safetensors raises several types for damaged headers
        raise FormatError(f"{path}: not a readable .safetensors file ({err})") from err


# where each component's weights live in an original (LDM/SGM) single-file checkpoint
_CHECKPOINT_PREFIXES = {
    "sd1": {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model."},
    "sd2": {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model."},
    "sdxl": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
             "text_encoder": "conditioner.embedders.0.", "text_encoder_2": "conditioner.embedders.1."},
}


def _checkpoint_numel(path: Path) -> dict[str, int]:
    """{key: number of elements} from the safetensors header (no tensor is read)."""
    from safetensors import safe_open

    sizes = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open has keys(), no __iter__
            numel = 1
            for dim in handle.get_slice(key).get_shape():
                numel *= dim
            sizes[key] = numel
    return sizes


def check_coverage(path: Path, family: str, components: Components) -> None:
    """Refuse a checkpoint that lacks most of a component's weights.

    diffusers' single-file loader leaves weights it cannot find at their random initial values with only a
    log line; training on such a model wastes hours, so the file's tensor sizes per component are compared
    with the model's parameter count first.
    """
    sizes = _checkpoint_numel(path)
    for name, prefix in _CHECKPOINT_PREFIXES[family].items():
        model = getattr(components, name)
        wanted = sum(p.numel() for p in model.parameters())
        found = sum(n for k, n in sizes.items() if k.startswith(prefix))
        if found < 0.99 * wanted:
            raise CompatibilityError(
                f"{path}: holds {found:,} {name} weights under '{prefix}*' but a {family} {name} has {wanted:,}; "
                "the file is incomplete or not a full checkpoint (a LoRA, a pruned or a different model?)")


def _tokenizers(family: str) -> dict[str, Any]:
    from transformers import CLIPTokenizer

    root = tokenizers_root()
    clip = CLIPTokenizer.from_pretrained(root / "clip-vit-large-patch14", local_files_only=True)
    if family == "sd1":
        return {"tokenizer": clip}
    open_clip = CLIPTokenizer.from_pretrained(root / "open-clip", local_files_only=True)
    if family == "sd2":
        return {"tokenizer": open_clip}
    return {"tokenizer": clip, "tokenizer_2": open_clip}


def _config_family(folder: Path) -> str:
    name = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    return "sdxl" if "XL" in name else "sd1"


def load_single_file(path: Path, family: str | None = None, dtype=None, config=None) -> Components:
    """A single-file SD1.x/SD2.x/SDXL checkpoint, loaded offline with the shipped configs (or `config`, see
    `single_file_config`, for models of other sizes)."""
    custom = single_file_config(path, config)
    if path.suffix.lower() == ".safetensors":
        layout = family or checkpoint_layout(_checkpoint_keys(path))
    elif family is None and custom is None:
        raise ConfigError(f"{path}: set model.family (sd1, sd2 or sdxl) for a pickle checkpoint")
    else:
        layout = family or _config_family(custom)
    folder = custom or models_root() / CONFIG_DIRS[layout]
    if not (folder / "model_index.json").is_file():
        raise ConfigError(f"{folder}: model configs for {layout} are missing; reinstall sdlora from source")
    # a custom config folder brings its own tokenizers (save_pretrained writes them); the shipped ones are CLIP's
    tokenizers = {} if custom is not None and (custom / "tokenizer").is_dir() else _tokenizers(layout)
    try:
        pipe = _pipeline_class(layout).from_single_file(
            str(path), config=str(folder), local_files_only=True, torch_dtype=dtype, safety_checker=None,
            requires_safety_checker=False, **tokenizers)
    except Exception as err:  # diffusers raises many types here (SingleFileComponentError, OSError, ...)
        raise CompatibilityError(f"{path}: cannot load as a {layout} checkpoint with the configs in {folder} "
                                 f"({err})") from err
    # with its own configs the model may be of no standard size: name its family as a folder's would be
    components = _from_pipeline(pipe, path.name, family if custom is not None else layout)
    if path.suffix.lower() == ".safetensors":
        check_coverage(path, layout, components)
        _record_sources(components, checkpoint=path, layout=layout)
    return components


def _load_hub(repo_id: str, dtype) -> Components:
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(repo_id, torch_dtype=dtype, safety_checker=None,
                                                 requires_safety_checker=False)
    except Exception as err:  # hub errors come in many types (offline, 404, gated)
        raise ConfigError(f"model.base: {repo_id!r} is not a local file or folder and could not be fetched "
                          f"from the Hugging Face hub ({type(err).__name__}: {err})") from err
    return _from_pipeline(pipe, repo_id)


def load_components(base: str, *, family: str | None = None, allow_pickle: bool = False, dtype=None,
                    config=None) -> Components:
    """Load a base model for training.

    Args:
        base: "embedded", a diffusers folder, a single-file checkpoint, or a hub id.
        family: "sd1"/"sd2"/"sdxl" when a single file's family cannot be detected (pickles).
        allow_pickle: allow .ckpt/.pt/.pth/.bin files and diffusers folders of them (read with
            torch.load(weights_only=True)).
        dtype: torch dtype for the weights (default float32: most downloaded models are stored in fp16, which a
            CPU cannot compute with, and training and the LoRA stack work in float32 anyway).
        config: for a single file of no standard SD size: a diffusers config folder (model_index.json and
            per-component configs, no weights needed). Without it a `<stem>.config/` folder beside the file
            is used when present, else the shipped sdlora/configs/models/ of the detected family.

    Raises:
        ConfigError: unknown base, pickle without allow_pickle, missing configs.
        FormatError / CompatibilityError: the file is not a loadable SD checkpoint.
    """
    if config is not None and Path(base).suffix.lower() not in (*PICKLE_SUFFIXES, ".safetensors"):
        raise ConfigError(f"model config {config}: only used for single-file checkpoints, and {base!r} is not one")
    path = Path(str(base)).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:  # said before "does not exist"
        raise ConfigError(_pickle_message(f"{path}: pickle checkpoints"))
    ref = parse_base(base)  # one meaning of a base for every command (sdlora.base.ref)
    if dtype is None:
        import torch

        dtype = torch.float32
    if ref.kind == "embedded":
        components = _load_folder(ref.path, dtype)
        components.name = "embedded"  # the folder is named "weights", which tells no reader which model it was
        return components
    if ref.kind == "folder":
        return _load_folder(ref.path, dtype, allow_pickle)
    if ref.kind == "file":
        return load_single_file(ref.path, family, dtype, config)
    if ref.kind == "hub":
        return _load_hub(ref.value, dtype)
    raise ConfigError(f"model.base: {base!r} names an architecture ({ref.value}) but no weights; give 'embedded', "
                      "a diffusers folder, a .safetensors checkpoint or a hub id")


def pipeline_from(components):
    """A diffusers pipeline over loaded components (`Components`, a dict or a pipeline, returned as is)."""
    if hasattr(components, "save_pretrained") and hasattr(components, "unet"):
        return components
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    parts = vars(components) if not isinstance(components, dict) else components
    parts = SimpleNamespace(**{k: parts.get(k) for k in (
        "unet", "vae", "text_encoder", "tokenizer", "scheduler", "text_encoder_2", "tokenizer_2")})
    missing = [k for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(parts, k) is None]
    if missing:
        raise ConfigError(f"cannot build a pipeline: missing components {missing}")
    if parts.text_encoder_2 is not None:
        return StableDiffusionXLPipeline(**vars(parts))
    kwargs = {k: v for k, v in vars(parts).items() if k not in ("text_encoder_2", "tokenizer_2")}
    return StableDiffusionPipeline(**kwargs, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def load_base(base: str | None = None, allow_pickle: bool = False):
    """(pipeline, model name) for `base`; None means sdlora's embedded model. `allow_pickle` lets a
    .ckpt/.pt/.pth/.bin base be read (see `load_components`)."""
    name = base or "embedded"
    components = load_components(name, allow_pickle=allow_pickle)
    label = getattr(components, "name", "") or Path(str(name)).stem
    return pipeline_from(components), label
