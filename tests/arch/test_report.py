"""Load report: every key gets a verdict; family mismatches are said plainly; nothing is dropped."""

from __future__ import annotations

import json

import pytest
import torch

from sdlora.arch.tables import table_for_model
from sdlora.report import check_lora
from sdlora.weights import KeyIssue, LoraModule, LoraState

Q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
K2 = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
PROJ_IN = "unet.down_blocks.0.attentions.0.proj_in"


def lora_module(out: int, inp: int, rank: int = 4, kernel: tuple[int, ...] = ()) -> LoraModule:
    down = torch.zeros(rank, inp, *kernel)
    up = torch.zeros(out, rank, *((1, 1) if kernel else ()))
    return LoraModule("lora", {"down": down, "up": up}, alpha=1.0)


def state(modules: dict[str, LoraModule], family: str | None = "sd1", **extra) -> LoraState:
    source_keys = {
        name: [f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"] for name in modules
    }
    return LoraState(modules=modules, family=family, source_keys=source_keys, **extra)


def by_key(report):
    return {v.key: v for v in report.verdicts}


def test_matching_modules_are_applied():
    lora = state(
        {Q: lora_module(320, 320), K2: lora_module(320, 768), PROJ_IN: lora_module(320, 320, kernel=(1, 1))}
    )
    report = check_lora(lora, "sd1")
    assert report.ok and report.family_mismatch is None
    assert len(report.verdicts) == 9 and {v.verdict for v in report.verdicts} == {"applied"}
    assert report.counts() == {"unet": {"applied": 9}}


def test_unknown_module_names_the_nearest_module():
    name = "unet.down_blocks.0.attention.0.transformer_blocks.0.attn1.to_q"  # a typo: attention
    report = check_lora(state({name: lora_module(320, 320)}), "sd1")
    verdict = by_key(report)[f"{name}.lora_down.weight"]
    assert verdict.verdict == "unknown_module" and not report.ok
    assert verdict.nearest == "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert "nearest module: unet.down_blocks.0.attentions.0" in report.format_table()


def test_shape_mismatch_gives_both_shapes():
    report = check_lora(state({K2: lora_module(320, 1024)}), "sd1")
    verdict = by_key(report)[f"{K2}.alpha"]
    assert verdict.verdict == "shape_mismatch"
    assert (verdict.expected_shape, verdict.found_shape) == ((320, 768), (320, 1024))
    assert "ΔW is 320x1024, the linear weight is 320x768" in verdict.detail


def test_linear_delta_on_1x1_conv_and_flattened_conv_apply():
    # SD1 proj_in is a 1x1 conv; a Linear-shaped ΔW (e.g. from an SD2-style writer) reshapes exactly
    report = check_lora(state({PROJ_IN: lora_module(320, 320)}), "sd1")
    assert report.ok


def test_reader_issues_and_unsupported_kinds_are_reported():
    lora = state({Q: lora_module(320, 320)})
    lora.modules["unet.conv_in"] = LoraModule("oft", {"oft_blocks": torch.zeros(4, 4, 4)})
    lora.source_keys["unet.conv_in"] = ["lora_unet_conv_in.oft_blocks"]
    lora.issues.append(KeyIssue("lora_unet_conv_in.oft_diag", "unsupported_kind", "OFT is not supported"))
    lora.issues.append(KeyIssue("lora_unet_x.placeholder", "ignored", "empty tensor"))
    verdicts = by_key(check_lora(lora, "sd1"))
    assert verdicts["lora_unet_conv_in.oft_blocks"].verdict == "unsupported_kind"
    assert verdicts["lora_unet_conv_in.oft_diag"].detail == "OFT is not supported"
    assert verdicts["lora_unet_x.placeholder"].verdict == "ignored"
    assert len(verdicts) == 3 + 1 + 2


def test_extras_are_listed_not_dropped():
    lora = state({Q: lora_module(320, 320)}, extras={"embeddings": {"<s1>": torch.zeros(768)}})
    report = check_lora(lora, "sd1")
    assert report.ok
    assert by_key(report)["embeddings:<s1>"].verdict == "extra"


def test_family_mismatch_is_reported_clearly():
    report = check_lora(state({Q: lora_module(320, 320), K2: lora_module(320, 768)}), "sdxl")
    assert not report.ok
    assert report.family_mismatch == "family mismatch: this LoRA is for SD1.x, the target is SDXL"
    text = report.format_table()
    assert "family mismatch: this LoRA is for SD1.x, the target is SDXL" in text
    assert "the target has no module unet.down_blocks.0.attentions.0" in text
    assert "NOT OK: 0 of 6 keys applied, 6 not" in text


def test_text_encoder_against_a_unet_only_target(tiny_unet):
    name = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    report = check_lora(state({name: lora_module(32, 32)}, family=None), table_for_model(tiny_unet))
    verdict = by_key(report)[f"{name}.lora_up.weight"]
    assert verdict.verdict == "unknown_module" and verdict.detail == "the target has no text_encoder"


def test_check_against_a_live_tiny_model(tiny_unet):
    name = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    good = check_lora(state({name: lora_module(64, 32)}, family=None), table_for_model(tiny_unet))
    bad = check_lora(state({name: lora_module(64, 768)}, family=None), table_for_model(tiny_unet))
    assert good.ok and not bad.ok
    assert bad.problems()[0].expected_shape == (64, 32)


def test_to_dict_is_json_ready():
    report = check_lora(state({K2: lora_module(320, 1024)}), "sd1")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["target_family"] == "sd1" and data["lora_family"] == "sd1"
    assert data["counts"] == {"unet": {"shape_mismatch": 3}}
    assert data["keys"][0]["expected_shape"] == [320, 768]


def test_bad_target_type():
    with pytest.raises(TypeError, match="family name or a module table"):
        check_lora(state({}), 3)


def test_lora_family_comes_from_shapes_when_the_target_is_a_table():
    from sdlora.arch.tables import family_table

    lora = state({K2: lora_module(320, 768)}, family="sdxl")  # e.g. a loader adopted the table's family
    report = check_lora(lora, family_table("sdxl"))
    assert report.lora_family == "sd1"
    assert report.family_mismatch == "family mismatch: this LoRA is for SD1.x, the target is SDXL"
