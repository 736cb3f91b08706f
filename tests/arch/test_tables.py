"""Shipped configs and module tables: they match the public SD1.5 / SD2.1 / SDXL architectures."""

from __future__ import annotations

import json

import pytest

from sdlora.arch.family import FAMILIES
from sdlora.arch.tables import (
    ModuleInfo,
    ModuleTable,
    build_table_from_config_dir,
    config_dir,
    embedded_table,
    family_table,
    match_family,
    table_for_model,
)
from sdlora.embedded import weights_dir
from sdlora.errors import ConfigError


@pytest.mark.parametrize("family", FAMILIES)
def test_shipped_table_equals_fresh_meta_build(family):
    built = build_table_from_config_dir(config_dir(family))
    shipped = family_table(family)
    assert dict(built.items()) == dict(shipped.items())
    assert built.family == shipped.family == family


def test_shipped_embedded_table_equals_fresh_meta_build():
    """`verify --base embedded` reads sdlora/data/modules_embedded.json; it must stay what the embedded
    model's configs build (regenerate with scripts/gen_module_tables.py)."""
    built = build_table_from_config_dir(weights_dir())
    shipped = embedded_table()
    assert len(shipped) > 100
    assert dict(built.items()) == dict(shipped.items())
    assert built.family == shipped.family


@pytest.mark.parametrize(
    ("family", "context", "text_widths", "te_layers"),
    [
        ("sd1", 768, {"text_encoder": 768}, {"text_encoder": 12}),
        ("sd2", 1024, {"text_encoder": 1024}, {"text_encoder": 23}),
        (
            "sdxl",
            2048,
            {"text_encoder": 768, "text_encoder_2": 1280},
            {"text_encoder": 12, "text_encoder_2": 32},
        ),
    ],
)
def test_family_tables_have_the_public_architecture_numbers(family, context, text_widths, te_layers):
    table = family_table(family)
    kv = [info.shape for name, info in table.items() if name.endswith(("attn2.to_k", "attn2.to_v"))]
    assert kv and {shape[1] for shape in kv} == {context}
    for component, width in text_widths.items():
        q = table[f"{component}.text_model.encoder.layers.0.self_attn.q_proj"]
        assert q == ModuleInfo((width, width), "linear")
        layers = {n.split(".")[4] for n in table if n.startswith(f"{component}.text_model.encoder.layers.")}
        assert len(layers) == te_layers[component]


def test_projection_layers_follow_use_linear_projection():
    assert family_table("sd1")["unet.down_blocks.0.attentions.0.proj_in"] == ModuleInfo(
        (320, 320, 1, 1), "conv"
    )
    assert family_table("sd2")["unet.down_blocks.0.attentions.0.proj_in"] == ModuleInfo((320, 320), "linear")
    assert family_table("sdxl")["unet.down_blocks.1.attentions.0.proj_in"] == ModuleInfo((640, 640), "linear")


def test_sdxl_specifics():
    table = family_table("sdxl")
    assert table["unet.add_embedding.linear_1"].shape == (1280, 2816)
    assert table["text_encoder_2.text_projection"] == ModuleInfo((1280, 1280), "linear")
    assert not any(n.startswith("unet.down_blocks.0.attentions") for n in table)
    # transformer_layers_per_block [1, 2, 10]
    blocks = {
        n.split(".transformer_blocks.")[1].split(".")[0]
        for n in table
        if "down_blocks.2.attentions.0." in n and ".transformer_blocks." in n
    }
    assert blocks == {str(i) for i in range(10)}


def test_config_files_hold_the_public_values():
    sd21 = json.loads((config_dir("sd2") / "scheduler" / "scheduler_config.json").read_text())
    assert sd21["prediction_type"] == "v_prediction"
    assert json.loads((config_dir("sd2") / "unet" / "config.json").read_text())["sample_size"] == 96
    xl = json.loads((config_dir("sdxl") / "model_index.json").read_text())
    assert xl["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    te2 = json.loads((config_dir("sdxl") / "text_encoder_2" / "config.json").read_text())
    assert (te2["hidden_size"], te2["num_hidden_layers"]) == (1280, 32)


def test_family_table_rejects_unknown_family():
    with pytest.raises(ConfigError, match="unknown model family 'sd3'"):
        family_table("sd3")


def test_table_for_live_tiny_models(tiny_unet, tiny_text_encoder):
    unet = table_for_model(tiny_unet)
    assert unet.family is None
    assert unet["unet.conv_in"] == ModuleInfo((32, 4, 3, 3), "conv")
    assert unet["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"] == ModuleInfo(
        (64, 32), "linear"
    )
    text = table_for_model(tiny_text_encoder)
    assert "text_encoder.text_model.encoder.layers.1.mlp.fc2" in text
    assert text.components() == ["text_encoder"]


def test_table_for_pipeline_like_object(tiny_unet, tiny_text_encoder):
    class Pipe:  # what a diffusers pipeline exposes: component attributes
        unet = tiny_unet
        text_encoder = tiny_text_encoder
        vae = None

    table = table_for_model(Pipe())
    assert table.components() == ["unet", "text_encoder"]
    assert len(table) == len(table_for_model(tiny_unet)) + len(table_for_model(tiny_text_encoder))
    assert table_for_model(Pipe(), component="text_encoder").components() == ["text_encoder"]


def test_live_table_skips_adapter_layers(tiny_text_encoder):
    import torch

    attn = tiny_text_encoder.encoder.layers[0].self_attn

    class Wrapped(torch.nn.Module):  # PEFT-style wrapper: base_layer + lora_A/lora_B
        def __init__(self, base):
            super().__init__()
            self.base_layer = base
            self.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(32, 4, bias=False)})
            self.lora_B = torch.nn.ModuleDict({"default": torch.nn.Linear(4, 32, bias=False)})

    before = table_for_model(tiny_text_encoder)
    attn.q_proj = Wrapped(attn.q_proj)
    after = table_for_model(tiny_text_encoder)
    assert dict(after.items()) == dict(before.items())


def test_match_family_recognises_a_component_subset():
    unet_only = family_table("sd2").component("unet")
    assert match_family(unet_only) == "sd2"
    modules = dict(unet_only.items())
    modules.pop(next(iter(modules)))
    assert match_family(ModuleTable(modules)) is None


def test_build_from_single_component_folder_and_errors(tmp_path):
    table = build_table_from_config_dir(config_dir("sd1") / "text_encoder")
    assert table.components() == ["text_encoder"] and table.family == "sd1"
    with pytest.raises(ConfigError, match="no unet/config.json"):
        build_table_from_config_dir(tmp_path)
    with pytest.raises(ConfigError, match="not a folder"):
        build_table_from_config_dir(tmp_path / "missing")
    (tmp_path / "model_index.json").write_text('{"unet": ["diffusers", "UNet2DConditionModel"]}')
    with pytest.raises(ConfigError, match="lists unet but"):
        build_table_from_config_dir(tmp_path)


def test_importing_naming_and_tables_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, sdlora.arch.naming, sdlora.arch.family, sdlora.report, sdlora.cli.verify;"
        "from sdlora.arch.tables import family_table; family_table('sdxl');"
        "from sdlora.arch.naming import kohya_lookup; kohya_lookup('sdxl');"
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
