"""What a `--base` value means, the same for every command, and what follows from the base without
loading its weights (native image size, default preset). Standard library only at module level.

A base is one of:
* ``embedded``: sdlora's small shipped model (a diffusers folder inside the package);
* a family name (``sd1``, ``sd2``, ``sdxl``; also ``sd15``, ``sd21``): the architecture built from the
  configs in ``sdlora/configs/models/`` (no weights; where only the architecture matters: verify, sizes);
* a diffusers model folder (``model_index.json``);
* a single-file checkpoint (``.safetensors``; pickles with allow_pickle);
* a Hugging Face hub id (``org/name``), only where weights are loaded.

`parse_base` classifies a value once (`sdlora.bases` lists and describes the bases found in model folders
for menus); `sdlora.models.load_components` (weights) and `check_target`
(verify's architecture) both start from it, so `--base embedded` works wherever `--base` is taken.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sdlora.arch.family import detect_checkpoint_family
from sdlora.arch.tables import resolve_base
from sdlora.configs import CONFIG_DIRS, models_root
from sdlora.embedded import weights_dir
from sdlora.errors import ConfigError, SdloraError
from sdlora.header import read_header
from sdlora.suffixes import PICKLE_SUFFIXES

EMBEDDED = "embedded"
FAMILY_ALIASES = {"sd1": "sd1", "sd15": "sd1", "sd1.5": "sd1", "sd2": "sd2", "sd21": "sd2", "sd2.1": "sd2",
                  "sdxl": "sdxl"}
# the base whose own recipe is a shipped preset of the same name (sdlora/configs/presets/<name>.yaml)
PRESET_FOR_BASE = {EMBEDDED: "embedded"}


@dataclass(frozen=True)
class BaseRef:
    """A classified `--base` value. `kind`: embedded, family, folder, file, hub."""

    kind: str
    value: str             # as given (a family name normalised: sd15 -> sd1)
    path: Path | None = None  # the folder or file (embedded: the shipped folder)


def parse_base(base: str | Path) -> BaseRef:
    """Classify a `--base` value without reading any weights.

    Raises:
        ConfigError: an empty value, or a path that does not exist and is no family name or hub id.
    """
    text = str(base).strip()
    if not text:
        raise ConfigError("model.base is empty; give 'embedded', sd1/sd2/sdxl, a model folder or a .safetensors file")
    if text == EMBEDDED:
        return BaseRef("embedded", EMBEDDED, weights_dir())
    if text.lower() in FAMILY_ALIASES:
        return BaseRef("family", FAMILY_ALIASES[text.lower()])
    path = Path(text).expanduser()
    if path.is_dir():
        return BaseRef("folder", text, path)
    if path.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES):
        if not path.is_file():
            raise ConfigError(f"model.base: {path} does not exist; give an existing checkpoint file")
        return BaseRef("file", text, path)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return BaseRef("hub", text)
    raise ConfigError(f"model.base: {text!r} is not 'embedded', a family (sd1, sd2, sdxl), a diffusers folder, "
                      "a .safetensors checkpoint or a hub id (org/name)")


def config_folder(ref: BaseRef, family: str | None = None) -> Path | None:
    """The diffusers config folder describing this base's architecture (no weights needed), or None when
    only loading it could tell (a hub id, a pickle of unknown family)."""
    if ref.kind in ("embedded", "folder"):
        return ref.path
    if ref.kind == "family":
        return models_root() / CONFIG_DIRS[ref.value]
    if ref.kind == "file":
        custom = single_file_config(ref.path)
        if custom is not None:
            return custom
        layout = family or _file_family(ref.path)
        return models_root() / CONFIG_DIRS[layout] if layout else None
    return None


def single_file_config(path: Path, config=None) -> Path | None:
    """The model-config folder for a single file of no standard size: `config` when given, else a
    `<stem>.config/` folder beside the file (what `sdlora bake` writes for such models), else None (the
    shipped sdlora/configs/models/ folder of the detected family is used)."""
    if config is not None:
        folder = Path(config).expanduser()
        if not (folder / "model_index.json").is_file():
            raise ConfigError(f"model config {folder}: not a diffusers config folder (no model_index.json); give "
                              "a folder saved by save_pretrained (weights are not needed)")
        return folder
    beside = path.with_suffix(".config")
    return beside if (beside / "model_index.json").is_file() else None


def _file_family(path: Path) -> str | None:
    """sd1/sd2/sdxl of a .safetensors checkpoint from its header's shapes; None when it cannot be told
    (the loader reports what is wrong with the file, in its own words)."""
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        header = read_header(path)
    except (SdloraError, OSError):
        return None
    return detect_checkpoint_family({key: info.shape for key, info in header.tensors.items()})


def size_from_configs(unet_config, vae_config) -> int:
    """UNet sample_size x the VAE's scale factor (2 ** (VAE blocks - 1)), from the two configs (dicts or
    diffusers' FrozenDict)."""
    size = unet_config["sample_size"]
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) * 2 ** (len(vae_config["block_out_channels"]) - 1)


def native_resolution_of_folder(folder: Path) -> int | None:
    """`size_from_configs` of a diffusers folder's config files; None when they are missing or unreadable."""
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        return size_from_configs(unet, vae)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def native_resolution(base: str | Path, family: str | None = None) -> int | None:
    """The image side the base was trained at (embedded 32, SD1 512, SD2-v 768, SDXL 1024), read from its
    configs without loading weights; None when that needs the weights (a hub id)."""
    folder = config_folder(parse_base(base), family)
    return native_resolution_of_folder(folder) if folder is not None else None


def native_resolution_of(model) -> int:
    """The same, from a loaded model (`Components` or a diffusers pipeline: its unet and vae configs)."""
    return size_from_configs(model.unet.config, model.vae.config)


def default_preset(base: str | Path) -> str | None:
    """The shipped preset that is this base's working recipe (used when no preset or config is given)."""
    return PRESET_FOR_BASE.get(str(base).strip())


def check_target(base: str | Path):
    """What `sdlora verify` checks a LoRA against: a family name (str) or a module table.

    `embedded` is its shipped diffusers folder; the rest as `sdlora.arch.tables.resolve_base`.
    """
    ref = parse_base(base) if str(base).strip() == EMBEDDED else None
    return resolve_base(ref.path if ref is not None else base)
