"""A1111 `<lora:...>` prompt tags: parse, take out of the prompt, resolve names. Standard library only.

Syntax (A1111 `extra_networks_lora.py`, docs/formats.md §2.12):

    <lora:NAME>                 strength 1
    <lora:NAME:0.8>             text encoder and UNet 0.8
    <lora:NAME:0.5:1.0>         text encoder 0.5, UNet 1.0 (positional te:unet)
    <lora:NAME:te=0.5:unet=1>   the same, named
    <lora:NAME:1:lbw=1,0,...>   LoRA Block Weight vector (or a dict-like "IN04=0.5,MID=0")

As in A1111 the UNet strength defaults to the text-encoder one. `<lyco:...>` (the old LyCORIS
extension's tag) is read the same way. `dyn=` is accepted and ignored (sdlora never truncates ranks).
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sdlora.arch.blocks import check_strength
from sdlora.errors import ConfigError

log = logging.getLogger(__name__)

_TAG = re.compile(r"<(lora|lyco):([^<>]+)>", re.IGNORECASE)
_NAMED = ("te", "unet", "lbw", "dyn")


@dataclass
class LoraRequest:
    """One `<lora:...>` tag: which LoRA and how strong. Feed it to `LoraStack.add`."""

    name: str
    strength: float = 1.0  # the text-encoder multiplier; the UNet follows it unless unet_strength is set
    unet_strength: float | None = None
    block_strengths: str | None = None  # raw lbw= value; LoraStack parses it against the model's blocks
    tag: str = ""  # the tag as written

    def stack_kwargs(self) -> dict:
        """Keyword arguments for `LoraStack.add` (besides the LoRA itself)."""
        return {"strength": self.strength, "unet_strength": self.unet_strength,
                "block_strengths": self.block_strengths}


def parse_prompt(prompt: str, known: Iterable[str] | None = None) -> tuple[str, list[LoraRequest]]:
    """Take the LoRA tags out of `prompt`.

    Args:
        prompt: the prompt as the user wrote it.
        known: names that may be used (e.g. library entries); a tag naming none of them is an error
            that lists the closest names. Matching ignores case when there is no exact match.

    Returns:
        (cleaned prompt, requests in the order written). The cleaned prompt has the tags removed
        and the commas and spaces left around them tidied.

    Raises:
        ConfigError: a malformed tag, a bad strength, or an unknown name.
    """
    requests = [_parse_tag(match.group(0), match.group(2)) for match in _TAG.finditer(prompt)]
    if known is not None:
        names = list(known)
        for request in requests:
            request.name = resolve_name(request.name, names)
    return clean_prompt(_TAG.sub(" ", prompt)), requests


def _parse_tag(tag: str, body: str) -> LoraRequest:
    name, *fields = [part.strip() for part in body.split(":")]
    if not name:
        raise ConfigError(f"{tag}: the LoRA name is empty; write <lora:NAME:STRENGTH>")
    positional, named = [], {}
    for field in fields:
        key, eq, value = field.partition("=")
        if eq:
            key = key.strip().lower()
            if key not in _NAMED:
                raise ConfigError(f"{tag}: unknown option {key!r}; use te=, unet= or lbw=")
            named[key] = value.strip()
        elif named:
            raise ConfigError(f"{tag}: a plain value after a named one; write <lora:NAME:TE:UNET> or te=/unet=")
        else:
            positional.append(field)
    if len(positional) > 3:
        raise ConfigError(f"{tag}: too many values; write <lora:NAME:TE:UNET>")
    if "dyn" in named or len(positional) == 3:
        log.info("%s: dyn (rank truncation) is ignored; sdlora always applies the full rank", tag)
    te = named.get("te", positional[0] if positional else "1")
    unet = named.get("unet", positional[1] if len(positional) > 1 else None)
    return LoraRequest(
        name=name,
        strength=check_strength(te, f"{tag}: strength"),
        unet_strength=None if unet is None else check_strength(unet, f"{tag}: unet strength"),
        block_strengths=named.get("lbw"),
        tag=tag,
    )


def resolve_name(name: str, names: list[str]) -> str:
    """`name` itself, or the one entry of `names` equal to it ignoring case; else ConfigError with close matches."""
    if name in names:
        return name
    folded = [n for n in names if n.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(names)} LoRAs known)"
    raise ConfigError(f"no LoRA named {name!r}{hint}")


def clean_prompt(text: str) -> str:
    """Collapse the spaces and commas a removed tag leaves behind."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+,", ",", text)
    text = re.sub(r",(\s*,)+", ",", text)
    return text.strip(" ,")
