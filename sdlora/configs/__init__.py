"""Files that ship inside the package: model configs (no weights), CLIP tokenizers and training presets.

Everything is found relative to this package, so a wheel or a non-editable install works the same as a
source checkout; nothing here climbs out of the package.

- `models/<sd15|sd21|sdxl>/`: diffusers config folders used to build a single-file checkpoint's modules
  and the module tables (see `scripts/gen_module_tables.py`).
- `tokenizers/`: the CLIP tokenizer files a single-file checkpoint lacks (provenance in its README).
- `presets/*.yaml`: training presets; each holds only what differs from the defaults of
  `sdlora.settings.config` (found by `sdlora.settings.presets`).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
# family -> folder under models/ holding its diffusers configs
CONFIG_DIRS = {"sd1": "sd15", "sd2": "sd21", "sdxl": "sdxl"}


def models_root() -> Path:
    return ROOT / "models"


def tokenizers_root() -> Path:
    return ROOT / "tokenizers"
