"""Training settings in one place: the config dataclasses and their YAML / `--set` loading (`config`), the
field-by-field API that forms use (`fields`), the shipped presets (`presets`), the sizes a base implies
(`resolution`) and the kohya importer (`kohya_import`). PyYAML and the standard library only: no torch.

>>> cfg = load_config("quick", ["data.path=sample_data"])   # doctest: +SKIP
"""

from sdlora.settings.config import TrainConfig, dump_config, load_config
from sdlora.settings.fields import FieldSpec, apply_values, field_keys, field_spec
from sdlora.settings.kohya_import import KohyaImport, read_kohya
from sdlora.settings.presets import base_preset, preset_names, preset_path
from sdlora.settings.resolution import resolve_base_settings

__all__ = ["FieldSpec", "KohyaImport", "TrainConfig", "apply_values", "base_preset", "dump_config", "field_keys",
           "field_spec", "load_config", "preset_names", "preset_path", "read_kohya", "resolve_base_settings"]
