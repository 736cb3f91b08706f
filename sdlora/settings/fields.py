"""The training settings one field at a time, for forms: `field_spec(key)` describes a field (its value type,
the kind of widget it takes, its choices, help text and default) and `apply_values(cfg, {key: value})` sets
typed values with the checks of the YAML / `--set` path. The web UI's Train tab builds its widgets and its
config from these, instead of reading the dataclasses' type hints or writing `key=value` strings.

>>> field_spec("optim.mixed_precision").choices
('no', 'fp16', 'bf16')
>>> apply_values(TrainConfig(), {"lora.rank": 4}).lora.rank
4
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from sdlora.settings.config import SECTIONS, TrainConfig, lookup_field, set_key, validate

_KINDS = {bool: "bool", int: "int", float: "float", str: "text", list: "list"}


@dataclass(frozen=True)
class FieldSpec:
    """One setting, as a form shows it."""

    key: str                    # section.name, as in YAML, --set and the docs
    type: type                  # the value's type: bool, int, float, str or list
    kind: str                   # "choice" (one of `choices`), "bool", "int", "float", "text" or "list"
    choices: tuple[str, ...]    # the closed set of values; () for an open field
    help: str                   # the field's help text (also in docs/config-reference.md)
    default: Any                # the value when nothing sets it (a preset may)
    optional: bool = False      # None is a value: unset, the base or the run decides ("auto")


def field_spec(key: str) -> FieldSpec:
    """The spec of setting `key` ("optim.lr"); ConfigError (with the nearest valid key) for an unknown key."""
    f, hint = lookup_field(key)
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    value_type = typing.get_origin(args[0]) or args[0]
    choices = tuple(f.metadata.get("choices") or ())
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return FieldSpec(key, value_type, "choice" if choices else _KINDS[value_type], choices, f.metadata["help"],
                     default, union)


def field_keys() -> list[str]:
    """Every setting's key, section by section in the order of the config."""
    return [f"{section}.{f.name}" for section in SECTIONS
            for f in dataclasses.fields(getattr(TrainConfig(), section))]


def apply_values(cfg: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """A copy of `cfg` with `values` ({"lora.rank": 4, ...}: typed values, not YAML text) set and the whole
    config checked as `load_config` checks it. The caller's `cfg` is left as it was.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or one outside its choices or range; the
            message names the key.
    """
    out = copy.deepcopy(cfg)
    for key, value in values.items():
        set_key(out, key, value)
    validate(out)
    return out
