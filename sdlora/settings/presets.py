"""The shipped training presets: `sdlora/configs/presets/*.yaml` (package data, so a wheel has them), each
holding only what differs from the defaults of `sdlora.settings.config`. Their names, their files, and the
one a base uses as its own recipe when no preset or config is chosen.
"""

from __future__ import annotations

from pathlib import Path

from sdlora import configs
from sdlora.base.native import default_preset
from sdlora.errors import ConfigError


def presets_dir() -> Path:
    return configs.ROOT / "presets"


def preset_names() -> list[str]:
    """Names of the shipped training presets (file stems), sorted."""
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of the shipped preset `name`.

    Raises:
        ConfigError: no such preset (the message lists the shipped ones).
    """
    if name not in preset_names():
        raise ConfigError(f"no preset {name!r}; shipped presets: {', '.join(preset_names())}")
    return presets_dir() / f"{name}.yaml"


def base_preset(base: str | Path | None) -> str | None:
    """The name of the preset that is `base`'s own recipe (`embedded`: the quickstart's); None when it has none."""
    return default_preset(base) if base else None
