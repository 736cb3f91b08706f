"""`sdlora verify`: in-process CLI runs on wild files and on files built here."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sdlora.arch.tables import config_dir
from sdlora.cli import main


def write_kohya(path, names_shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]):
    tensors = {}
    for name, (down, up) in names_shapes.items():
        tensors[f"{name}.lora_down.weight"] = torch.randn(*down)
        tensors[f"{name}.lora_up.weight"] = torch.randn(*up)
        tensors[f"{name}.alpha"] = torch.tensor(float(down[0]))
    save_file(tensors, str(path))
    return path


def test_verify_wild_file_against_sd1(wild_loras, capsys):
    code = main(["verify", str(wild_loras / "lycoris_lokr_sd1_d4_f16.safetensors"), "--base", "sd1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "OK: 1750 of 1750 keys applied" in out


def test_verify_json_reports_family_mismatch(wild_loras, capsys):
    code = main(
        ["verify", str(wild_loras / "diffusers_unet_sd15_r4_f32.safetensors"), "--base", "sdxl", "--json"]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert data["ok"] is False and data["lora_family"] == "sd1" and data["target_family"] == "sdxl"
    assert data["family_mismatch"] == "family mismatch: this LoRA is for SD1.x, the target is SDXL"
    assert len(data["keys"]) == 256
    verdicts = {k["verdict"] for k in data["keys"]}
    assert verdicts <= {"applied", "unknown_module", "shape_mismatch"} and "unknown_module" in verdicts


def test_verify_sdxl_sgm_file_against_model_folder(tmp_path, capsys):
    path = write_kohya(
        tmp_path / "xl.safetensors",
        {
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k": ((4, 2048), (640, 4)),
            "lora_unet_output_blocks_2_2_conv": ((4, 1280, 3, 3), (1280, 4, 1, 1)),
            "lora_te2_text_model_encoder_layers_31_mlp_fc2": ((4, 5120), (1280, 4)),
        },
    )
    assert main(["verify", str(path), "--base", "sdxl"]) == 0
    assert "OK: 9 of 9 keys applied" in capsys.readouterr().out


def test_verify_reports_bad_keys_with_exit_1(tmp_path, capsys):
    path = write_kohya(
        tmp_path / "bad.safetensors",
        {
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": ((4, 1024), (320, 4)),
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": ((4, 320), (320, 4)),
        },
    )
    code = main(["verify", str(path), "--base", str(config_dir("sd1"))])
    out = capsys.readouterr().out
    assert code == 1
    assert "shape_mismatch" in out and "NOT OK: 3 of 6 keys applied, 3 not" in out


def test_verify_bad_base_exits_2(wild_loras, capsys):
    code = main(["verify", str(wild_loras / "peft_te_only_sd15_r8.safetensors"), "--base", "sd3"])
    assert code == 2
    assert "is not 'embedded', a family (sd1, sd2, sdxl)" in capsys.readouterr().err


def test_verify_help_states_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    assert "0 every key applies, 1 some keys do not" in capsys.readouterr().out


def test_ldm_named_sd1_file_reads_onto_diffusers_modules(tmp_path, capsys):
    from sdlora.formats import load_lora

    path = write_kohya(
        tmp_path / "ldm.safetensors",
        {
            "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k": ((4, 768), (320, 4)),
            "lora_unet_output_blocks_2_1_conv": ((4, 1280, 3, 3), (1280, 4, 1, 1)),
            "lora_unet_middle_block_0_emb_layers_1": ((4, 1280), (1280, 4)),
        },
    )
    lora = load_lora(path)
    assert lora.family == "sd1"
    assert sorted(lora.modules) == [
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
        "unet.mid_block.resnets.0.time_emb_proj",
        "unet.up_blocks.0.upsamplers.0.conv",
    ]
    assert main(["verify", str(path), "--base", "sd1"]) == 0
    assert "OK: 9 of 9 keys applied" in capsys.readouterr().out


def test_family_mismatch_against_a_model_folder(wild_loras, capsys):
    path = wild_loras / "peft_te_only_sd15_r8.safetensors"
    code = main(["verify", str(path), "--base", str(config_dir("sd2")), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert data["family_mismatch"] == "family mismatch: this LoRA is for SD1.x, the target is SD2.x"
    assert data["counts"] == {"text_encoder": {"shape_mismatch": 48}}
