"""Module tables: {canonical module name: ModuleInfo(shape, layer)} for a family, a live model or a config folder.

Importing this module is cheap: the standard library only. torch, diffusers and transformers are imported
inside `table_for_model` and `build_table_from_config_dir`, never at module level, so that `sdlora inspect`
stays fast. The shipped tables in `sdlora/data/modules_<family>.json` (and `modules_embedded.json`) are generated
by `scripts/gen_module_tables.py` from `sdlora/configs/models/<name>/` (and the embedded model's folder); a test
checks they equal a fresh meta build.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from sdlora.arch.components import COMPONENTS, canonical_name, model_components
from sdlora.arch.family import ALL_FAMILIES, check_family
from sdlora.configs import CONFIG_DIRS, models_root
from sdlora.errors import ConfigError

log = logging.getLogger(__name__)

# Path segments of adapter layers injected by PEFT or a LoRA trainer; they are not base modules.
_ADAPTER_SEGMENTS = frozenset(
    {
        "lora_A",
        "lora_B",
        "lora_embedding_A",
        "lora_embedding_B",
        "lora_magnitude_vector",
        "lora_down",
        "lora_up",
        "lora_mid",
        "lora_dropout",
    }
)


@dataclass(frozen=True)
class ModuleInfo:
    """One LoRA-targetable base layer.

    Attributes:
        shape: the base weight shape, `(out, in)` for a Linear, `(out, in, kh, kw)` for a Conv2d.
        layer: "linear" or "conv".
    """

    shape: tuple[int, ...]
    layer: str


class ModuleTable(Mapping):
    """A read-only mapping canonical module name -> ModuleInfo, plus the base `family` (or None)."""

    def __init__(self, modules: Mapping[str, ModuleInfo], family: str | None = None):
        self._modules = dict(sorted(modules.items()))
        self.family = family

    def __getitem__(self, name: str) -> ModuleInfo:
        return self._modules[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def __repr__(self) -> str:
        return f"ModuleTable(family={self.family!r}, {len(self)} modules, components={self.components()})"

    def components(self) -> list[str]:
        """Components present, in the order of COMPONENTS (then any others, sorted)."""
        present = {name.split(".", 1)[0] for name in self._modules}
        return [c for c in COMPONENTS if c in present] + sorted(present - set(COMPONENTS))

    def component(self, component: str) -> ModuleTable:
        """The sub-table of one component (same family)."""
        prefix = component + "."
        return ModuleTable({k: v for k, v in self._modules.items() if k.startswith(prefix)}, self.family)

    @classmethod
    def from_json(cls, data: Mapping) -> ModuleTable:
        modules = {name: ModuleInfo(tuple(shape), layer) for name, (layer, shape) in data["modules"].items()}
        return cls(modules, data.get("family"))


@cache
def family_table(family: str) -> ModuleTable:
    """The shipped module table of `family` ("sd1", "sd2", "sdxl" or "flux"): unet or transformer, text
    encoder(s). Cached.

    Raises:
        ConfigError: unknown family name.
    """
    check_family(family)
    return _shipped_table(family)


@cache
def embedded_table() -> ModuleTable:
    """The embedded model's shipped module table (sdlora/data/modules_embedded.json, written by
    scripts/gen_module_tables.py from sdlora/embedded/weights/), so that `verify --base embedded` needs no
    diffusers. Cached."""
    return _shipped_table("embedded")


def _shipped_table(name: str) -> ModuleTable:
    text = resources.files("sdlora.data").joinpath(f"modules_{name}.json").read_text(encoding="utf-8")
    return ModuleTable.from_json(json.loads(text))


def config_dir(family: str) -> Path:
    """The shipped diffusers config folder (no weights) of `family`, e.g. sdlora/configs/models/sd15."""
    check_family(family)
    path = models_root() / CONFIG_DIRS[family]
    if not (path / "model_index.json").is_file():
        raise ConfigError(
            f"{path}: the shipped model configs are missing; reinstall sdlora from its repository"
        )
    return path


# modules a family's variants may lack: FLUX.1 schnell has no guidance embedder (the shipped table is dev's)
_OPTIONAL_MODULES = {"flux": "transformer.time_text_embed.guidance_embedder."}


def match_family(table: Mapping[str, ModuleInfo]) -> str | None:
    """The family whose shipped table equals `table` on the components `table` has, else None."""
    components = {name.split(".", 1)[0] for name in table}
    if not components:
        return None
    for family in ALL_FAMILIES:
        try:
            shipped = family_table(family)
        except FileNotFoundError:  # only while scripts/gen_module_tables.py writes the tables
            continue
        if len(table) > len(shipped):
            continue
        subset = {k: v for k, v in shipped.items() if k.split(".", 1)[0] in components}
        if subset == dict(table.items()):
            return family
        optional = _OPTIONAL_MODULES.get(family)
        if optional and {k: v for k, v in subset.items() if not k.startswith(optional)} == dict(table.items()):
            return family
    return None


# ----------------------------------------------------------------------------------------------------------
# live models (torch imported lazily)


def base_layer_path(live_path: str) -> str | None:
    """The base-layer path for a live module path: None for adapter layers, `x` for `x.base_layer`."""
    parts = live_path.split(".")
    if _ADAPTER_SEGMENTS.intersection(parts):
        return None
    if parts and parts[-1] == "base_layer":
        return ".".join(parts[:-1])
    return live_path


def scan_module(component: str, module) -> dict[str, ModuleInfo]:
    """Every nn.Linear and nn.Conv2d of `module`, by canonical name (adapter layers skipped)."""
    import torch  # only here: the module tables of families and files need no torch

    found = {}
    for live_path, child in module.named_modules():
        if not isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        path = base_layer_path(live_path)
        if path is None:
            continue
        layer = "conv" if isinstance(child, torch.nn.Conv2d) else "linear"
        found[canonical_name(component, path)] = ModuleInfo(tuple(child.weight.shape), layer)
    return found


def table_for_model(obj, component: str | None = None) -> ModuleTable:
    """The module table of a live diffusers pipeline, UNet2DConditionModel or CLIP text encoder.

    Args:
        obj: a pipeline (its unet, text_encoder, text_encoder_2 are scanned) or one torch module.
        component: for a single module, its component name (guessed from the class when None);
            for a pipeline, restricts the table to that component.

    Returns:
        The table; `.family` is set when it equals a shipped family's table on its components.
    """
    modules: dict[str, ModuleInfo] = {}
    for name, module in model_components(obj, component):
        modules.update(scan_module(name, module))
    table = ModuleTable(modules)
    table.family = match_family(table)
    return table


# ----------------------------------------------------------------------------------------------------------
# meta-device builds from diffusers config folders


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read this JSON config ({err})") from err


# diffusers classes of a component folder's config.json -> component name (a lone component folder)
_CLASS_COMPONENTS = {"UNet2DConditionModel": "unet", "FluxTransformer2DModel": "transformer"}
# text encoders whose LoRA modules are not tabled yet (FLUX's T5): skipped, not refused
_UNTABLED = frozenset({"T5EncoderModel"})


def _component_dirs(root: Path) -> list[tuple[str, Path]]:
    """[(component, folder)] of the LoRA-targetable components in a diffusers model folder."""
    if (root / "config.json").is_file() and not (root / "model_index.json").is_file():
        config = _read_json(root / "config.json")
        return [(_CLASS_COMPONENTS.get(config.get("_class_name"), "text_encoder"), root)]
    index = _read_json(root / "model_index.json") if (root / "model_index.json").is_file() else {}
    found = []
    for name in COMPONENTS:
        listed = index.get(name)
        if index and (not listed or listed[0] is None or listed[-1] in _UNTABLED):
            continue
        if (root / name / "config.json").is_file():
            found.append((name, root / name))
        elif listed:
            raise ConfigError(
                f"{root}: model_index.json lists {name} but {root / name / 'config.json'} is missing"
            )
    if not found:
        raise ConfigError(
            f"{root}: no unet/config.json or text_encoder/config.json here; give a diffusers model folder "
            "(with model_index.json) or a family name (sd1, sd2, sdxl)"
        )
    return found


def _meta_unet(folder: Path):
    import torch
    from diffusers import UNet2DConditionModel

    config = _read_json(folder / "config.json")
    if config.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise ConfigError(
            f"{folder}: {config['_class_name']} is not a UNet2DConditionModel; sdlora needs an SD UNet"
        )
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def _meta_transformer(folder: Path):
    import torch
    from diffusers import FluxTransformer2DModel

    config = _read_json(folder / "config.json")
    if config.get("_class_name", "FluxTransformer2DModel") != "FluxTransformer2DModel":
        raise ConfigError(f"{folder}: {config['_class_name']} is not supported; sdlora reads FLUX.1 transformers")
    with torch.device("meta"):
        return FluxTransformer2DModel.from_config(config)


def _meta_text_encoder(folder: Path):
    import torch
    import transformers

    config = _read_json(folder / "config.json")
    architecture = (config.get("architectures") or ["CLIPTextModel"])[0]
    if architecture not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        raise ConfigError(f"{folder}: text encoder {architecture} is not supported (CLIP text encoders only)")
    model_class = getattr(transformers, architecture)
    clip_config = transformers.CLIPTextConfig.from_dict(config)
    with torch.device("meta"):
        return model_class(clip_config)


def build_table_from_config_dir(path: str | Path) -> ModuleTable:
    """Build the unet or FLUX transformer and the CLIP text encoder(s) of a diffusers model folder on the meta
    device (no weights) and scan them. A T5 text encoder is skipped (its LoRA modules are not tabled yet).

    `path` is a diffusers folder (model_index.json + unet/ or transformer/, text_encoder/, text_encoder_2/ with
    config.json; weight files are not read) or a single component folder holding a config.json.

    Raises:
        ConfigError: the folder or its configs are missing or not an SD architecture.
    """
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(
            f"{root}: not a folder; give a diffusers model folder or a family name (sd1, sd2, sdxl)"
        )
    modules: dict[str, ModuleInfo] = {}
    for name, folder in _component_dirs(root):
        log.debug("building %s from %s on the meta device", name, folder)
        builder = {"unet": _meta_unet, "transformer": _meta_transformer}.get(name, _meta_text_encoder)
        model = builder(folder)
        modules.update(scan_module(name, model))
    table = ModuleTable(modules)
    table.family = match_family(table)
    return table
