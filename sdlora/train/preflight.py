"""Settings checked against the base before it loads: each mistake that would otherwise surface minutes later
(a LoRA rank above a targeted layer's sides or above any base's widest layer, a bucket size the UNet cannot
halve, a per-block vector of the wrong length)
is one `ConfigError` line, at `--dry-run` time too. Depends on sdlora.base.ref, sdlora.arch and
sdlora.train.block_options.

The base's shape comes from its diffusers config files (the shipped tables for a standard family, a
meta-device build otherwise: no weights are read), or from the loaded components for a hub id, which must load
first. Without either, only the family-independent bound applies.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from math import prod
from pathlib import Path

from sdlora.arch.blocks import block_names, block_of
from sdlora.arch.tables import (
    ModuleTable,
    build_table_from_config_dir,
    embedded_table,
    family_table,
    scan_module,
)
from sdlora.arch.targets import rules_for
from sdlora.base.ref import config_folder, parse_base
from sdlora.configs import CONFIG_DIRS, models_root
from sdlora.embedded import weights_dir
from sdlora.errors import ConfigError
from sdlora.train import block_options

# min(out, in) of the widest layer of any SD1/SD2/SDXL base (SDXL's 1280-wide feed-forward and text encoder
# MLP): a rank above it fits no layer of any base
MAX_RANK = 1280


@dataclass(frozen=True)
class BaseShape:
    """What the checks need to know about a base: its LoRA-targetable layers and its UNet/VAE geometry."""

    table: ModuleTable
    n_down: int
    n_up: int
    vae_scale: int  # pixels per latent cell

    @property
    def size_step(self) -> int:
        """Image sides must be multiples of this: the UNet halves the latent once per down block but the last."""
        return self.vae_scale * 2 ** (self.n_down - 1)


def check_base_settings(cfg, components=None) -> None:
    """Raise a one-line ConfigError for a setting this base cannot train with.

    Args:
        cfg: a resolved TrainConfig.
        components: the loaded base (`sdlora.base.load.Components`), or None to read its config files.
    """
    _check_bound(cfg)
    shape = shape_of_components(components) if components is not None else shape_of_base(cfg)
    if shape is None:
        return
    _check_bucket_step(cfg, shape)
    names = block_names(shape.n_down, shape.n_up)[1:]
    linear, conv = block_options.rank_tables(cfg, names)  # also checks every per-block vector's length
    _check_ranks(cfg, shape.table, linear, conv)


def shape_of_base(cfg) -> BaseShape | None:
    """The base's shape from its config files; None when only loading it could tell (a hub id)."""
    folder = config_folder(parse_base(cfg.model.base), cfg.model.family)
    if folder is None or not (folder / "unet" / "config.json").is_file():
        return None
    return _folder_shape(str(folder))


@functools.lru_cache(maxsize=8)
def _folder_shape(folder: str) -> BaseShape:
    path = Path(folder)
    unet = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
    vae = json.loads((path / "vae" / "config.json").read_text(encoding="utf-8"))
    shipped = {str(models_root() / name): family for family, name in CONFIG_DIRS.items()}
    if folder in shipped:
        table = family_table(shipped[folder])
    elif path.resolve() == weights_dir().resolve():
        table = embedded_table()  # shipped too: the dry run needs no diffusers
    else:
        table = build_table_from_config_dir(path)
    return _shape(table, unet, vae)


def shape_of_components(components) -> BaseShape:
    modules = scan_module("unet", components.unet)
    for name, model in components.text_encoders.items():
        modules.update(scan_module(name, model))
    return _shape(ModuleTable(modules), components.unet.config, components.vae.config)


def _shape(table: ModuleTable, unet, vae) -> BaseShape:
    return BaseShape(table, len(unet["down_block_types"]), len(unet["up_block_types"]),
                     2 ** (len(vae["block_out_channels"]) - 1))


def _check_bound(cfg) -> None:
    lc = cfg.lora
    for key, value in (("lora.rank", lc.rank), ("lora.conv_rank", lc.conv_rank)):
        if value > MAX_RANK:
            raise ConfigError(f"{key}={value}: above {MAX_RANK}, the widest layer of any SD1/SD2/SDXL base, so "
                              f"no layer can hold it; lower {key} (4 to 128 is usual)")
    for key in ("block_dims", "conv_block_dims"):
        values = getattr(lc, key) or []
        if values and max(values) > MAX_RANK:
            raise ConfigError(f"lora.{key}: {max(values)} is above {MAX_RANK}, the widest layer of any SD1/SD2/"
                              f"SDXL base; lower it")


def _check_bucket_step(cfg, shape: BaseShape) -> None:
    step = cfg.data.bucket_step
    if cfg.data.buckets and step % shape.size_step:
        raise ConfigError(f"data.bucket_step={step}: this base needs image sides in multiples of "
                          f"{shape.size_step} (its VAE scales by {shape.vae_scale}, its UNet halves the latent "
                          f"{shape.n_down - 1} times); use {shape.size_step} or a multiple")


def _kind(info) -> str:
    if len(info.shape) == 2:
        return "linear"
    return "conv1x1" if tuple(info.shape[2:]) == (1, 1) else "conv"


def _check_ranks(cfg, table: ModuleTable, linear, conv) -> None:
    """Each targeted layer's rank (per-block tables first) against the layer's sides, out and in x kernel.
    A rank above the smaller side only over-parametrises (the embedded preset trains conv_out, 4 outputs, at
    rank 8); above both sides it is no low-rank adapter at all and only allocates (LoKr's "no decomposition"
    100000 as a rank would need terabytes), so that is refused."""
    lc = cfg.lora
    for name, info in table.items():
        component, _, path = name.partition(".")
        if component != "unet" and not lc.train_text_encoder:
            continue
        kind = _kind(info)
        if not any(kind in rule.kinds and re.search(rule.pattern, path) for rule in rules_for(lc.targets, component)):
            continue
        is_conv = kind == "conv"
        per_block = conv if is_conv else linear
        rank = (lc.conv_rank or lc.rank) if is_conv else lc.rank
        key = "lora.conv_rank" if is_conv else "lora.rank"
        if per_block is not None and component == "unet" and block_of(name) in per_block:
            rank, key = per_block[block_of(name)][0], "lora.conv_block_dims" if is_conv else "lora.block_dims"
        width = max(info.shape[0], prod(info.shape[1:]))
        if rank > width:
            raise ConfigError(f"{key}: rank {rank} is above both sides of {name} ({list(info.shape)}), a layer "
                              f"it targets, so it is no low-rank adapter: lower {key} (at most "
                              f"{min(info.shape[0], prod(info.shape[1:]))} is useful there)")
