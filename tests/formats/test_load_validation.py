"""Structural validation at load (issue 15, items 2-4): one regression test per loading bullet of the
issue's "Why". Every refusal is a FormatError naming the file and the key; a successful load means
`delta()` of every module works."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sdlora.cli import main
from sdlora.errors import FormatError
from sdlora.formats import PEFT_NO_CONFIG, load_lora
from sdlora.formats import kohya as kohya_reader
from sdlora.weights import LoraState

K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"  # SD1: 320 x 768
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"  # SD1: 320 x 320 x 3 x 3


def _save(tmp_path, tensors, name="bad.safetensors", metadata=None):
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata)
    return path


def _lora(rank=4, out=320, inp=768, prefix=K):
    return {
        f"{prefix}.lora_down.weight": torch.randn(rank, inp),
        f"{prefix}.lora_up.weight": torch.randn(out, rank),
    }


def _refused(path, *words):
    with pytest.raises(FormatError) as info:
        load_lora(path)
    message = str(info.value)
    assert path.name in message, message
    for word in words:
        assert word in message, message


def test_rank_mismatch_and_transposed_down_are_refused(tmp_path):
    tensors = _lora()
    tensors[f"{K}.lora_down.weight"] = torch.randn(8, 768)
    _refused(_save(tmp_path, tensors), f"{K}.lora_up.weight", "rank 8")
    tensors = _lora()
    tensors[f"{K}.lora_down.weight"] = torch.randn(768, 4)  # transposed
    _refused(_save(tmp_path, tensors, "transposed.safetensors"), "transposed")


def test_multi_element_alpha_and_scale_are_refused(tmp_path):
    for suffix in ("alpha", "scale"):
        tensors = {**_lora(), f"{K}.{suffix}": torch.tensor([4.0, 4.0])}
        _refused(_save(tmp_path, tensors, f"{suffix}.safetensors"), f"{K}.{suffix}", "one value")


@pytest.mark.parametrize("suffix", ["lora_down.weight", "lora_up.weight", "dora_scale"])
def test_zero_dim_factors_are_refused(tmp_path, suffix):
    tensors = {**_lora(), f"{K}.{suffix}": torch.tensor(1.0)}
    _refused(_save(tmp_path, tensors), f"{K}.{suffix}")


def test_lokr_with_w1_a_but_no_w1_b_is_refused(tmp_path):
    tensors = {
        f"{K}.lokr_w1_a": torch.randn(4, 2),
        f"{K}.lokr_w2": torch.randn(80, 192),
        f"{K}.alpha": torch.tensor(2.0),
    }
    _refused(_save(tmp_path, tensors), "lokr_w1_b")
    tensors[f"{K}.dora_scale"] = torch.ones(320, 1)  # the DoRA axis is derived from the factors: no KeyError
    _refused(_save(tmp_path, tensors, "dora.safetensors"), "lokr_w1_b")


def test_loha_and_tucker_shapes_must_combine(tmp_path):
    loha = {f"{K}.hada_w1_a": torch.randn(320, 4), f"{K}.hada_w1_b": torch.randn(4, 768),
            f"{K}.hada_w2_a": torch.randn(320, 4), f"{K}.hada_w2_b": torch.randn(4, 760)}  # fmt: skip
    _refused(_save(tmp_path, loha), "different shapes")
    tucker = {f"{CONV}.lora_down.weight": torch.randn(4, 320, 1, 1), f"{CONV}.lora_up.weight": torch.randn(320, 4, 1, 1),
              f"{CONV}.lora_mid.weight": torch.randn(4, 3, 3, 3)}  # fmt: skip
    _refused(_save(tmp_path, tucker, "tucker.safetensors"), f"{CONV}.lora_mid.weight", "Tucker")


def test_dora_magnitude_must_cover_one_axis(tmp_path):
    tensors = {**_lora(), f"{K}.dora_scale": torch.ones(320, 768)}
    _refused(_save(tmp_path, tensors), f"{K}.dora_scale", "along that axis only")
    tensors[f"{K}.dora_scale"] = torch.ones(300, 1)
    _refused(_save(tmp_path, tensors, "short.safetensors"), f"{K}.dora_scale")
    conv = {f"{CONV}.lora_down.weight": torch.randn(2, 320, 3, 3), f"{CONV}.lora_up.weight": torch.randn(320, 2, 1, 1),
            f"{CONV}.dora_scale": torch.ones(1, 1, 320, 1)}  # fmt: skip
    _refused(_save(tmp_path, conv, "kernel_axis.safetensors"), f"{CONV}.dora_scale")  # neither out nor in


def test_boolean_in_a_shape_is_a_format_error(tmp_path):
    path = _save(tmp_path, _lora())
    raw = path.read_bytes()
    patched = raw.replace(b'"shape":[4,768]', b'"shape":[true,768]')
    assert patched != raw
    path.write_bytes(patched)
    _refused(path, "lora_down.weight")


@pytest.mark.parametrize(
    "packed",
    ['"a string"', "[1, 2]", '{"unet.lora_alpha": "eight", "unet.r": 4}', '{"alpha_pattern": {"(": 2}}', "{"],
    ids=["string", "list", "text-alpha", "bad-pattern", "not-json"],
)
def test_lora_adapter_metadata_of_wrong_type_is_refused(tmp_path, packed, capsys):
    prefix = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    tensors = {f"{prefix}.lora_A.weight": torch.randn(4, 768), f"{prefix}.lora_B.weight": torch.randn(320, 4)}
    path = _save(tmp_path, tensors, metadata={"lora_adapter_metadata": packed})
    _refused(path, "lora_adapter_metadata")
    assert main(["inspect", str(path), "--no-hash"]) == 2  # the header-only view refuses it the same way
    assert "lora_adapter_metadata" in capsys.readouterr().err


def test_a_file_with_no_usable_module_is_refused(tmp_path, capsys):
    tensors = {}
    for i in range(5):
        tensors.update(_lora(prefix=f"lora_unet_nowhere_{i}"))
    path = _save(tmp_path, tensors)
    _refused(path, "no usable module", "10 keys", "lora_unet_nowhere_0", "kohya")
    assert main(["verify", str(path), "--base", "sd1"]) == 2
    assert "no usable module" in capsys.readouterr().err


def test_peft_weights_without_config_warn_everywhere(tmp_path, wild_loras, capsys):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(
        (wild_loras / "peft_te_only_sd15_r8.safetensors").read_bytes()
    )
    lora = load_lora(folder)
    assert lora.notes == [PEFT_NO_CONFIG]
    assert main(["inspect", str(folder), "--no-hash"]) == 0
    assert f"warning: {PEFT_NO_CONFIG}" in capsys.readouterr().out
    assert main(["verify", str(folder), "--base", "sd1", "--json"]) == 0
    assert PEFT_NO_CONFIG in json.loads(capsys.readouterr().out)["notes"]
    with_config = load_lora(wild_loras / "peft_te_only_sd15_r8.safetensors")  # its config sits beside it
    assert with_config.notes == []


class _CountingList(list):
    """A list that counts the items handed out by iteration."""

    visited = 0

    def __iter__(self):
        for item in super().__iter__():
            _CountingList.visited += 1
            yield item


def test_unknown_keys_are_read_in_linear_work(tmp_path, monkeypatch):
    """No timing (house rule): the reader once scanned all earlier issues per unknown module (quadratic).
    Count the issues visited by iteration while reading n unknown modules: it must not grow with n^2."""

    class CountingState(LoraState):
        def __post_init__(self):
            super().__post_init__()
            self.issues = _CountingList(self.issues)

    monkeypatch.setattr(kohya_reader, "LoraState", CountingState)
    tensors = _lora()  # one real module, so that nearest names are suggested (for the first few only)
    for i in range(2000):
        tensors.update(_lora(rank=1, out=2, inp=2, prefix=f"lora_unet_nowhere_{i}"))
    _CountingList.visited = 0
    lora = load_lora(_save(tmp_path, tensors))
    assert len(lora.issues) == 4000
    assert _CountingList.visited <= 4 * len(lora.issues), _CountingList.visited
