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
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from sdlora.errors import ConfigError
from sdlora.strength import Strength

_TAG = re.compile(r"<(lora|lyco):([^<>]+)>", re.IGNORECASE)


@dataclass
class LoraRequest:
    """One `<lora:...>` tag: which LoRA and how strong. Feed it to `LoraStack.add(path, request.strength)`."""

    name: str
    strength: Strength = field(default_factory=Strength)
    tag: str = ""  # the tag as written


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
    return LoraRequest(name=name, strength=Strength.from_fields(fields, tag), tag=tag)


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
