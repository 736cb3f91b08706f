"""The training sizes a base implies: the one place where an unset `data.resolution` (and the buckets) is
worked out from the base's native size, for the trainer, `sdlora train --dry-run` and the web UI's form.
"""

from __future__ import annotations

import copy
import dataclasses

from sdlora.base.native import far_from_native, native_resolution, native_resolution_of
from sdlora.settings.config import DataConfig, TrainConfig, validate

DEFAULT_NATIVE = 512  # the size assumed when nothing tells the base's own (SD1's; only before a base is known)


def fill_data_sizes(data: DataConfig, native: int | None) -> DataConfig:
    """A copy of `data` with the unset sizes taken from the base's native side `native`: resolution =
    native, buckets from half to twice it (SD1: 256..1024, sd-scripts' usual range)."""
    native = native or DEFAULT_NATIVE
    resolution = data.resolution or native
    return dataclasses.replace(data, resolution=resolution, min_bucket=data.min_bucket or max(8, resolution // 2),
                               max_bucket=data.max_bucket or resolution * 2)


def resolve_base_settings(cfg: TrainConfig, components=None) -> tuple[TrainConfig, list[str], int | None]:
    """A copy of `cfg` with the base-dependent defaults filled in (data.resolution, buckets), notes for the
    run summary (where each value came from; a warning when an explicit resolution is far from the base's
    native size) and that native size. The caller's config stays "unset", so it can be reused with another base.

    The native size comes from `components` (a loaded `sdlora.base.load.Components`) when given, else from
    the config files of `cfg.model.base` (no weights are read, so `--dry-run` and the web UI's form can show
    it); None only for a hub id, which must load first.

    >>> cfg, notes, native = resolve_base_settings(TrainConfig())   # the embedded base
    >>> native, cfg.data.resolution, cfg.data.min_bucket, cfg.data.max_bucket
    (32, 32, 16, 64)
    """
    if components is not None:
        native = native_resolution_of(components)
    else:
        native = native_resolution(cfg.model.base, cfg.model.family)
    warning = far_from_native(cfg.data.resolution, native) if cfg.data.resolution is not None else None
    if cfg.data.resolution is None:
        notes = [f"data.resolution: {native} px, the base's native size" if native else
                 f"data.resolution: {DEFAULT_NATIVE} px (the base's native size is unknown until it loads)"]
    else:
        notes = [f"warning: {warning}"] if warning else []
    out = copy.deepcopy(cfg)
    out.data = fill_data_sizes(cfg.data, native)
    validate(out)
    return out, notes, native
