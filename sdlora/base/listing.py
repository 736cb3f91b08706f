"""Base models on disk: list the ones a UI can offer, and tell each one's family, from configs and headers only.

Standard library at import; nothing here loads weights (diffusers is imported only to build a custom-size
model's module table on the meta device, see `base_widths`).

    >>> bases = list_bases([Path("models")], default="embedded")
    >>> [(b.label, b.family) for b in bases]
    [('embedded', None), ('v1-5-pruned', 'sd1'), ('sdxl-base (diffusers)', 'sdxl')]

A base is "embedded", a diffusers folder (model_index.json with a unet), or a single-file SD1/SD2/SDXL
`.safetensors` checkpoint (its family from the cross-attention width in its header). A single file of
another size is listed when `sdlora bake` wrote a `<stem>.config/` folder beside it (how such files load).
Pickle checkpoints (.ckpt, ...) are not listed: their keys cannot be read without unpickling.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sdlora.arch.family import FAMILY_NAMES, unet_config_family
from sdlora.arch.tables import build_table_from_config_dir, family_table
from sdlora.base.ref import EMBEDDED, checkpoint_family, config_folder, parse_base
from sdlora.errors import ConfigError, FormatError, SdloraError
from sdlora.header import LORA_MARKERS, read_header

log = logging.getLogger(__name__)

MAX_DEPTH = 4  # folder levels searched below each model folder (a model zoo is seldom deeper)


@dataclass(frozen=True)
class BaseModel:
    """One base model a UI can switch to.

    value: what `sdlora.base.load.load_base` takes ("embedded" or a path).
    label: the menu text (the file or folder name with its family).
    family: "sd1", "sd2", "sdxl", or None for a model of another size (the embedded one).
    kind: "embedded", "diffusers" or "checkpoint".
    """

    value: str
    label: str
    family: str | None
    kind: str


def list_bases(folders: Iterable[str | os.PathLike], default: str | None = EMBEDDED,
               embedded: bool = True) -> list[BaseModel]:
    """Every base in `folders` (searched `MAX_DEPTH` levels deep), `default` first, then "embedded".

    Files that are not SD checkpoints (LoRAs, damaged files, other architectures) are skipped with a log
    line; nothing is raised for them, so one bad file never hides the others.
    """
    found: dict[str, BaseModel] = {}
    if default and default != EMBEDDED:
        info = _describe_quietly(Path(default))
        if info is not None:
            found[info.value] = info
    if embedded:
        found.setdefault(EMBEDDED, describe_base(EMBEDDED))
    for folder in folders:
        for path in _candidates(Path(folder)):
            info = _describe_quietly(path)
            if info is not None:
                found.setdefault(info.value, info)
    return list(found.values())


def describe_base(base: str | os.PathLike) -> BaseModel:
    """The BaseModel of "embedded", a diffusers folder or a single-file checkpoint (configs/header only).

    Raises:
        ConfigError: not a base model (a folder without model_index.json, a LoRA, an unknown size).
        FormatError: a damaged .safetensors file.
    """
    if str(base) == EMBEDDED:
        return BaseModel(EMBEDDED, "embedded (tiny, built in)", None, "embedded")
    path = Path(base).expanduser().resolve()
    if path.is_dir():
        family = folder_family(path)
        return BaseModel(str(path), f"{path.name} ({_family_label(family)}, diffusers)", family, "diffusers")
    family = _checked_checkpoint_family(path)
    return BaseModel(str(path), f"{path.name} ({_family_label(family)})", family, "checkpoint")


def folder_family(folder: Path) -> str | None:
    """The family of a diffusers model folder from unet/config.json (None: another size)."""
    if not (folder / "model_index.json").is_file():
        raise ConfigError(f"{folder}: not a diffusers model folder (no model_index.json)")
    return unet_config_family(_json(folder / "unet" / "config.json"))


def _checked_checkpoint_family(path: Path) -> str | None:
    """`sdlora.base.ref.checkpoint_family` of a single-file .safetensors checkpoint (None: another size with a
    `<stem>.config/` beside it), saying why a file is no base: ConfigError for a LoRA or an unknown file,
    FormatError for a damaged one."""
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        raise ConfigError(f"{path}: not a .safetensors checkpoint or a model folder")
    keys = list(read_header(path).tensors)  # raises FormatError for a damaged file
    if any(marker in key for key in keys[:50] for marker in LORA_MARKERS):
        raise ConfigError(f"{path.name}: a LoRA, not a base model")
    family = checkpoint_family(path)
    if family is None and not (path.with_suffix(".config") / "model_index.json").is_file():
        raise ConfigError(f"{path.name}: not an SD1/SD2/SDXL checkpoint (no cross-attention of width 768, 1024 "
                          "or 2048) and no <stem>.config/ folder beside it")
    return family


@functools.lru_cache(maxsize=16)
def base_widths(base: str, family: str | None = None) -> dict[str, frozenset[tuple[str, int]]]:
    """{"unet"/"text": {("in"|"out", width)}} of a base's LoRA-targetable layers: the shipped table of
    `family`, or for a custom-size base its configs built on the meta device (no weights read; cached, as a
    library of LoRAs is checked against one base)."""
    if family is not None:
        table = family_table(family)
    else:
        folder = config_folder(parse_base(base))  # the one meaning of a base (sdlora.base.ref)
        if folder is None:
            raise ConfigError(f"{base}: no diffusers configs to read its layer widths from")
        table = build_table_from_config_dir(folder)
    widths: dict[str, set] = {"unet": set(), "text": set()}
    for name, info in table.items():
        side = "unet" if name.startswith("unet.") else "text"
        widths[side].update({("out", info.shape[0]), ("in", info.shape[1])})
    return {side: frozenset(values) for side, values in widths.items()}


def _family_label(family: str | None) -> str:
    return FAMILY_NAMES[family] if family else "custom size"


def _describe_quietly(path: Path) -> BaseModel | None:
    try:
        return describe_base(path)
    except (SdloraError, OSError, ValueError) as err:
        log.info("base list: %s left out: %s", path, err)
        return None


def _candidates(root: Path, depth: int = 0) -> Iterable[Path]:
    """Diffusers folders (not descended into) and .safetensors files under `root`, sorted, hidden ones skipped."""
    if (root / "model_index.json").is_file():
        yield root
        return
    if depth > MAX_DEPTH:
        return
    try:
        children = sorted(root.iterdir())
    except OSError as err:
        log.info("base list: cannot read %s: %s", root, err)
        return
    for child in children:
        if child.name.startswith(".") or child.suffix == ".config":
            continue
        if child.is_dir():
            yield from _candidates(child, depth + 1)
        elif child.suffix.lower() == ".safetensors":
            yield child


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read this config ({err})") from err
    if not isinstance(data, dict):
        raise FormatError(f"{path}: not a JSON object")
    return data
