"""Files that ship inside the package: model configs (no weights), CLIP tokenizers and training presets.

Everything is found relative to this package, so a wheel or a non-editable install works the same as a
source checkout; nothing here climbs out of the package.

- `models/<sd15|sd21|sdxl>/`: diffusers config folders used to build a single-file checkpoint's modules
  and the module tables (see `scripts/gen_module_tables.py`). `models/flux1-dev/` and `models/flux1-schnell/`
  hold FLUX.1's transformer and CLIP-L configs (written from the published architecture: 19 double and 38
  single blocks, hidden 3072; schnell has no guidance embedder); the table of family "flux" is built from dev.
- `tokenizers/`: the CLIP tokenizer files a single-file checkpoint lacks (provenance in its README).
- `presets/*.yaml`: training presets; each holds only what differs from the defaults of
  `sdlora.settings.config` (found by `sdlora.settings.presets`).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
# family -> folder under models/ holding its diffusers configs
CONFIG_DIRS = {"sd1": "sd15", "sd2": "sd21", "sdxl": "sdxl", "flux": "flux1-dev"}


def models_root() -> Path:
    return ROOT / "models"


def tokenizers_root() -> Path:
    return ROOT / "tokenizers"
