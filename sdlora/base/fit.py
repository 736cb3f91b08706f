"""Does a LoRA fit a base model? Answered from the LoRA's header and the base's configs/header, no tensors read.

    >>> fit = check_fit("style.safetensors", "models/v1-5-pruned.safetensors")
    >>> fit.fits, fit.needs, fit.reason
    (False, 'sdxl', 'an SDXL LoRA; the base v1-5-pruned.safetensors is SD1.x')

Rules, cheapest evidence first:
* both families known (sd1/sd2/sdxl, `sdlora.arch.family` from shapes): they must be equal;
* the LoRA's family known, the base's not: no fit (an SD LoRA on the embedded model);
* the LoRA shows no family (a custom-size model, or too few layers to tell): every input and output width of the LoRA's layers must be a width of a
  layer of the same part (UNet / text encoder) of the base. This is the header-only shadow of the stack's
  full per-module shape check (`LoraStack.add` still runs that one): a LoRA that passes here can still be
  refused there, never the other way round for family and width mismatches.
A LoRA the stack cannot read at all (another architecture, a damaged file) does not fit, with the reason.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sdlora.arch.family import FAMILY_NAMES, detect_family
from sdlora.base.listing import BaseModel, base_widths, describe_base
from sdlora.base.ref import EMBEDDED
from sdlora.errors import SdloraError
from sdlora.formats import resolve_paths
from sdlora.header import check_is_lora, read_header

CUSTOM = "custom"  # Fit.needs for a LoRA made for a model of no SD size

# raw-key endings: tensors whose dim 1 is the layer's input width, and whose dim 0 is its output width
_IN_SIDE = re.compile(r"(lora_down\.weight|lora\.down\.weight|lora_A(\.default)?\.weight|"
                      r"lora_linear_layer\.down\.weight|:down|hada_w[12]_b)$")
_OUT_SIDE = re.compile(r"(lora_up\.weight|lora\.up\.weight|lora_B(\.default)?\.weight|"
                       r"lora_linear_layer\.up\.weight|:up|hada_w[12]_a)$")
_TEXT = re.compile(r"lora_te\d?_|text_encoder|text_model|^te\d?[._]|cond_stage_model|conditioner")


@dataclass(frozen=True)
class Fit:
    """The answer: `fits`, the family the LoRA needs ("sd1"/"sd2"/"sdxl", "custom", or None when it cannot
    be read), and a one-line `reason` for a person."""

    fits: bool
    needs: str | None
    reason: str

    @property
    def short(self) -> str:
        """A table cell: 'fits' or 'needs SDXL' / 'needs its own base' / 'unreadable'."""
        if self.fits:
            return "fits"
        if self.needs is None:
            return "unreadable"
        return "needs its own base" if self.needs == CUSTOM else f"needs {FAMILY_NAMES[self.needs]}"


@dataclass(frozen=True)
class LoraShape:
    """What a LoRA's header says about the model it was made for."""

    family: str | None
    widths: dict[str, frozenset[tuple[str, int]]]  # "unet"/"text" -> {("in"|"out", width)}


def read_lora_shape(path: str | os.PathLike) -> LoraShape:
    """Family and layer widths from the LoRA's header alone. Raises FormatError for unreadable files."""
    file_path, _ = resolve_paths(Path(path))
    header = read_header(file_path)
    check_is_lora(header)
    shapes = {key: info.shape for key, info in header.tensors.items()}
    try:
        family = detect_family(shapes, header.metadata)
    except SdloraError as err:
        raise type(err)(f"{file_path.name}: {err}") from None
    widths: dict[str, set] = {"unet": set(), "text": set()}
    for key, shape in shapes.items():
        side = "text" if _TEXT.search(key) else "unet"
        if len(shape) >= 2 and _IN_SIDE.search(key):
            widths[side].add(("in", int(shape[1])))
        elif len(shape) >= 2 and _OUT_SIDE.search(key):
            widths[side].add(("out", int(shape[0])))
    return LoraShape(family, {side: frozenset(v) for side, v in widths.items()})


def check_fit(lora: str | os.PathLike, base: str | os.PathLike | BaseModel) -> Fit:
    """Whether LoRA file `lora` fits `base` ("embedded", a model folder, a checkpoint, or a BaseModel).

    Never raises for a bad LoRA file: the Fit says why it cannot be used. Raises SdloraError only when the
    base itself cannot be described (the caller chose it)."""
    info = base if isinstance(base, BaseModel) else describe_base(str(base))
    try:
        shape = read_lora_shape(lora)
    except (SdloraError, OSError) as err:
        return Fit(False, None, f"cannot be used: {err}")
    return fit_shape(shape, info)


def fit_shape(shape: LoraShape, base: BaseModel) -> Fit:
    """`check_fit` for a LoRA header already read (a library table checks many LoRAs against one base)."""
    name = _base_name(base)
    if shape.family and base.family:
        if shape.family == base.family:
            return Fit(True, shape.family, f"a {FAMILY_NAMES[shape.family]} LoRA, the base {name} is too")
        return Fit(False, shape.family, f"a {FAMILY_NAMES[shape.family]} LoRA; the base {name} is "
                                        f"{FAMILY_NAMES[base.family]}")
    if shape.family:
        return Fit(False, shape.family, f"a {FAMILY_NAMES[shape.family]} LoRA; the base {name} is a "
                                        "custom-size model")
    return _fit_widths(shape, base, name)


def _fit_widths(shape: LoraShape, base: BaseModel, name: str) -> Fit:
    """No family evidence in the LoRA (or neither side has a family): compare layer widths."""
    have = base_widths(base.value, base.family)
    for side, part in (("unet", "UNet"), ("text", "text encoder")):
        missing = sorted(w for w in shape.widths.get(side, ()) if w not in have[side])
        if missing:
            shown = ", ".join(f"{kind} {width}" for kind, width in missing[:3])
            return Fit(False, CUSTOM, f"made for another model: its {part} layer widths ({shown}) are not in "
                                      f"the base {name}")
    return Fit(True, base.family or CUSTOM, f"its layer widths match the base {name}")


def _base_name(base: BaseModel) -> str:
    return EMBEDDED if base.kind == "embedded" else Path(base.value).name
