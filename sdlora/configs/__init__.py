"""Files that ship inside the package: model configs (no weights), CLIP tokenizers and training presets.

Everything is found relative to this package, so a wheel or a non-editable install works the same as a
source checkout; nothing here climbs out of the package.

- `models/<sd15|sd21|sdxl>/`: diffusers config folders used to build a single-file checkpoint's modules
  and the module tables (see `scripts/gen_module_tables.py`).
- `tokenizers/`: the CLIP tokenizer files a single-file checkpoint lacks (provenance in its README).
- `presets/*.yaml`: training presets; each holds only what differs from `sdlora.config`'s defaults.
"""

from __future__ import annotations

from pathlib import Path

from sdlora.errors import ConfigError

ROOT = Path(__file__).resolve().parent
# family -> folder under models/ holding its diffusers configs
CONFIG_DIRS = {"sd1": "sd15", "sd2": "sd21", "sdxl": "sdxl"}


def models_root() -> Path:
    return ROOT / "models"


def tokenizers_root() -> Path:
    return ROOT / "tokenizers"


def presets_dir() -> Path:
    return ROOT / "presets"


def preset_names() -> list[str]:
    """Names of the shipped training presets (file stems), sorted."""
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of the shipped preset `name`.

    Raises:
        ConfigError: no such preset (the message lists the shipped ones).
    """
    path = presets_dir() / f"{name}.yaml"
    if name not in preset_names():
        raise ConfigError(f"no preset {name!r}; shipped presets: {', '.join(preset_names())}")
    return path
