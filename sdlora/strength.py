"""One LoRA strength value, used everywhere: prompt tags, web UI slots, `--lora FILE:S`, merge, bake, grids.

Standard library only. A `Strength` is immutable (a grid cell, an undo record and a slot can share one).

    Strength(0.8)                        text encoder and UNet 0.8
    Strength(0.8, te=0.5)                text encoder 0.5, UNet 0.8
    Strength(1, unet=0.3)                text encoder 1, UNet 0.3
    Strength(1, blocks="1,0,0,...")      LoRA Block Weight vector (parsed by the stack against the model)
    Strength.parse("0.5:1")              A1111's <lora:NAME:TE:UNET> positional form
    Strength.parse("te=0.5:unet=1")      the same, named

As in A1111 (`extra_networks_lora.py`), a tag's UNet strength defaults to its text-encoder strength, so
`<lora:x:0.8:te=0.5>` is text encoder 0.5 and UNet 0.5: `parse` stores the tag's text-encoder value as
`overall` and the UNet value only when the tag gives one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

from sdlora.arch.blocks import block_of, check_strength
from sdlora.errors import ConfigError

log = logging.getLogger(__name__)

_NAMED = ("te", "unet", "lbw", "dyn")
Blocks = str | tuple[tuple[str, float], ...] | None


@dataclass(frozen=True)
class Strength:
    """How strongly one LoRA is applied.

    overall: the multiplier of every module that has no more specific one.
    te / unet: text-encoder / UNet multipliers; None follows `overall`.
    blocks: per-block factors on top (A1111 LoRA Block Weight): the raw `lbw=` text (a vector the stack
        parses against the model's blocks) or ((block name, factor), ...); None: every block 1.
    """

    overall: float = 1.0
    te: float | None = None
    unet: float | None = None
    blocks: Blocks = None

    def __post_init__(self):
        object.__setattr__(self, "overall", check_strength(self.overall, "strength"))
        for what in ("te", "unet"):
            value = getattr(self, what)
            if value is not None:
                object.__setattr__(self, what, check_strength(value, f"{what} strength"))
        if isinstance(self.blocks, Mapping):  # a dict would make the value unhashable and mutable
            pairs = tuple((str(k).upper(), check_strength(v, f"block {k}")) for k, v in self.blocks.items())
            object.__setattr__(self, "blocks", pairs or None)
        elif isinstance(self.blocks, str):
            object.__setattr__(self, "blocks", _blocks_text(self.blocks))

    # ----- construction -------------------------------------------------------------------------

    @classmethod
    def of(cls, value) -> Strength:
        """A Strength from a Strength, a number, or text as `parse` reads it."""
        if isinstance(value, Strength):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        return cls(check_strength(value))

    @classmethod
    def parse(cls, text: str, what: str = "strength") -> Strength:
        """'0.8', '0.5:1.0' (te:unet), 'te=0.5:unet=1', '1:lbw=1,0,...'; ConfigError names `what`."""
        fields = [part.strip() for part in str(text).split(":")] if str(text).strip() else []
        return cls.from_fields(fields, what)

    @classmethod
    def from_fields(cls, fields: list[str], what: str = "strength") -> Strength:
        """A tag's fields after the name (A1111 rules: positional te, unet, dyn; then te=, unet=, lbw=, dyn=)."""
        positional, named = [], {}
        for field in fields:
            key, eq, value = field.partition("=")
            if eq:
                key = key.strip().lower()
                if key not in _NAMED:
                    raise ConfigError(f"{what}: unknown option {key!r}; use te=, unet= or lbw=")
                named[key] = value.strip()
            elif named:
                raise ConfigError(f"{what}: a plain value after a named one; write TE:UNET or te=/unet=")
            else:
                positional.append(field)
        if len(positional) > 3:
            raise ConfigError(f"{what}: too many values; write TE:UNET")
        if "dyn" in named or len(positional) == 3:
            log.info("%s: dyn (rank truncation) is ignored; sdlora always applies the full rank", what)
        te = named.get("te", positional[0] if positional else "1")
        unet = named.get("unet", positional[1] if len(positional) > 1 else None)
        return cls(overall=check_strength(te, f"{what}: strength"),
                   unet=None if unet is None else check_strength(unet, f"{what}: unet strength"),
                   blocks=named.get("lbw"))

    # ----- reading ------------------------------------------------------------------------------

    @property
    def te_value(self) -> float:
        """The text-encoder multiplier in effect."""
        return self.overall if self.te is None else self.te

    @property
    def unet_value(self) -> float:
        """The UNet multiplier in effect."""
        return self.overall if self.unet is None else self.unet

    def with_overall(self, overall: float) -> Strength:
        """This strength with another overall value (te/unet/blocks kept): a grid cell, a moved slider."""
        return replace(self, overall=overall)

    def for_module(self, canonical: str) -> float:
        """The multiplier of canonical module `canonical`: the one rule (the stack, merge).

        Raises ConfigError for a block vector, whose block names only a model's UNet can tell (the stack
        names them when a strength is set)."""
        base = self.unet_value if canonical.startswith("unet.") else self.te_value
        if self.blocks is None:
            return base
        if isinstance(self.blocks, str):
            raise ConfigError(f"block strengths {self.blocks!r} need a model to name the blocks; give them as "
                              "BLOCK=value pairs (IN04=0.5,MID=0) or use them in generate/bake")
        block = block_of(canonical)
        return base * dict(self.blocks).get(block, 1.0) if block else base

    def text(self) -> str:
        """The A1111 tag fields after the name: '0.8', '0.5:1', '1:lbw=...' (te= when te differs from overall)."""
        parts = [f"{self.te_value:g}"]
        if self.unet_value != self.te_value:
            parts.append(f"{self.unet_value:g}")
        if self.blocks is not None:
            vector = self.blocks if isinstance(self.blocks, str) else ",".join(f"{k}={v:g}" for k, v in self.blocks)
            parts.append(f"lbw={vector}")
        return ":".join(parts)

    def __str__(self) -> str:
        return self.text()


def _blocks_text(text: str) -> Blocks:
    """'IN04=0.5,MID=0' -> (("IN04", 0.5), ("MID", 0.0)); a plain vector stays text (the stack reads it
    against the model's block names); blank -> None."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        return None
    if all("=" in p for p in parts):
        return tuple((k.strip().upper(), check_strength(v, f"block {k.strip()}"))
                     for k, v in (p.split("=", 1) for p in parts))
    return ",".join(parts)
