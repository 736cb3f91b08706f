"""Issue 22 item 9: `verify` against the embedded model: `--base` defaults to it (as the README says), the
family mismatch is noted, keys of modules the embedded model lacks say so (not "in sd1"), and text-encoder
keys count under text_encoder, not "other"."""

from __future__ import annotations

import json

from sdlora.cli import main


def test_an_sd1_lora_against_the_default_base_embedded(wild_loras, capsys):
    code = main(["verify", str(wild_loras / "lycoris_lokr_sd1_d4_f16.safetensors"), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert data["target_family"] == "embedded" and data["target"].startswith("the embedded model with ")
    assert data["family_mismatch"] == "family mismatch: this LoRA is for SD1.x, the target is the embedded model"
    assert set(data["counts"]) == {"unet", "text_encoder"}  # no "other": every key is of a component
    unknown = [k for k in data["keys"] if k["verdict"] == "unknown_module"]
    assert unknown and all("in the model checked against" in k["detail"] for k in unknown)
    assert not any("in sd1" in k["detail"] for k in data["keys"])


def test_the_table_says_the_note(wild_loras, capsys):
    main(["verify", str(wild_loras / "diffusers_unet_sd15_r4_f32.safetensors"), "--base", "embedded"])
    out = capsys.readouterr().out
    assert "note: family mismatch: this LoRA is for SD1.x, the target is the embedded model" in out


def test_the_sd1_table_still_applies_it(wild_loras, capsys):
    assert main(["verify", str(wild_loras / "lycoris_lokr_sd1_d4_f16.safetensors"), "--base", "sd1"]) == 0
