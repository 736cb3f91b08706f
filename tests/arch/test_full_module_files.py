"""Integration: a Kohya file with a LoRA on EVERY Linear and Conv2d of SD1.5 / SD2.1 / SDXL, written by
sdlora, carries exactly the golden names, reads back onto the same modules and verifies as fully applied."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from sdlora.arch.family import FAMILIES
from sdlora.arch.tables import family_table
from sdlora.configs import CONFIG_DIRS
from sdlora.formats import load_lora, save_lora
from sdlora.report import check_lora
from sdlora.weights import LoraModule, LoraState

from .test_naming import read_golden


def rank1_module(shape: tuple[int, ...]) -> LoraModule:
    """Rank-1 LoRA with the module's shape: down (1, in[, kh, kw]), up (out, 1[, 1, 1])."""
    out, inp, *kernel = shape
    down = torch.full((1, inp, *kernel), 0.01, dtype=torch.float16)
    up = torch.full((out, 1, *([1, 1] if kernel else [])), 0.01, dtype=torch.float16)
    return LoraModule("lora", {"down": down, "up": up}, alpha=1.0)


def lora_names_in(path) -> set[str]:
    with open(path, "rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        header = json.loads(stream.read(length))
    header.pop("__metadata__", None)
    return {key.split(".", 1)[0] for key in header}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_module_written_read_and_verified(family, tmp_path):
    table = family_table(family)
    lora = LoraState(modules={name: rank1_module(info.shape) for name, info in table.items()}, family=family)
    path = tmp_path / f"all_{CONFIG_DIRS[family]}.safetensors"
    save_lora(lora, path)
    assert lora_names_in(path) == {name for name, _ in read_golden(family)}
    back = load_lora(path)
    assert back.family == family
    assert sorted(back.modules) == sorted(table)
    report = check_lora(back, family)
    assert report.ok, report.format_table()
    assert len(report.verdicts) == 3 * len(table)  # lora_down, lora_up, alpha per module
