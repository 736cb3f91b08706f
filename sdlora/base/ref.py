"""What a `--base` value means, the same for every command, without loading its weights. Standard library
only at module level (torch only inside `check_target`'s meta build).

A base is one of:
* ``embedded``: sdlora's small shipped model (a diffusers folder inside the package);
* a family name (``sd1``, ``sd2``, ``sdxl``; also ``sd15``, ``sd21``): the architecture built from the
  configs in ``sdlora/configs/models/`` (no weights; where only the architecture matters: verify, sizes);
* a diffusers model folder (``model_index.json``);
* a single-file checkpoint (``.safetensors``; pickles with allow_pickle);
* a Hugging Face hub id (``org/name``), only where weights are loaded.

`parse_base` classifies a value once (`sdlora.base.listing` lists and describes the bases found in model
folders for menus); `sdlora.base.load.load_components` (weights), `sdlora.base.native` (image size) and
`check_target` (verify's architecture) all start from it, so `--base embedded` works wherever `--base` is
taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdlora.arch.family import detect_checkpoint_family
from sdlora.arch.tables import ModuleTable, build_table_from_config_dir, embedded_table
from sdlora.configs import CONFIG_DIRS, models_root
from sdlora.embedded import weights_dir
from sdlora.errors import ConfigError, SdloraError
from sdlora.header import read_header
from sdlora.suffixes import PICKLE_SUFFIXES

EMBEDDED = "embedded"
FAMILY_ALIASES = {"sd1": "sd1", "sd15": "sd1", "sd1.5": "sd1", "sd2": "sd2", "sd21": "sd2", "sd2.1": "sd2",
                  "sdxl": "sdxl"}
# families sdlora reads LoRAs of but cannot load as a base yet: `verify --base` only (docs/formats.md §2.14)
CHECK_ONLY_FAMILIES = {"flux": "flux", "flux1": "flux", "flux-dev": "flux", "flux-schnell": "flux"}


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
        layout = family or checkpoint_family(ref.path)
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


def checkpoint_family(path: Path) -> str | None:
    """sd1/sd2/sdxl of a single-file checkpoint from its .safetensors header's shapes (the rule:
    `sdlora.arch.family.detect_checkpoint_family`); None when it cannot be told (a pickle, a damaged file,
    another size: the loader or the caller says what is wrong, in its own words)."""
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        header = read_header(path)
    except (SdloraError, OSError):
        return None
    return detect_checkpoint_family({key: info.shape for key, info in header.tensors.items()})


def check_target(base: str | Path) -> str | ModuleTable:
    """What `sdlora verify` checks a LoRA against: a family name stays a string ("sd1", "sd2", "sdxl", "flux";
    also "sd15", "sd21", "flux1", "flux-dev", "flux-schnell"), a diffusers folder becomes its module table built
    on the meta device (`embedded`: its shipped table, the same, read from sdlora/data/), and a single-file
    .safetensors checkpoint becomes the family its header's shapes show (no weights read).

    Raises:
        ConfigError: not a base (`parse_base`), a hub id, or a checkpoint of no SD family.
    """
    name = str(base).strip().lower()
    if name in CHECK_ONLY_FAMILIES and not Path(str(base)).expanduser().exists():  # a folder named flux wins
        return CHECK_ONLY_FAMILIES[name]
    ref = parse_base(base)
    if ref.kind == "family":
        return ref.value
    if ref.kind == "embedded":
        return embedded_table()
    if ref.kind == "folder":
        return build_table_from_config_dir(ref.path)
    if ref.kind == "file":
        family = checkpoint_family(ref.path)
        if family is None:
            raise ConfigError(f"{ref.path}: not an SD1/SD2/SDXL checkpoint (no cross-attention weights of width "
                              "768, 1024 or 2048); give a diffusers model folder or a family name (sd1, sd2, sdxl)")
        return family
    raise ConfigError(f"--base {ref.value!r}: a hub id; give a family name (sd1, sd2, sdxl), a diffusers folder "
                      "or a .safetensors checkpoint")
