"""Writers: canonical Kohya (per-module alpha, ss_*/modelspec metadata, sshs hashes as sd-scripts computes
them, dtype, carried metadata) and diffusers (PEFT-era keys + lora_adapter_metadata); the CLI commands."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save

from sdlora.cli import main
from sdlora.formats import load_lora, save_lora
from sdlora.header import read_header, tensor_data_sha256
from sdlora.weights import LoraModule, LoraState

Q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
K2 = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
TE = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"


def _lora(alpha_q=2.0, alpha_k=None, rank_k=4, big=False):
    g = torch.Generator().manual_seed(0)
    width = 4 if not big else 600  # big: > 1 MiB of tensor data, so the legacy hash window has bytes
    modules = {
        Q: LoraModule("lora", {"down": torch.randn(width, 320, generator=g), "up": torch.randn(320, width, generator=g)},
                      alpha=alpha_q),
        K2: LoraModule("lora", {"down": torch.randn(rank_k, 768, generator=g), "up": torch.randn(320, rank_k, generator=g)},
                       alpha=alpha_k),
        TE: LoraModule("lora", {"down": torch.randn(4, 768, generator=g), "up": torch.randn(768, 4, generator=g)}, alpha=4.0),
    }  # fmt: skip
    return LoraState(modules=modules, metadata={"ss_output_name": "my_style", "custom": "kept"}, family="sd1")


def test_kohya_names_alphas_and_minimum_metadata(tmp_path):
    out = tmp_path / "k.safetensors"
    save_lora(_lora(alpha_k=0.0), out)
    tensors = load_file(str(out))
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}
    assert names == {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    }
    alphas = {k: v.item() for k, v in tensors.items() if k.endswith(".alpha")}
    assert len(alphas) == 3 and all(v > 0 for v in alphas.values())  # alpha 0 / None are written as the rank
    assert alphas["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha"] == 4.0
    meta = read_header(out).metadata
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "Dynamic"  # 2, 4, 4
    assert json.loads(meta["ss_network_args"]) == {}
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.implementation"] == "diffusers"
    assert meta["modelspec.title"] == "my_style" and meta["modelspec.resolution"] == "512x512"
    assert meta["modelspec.prediction_type"] == "epsilon" and meta["modelspec.date"].startswith("20")
    assert meta["custom"] == "kept"


@pytest.mark.parametrize(
    ("family", "incoming", "version", "prediction"),
    [
        ("sd1", {"ss_base_model_version": "sd_v1_v"}, "sd_v1_v", "v"),
        ("sd1", {"modelspec.prediction_type": "v"}, "sd_v1_v", "v"),
        ("sd2", {"ss_base_model_version": "sd_v2_v"}, "sd_v2_v", "v"),
        ("sd1", {}, "sd_v1", "epsilon"),
    ],
)
def test_kohya_metadata_keeps_v_prediction(tmp_path, family, incoming, version, prediction):
    lora = _lora()
    lora.family, lora.metadata = family, dict(incoming)
    out = tmp_path / "v.safetensors"
    save_lora(lora, out)
    meta = read_header(out).metadata
    assert meta["ss_base_model_version"] == version
    assert meta["modelspec.prediction_type"] == prediction


def test_sshs_hashes_are_computed_as_sd_scripts_does(tmp_path):
    out = tmp_path / "k.safetensors"
    save_lora(_lora(big=True), out)
    meta = read_header(out).metadata
    assert meta["sshs_model_hash"] == tensor_data_sha256(out)
    # legacy: sha256 of bytes 0x100000..0x110000 of the file serialised with only the ss_* metadata
    tensors = load_file(str(out))
    blob = save(tensors, metadata={k: v for k, v in meta.items() if k.startswith("ss_")})
    assert len(blob) > 0x110000
    assert meta["sshs_legacy_hash"] == hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    # the model hash is independent of metadata: recomputed from that other serialisation
    header_len = int.from_bytes(blob[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(blob[8 + header_len :]).hexdigest()


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)]
)
def test_output_dtype(tmp_path, dtype, torch_dtype):
    out = tmp_path / "k.safetensors"
    save_lora(_lora(), out, dtype=dtype)
    tensors = load_file(str(out))
    weights = [t for k, t in tensors.items() if not k.endswith(".alpha")]
    assert {t.dtype for t in weights} == {torch_dtype}
    back = load_lora(out)
    original = _lora()
    torch.testing.assert_close(
        back.delta(Q), original.delta(Q), rtol=2e-2 if dtype != "fp32" else 1e-6, atol=0.05
    )


def test_diffusers_writer_keys_and_adapter_metadata(tmp_path):
    out = tmp_path / "d.safetensors"
    save_lora(_lora(alpha_k=1.0, rank_k=2), out, format="diffusers")
    tensors = load_file(str(out))
    assert f"{Q}.lora_A.weight" in tensors and f"{TE}.lora_B.weight" in tensors
    meta = read_header(out).metadata
    packed = json.loads(meta["lora_adapter_metadata"])
    assert (
        packed["unet.r"] in (4, 2)
        and packed["text_encoder.r"] == 4
        and packed["text_encoder.lora_alpha"] == 4.0
    )
    assert set(packed["unet.rank_pattern"].values()) | {packed["unet.r"]} == {2, 4}
    back = load_lora(out)
    assert back.format == "diffusers"
    for name in (Q, K2, TE):
        torch.testing.assert_close(back.delta(name), _lora(alpha_k=1.0, rank_k=2).delta(name), rtol=0, atol=0)


def test_metadata_carried_over_on_conversion(tmp_path, wild_loras):
    lora = load_lora(wild_loras / "lycoris_lokr_sd1_d4_f16.safetensors")
    out = tmp_path / "k.safetensors"
    save_lora(lora, out)
    meta = read_header(out).metadata
    original = read_header(wild_loras / "lycoris_lokr_sd1_d4_f16.safetensors").metadata
    for key in ("ss_tag_frequency", "ss_training_comment", "ss_sd_model_name", "ss_learning_rate"):
        assert meta.get(key) == original.get(key)
    assert json.loads(meta["ss_network_args"])["conv_rank"] == "4"  # input args kept, algo recorded
    assert json.loads(meta["ss_network_args"])["algo"] == "lokr"
    assert meta["ss_network_module"] == "lycoris.kohya"


def test_cli_inspect_text_and_json(wild_loras, capsys):
    assert main(["inspect", str(wild_loras / "lycoris_lokr_sd1_d16_f16.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "format:      lycoris" in text and "family:      sd1" in text and "ranks:       16 (350)" in text
    assert "a1111_short_hash: 51a16c07bdd8" in text and "sshs_model_hash_matches: True" in text
    # a caption tag of the training set: a top tag, not a trigger word (the file has no trigger phrase)
    assert "smart falcon" in text.split("top tags:")[1].splitlines()[0]
    assert text.split("trigger words:")[1].splitlines()[0].strip() == "-"
    assert main(["inspect", "--json", str(wild_loras / "peft_te_only_sd15_r8.safetensors")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "peft" and info["alphas"] == {"8": 24} and info["components"] == ["text_encoder"]


def test_cli_inspect_never_imports_torch(wild_loras):
    code = (
        "import sys; from sdlora.cli import main; "
        f"assert main(['inspect', {str(wild_loras / 'lycoris_lokr_sd1_d4_f16.safetensors')!r}]) == 0; "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_cli_convert_prints_a_summary(wild_loras, tmp_path, capsys):
    out = tmp_path / "c.safetensors"
    assert (
        main(
            [
                "convert",
                str(wild_loras / "cloneofsimo_sd15_r1_pti_f32.safetensors"),
                str(out),
                "--dtype",
                "fp16",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "cloneofsimo, family sd1, 192 modules (lora 192)" in text
    assert "kohya, fp16" in text and "2 bundled embeddings: <s1>, <s2>" in text
    back = load_lora(out)
    assert (
        back.format == "kohya"
        and len(back.modules) == 192
        and sorted(back.extras["embeddings"]) == ["<s1>", "<s2>"]
    )
