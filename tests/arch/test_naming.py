"""Canonical names, Kohya names (diffusers-style and LDM/SGM) and live-model lookups."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdlora.arch.components import canonical_name
from sdlora.arch.family import FAMILIES
from sdlora.arch.naming import (
    diffusers_key_name,
    find_module,
    kohya_lookup,
    kohya_name,
    module_map,
    nearest_name,
)
from sdlora.arch.tables import family_table
from sdlora.configs import CONFIG_DIRS
from sdlora.errors import CompatibilityError

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def read_golden(family: str) -> list[tuple[str, str]]:
    lines = (GOLDEN / f"kohya_keys_{CONFIG_DIRS[family]}.txt").read_text().splitlines()
    return [tuple(line.split()[:2]) for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("family", FAMILIES)
def test_golden_kohya_names_match_the_architecture_one_to_one(family):
    """Every Linear/Conv2d of the meta-built architecture has exactly one golden name, and back."""
    table = family_table(family)
    golden = read_golden(family)
    names = [name for name, _ in golden]
    assert len(names) == len(set(names)), "duplicate Kohya names in the golden list"
    assert sorted(canonical for _, canonical in golden) == sorted(table), "golden list and modules differ"
    lookup = kohya_lookup(family)
    for name, canonical in golden:
        assert kohya_name(canonical, family) == name
        assert lookup[name] == canonical


@pytest.mark.parametrize("family", FAMILIES)
def test_every_accepted_spelling_resolves_to_a_module_of_the_family(family):
    table = family_table(family)
    lookup = kohya_lookup(family)
    assert set(lookup.values()) == set(table)
    # diffusers-style, lycoris_ and (for the UNet) LDM/SGM spelling per module, nothing else
    unet = sum(1 for n in table if n.startswith("unet."))
    assert len(lookup) == len(table) + 2 * unet


# (family, Kohya name, canonical module) pairs from docs/formats.md §2.2 and sd-scripts' conversion map
KNOWN_PAIRS = [
    (
        "sd1",
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    ),
    (
        "sd1",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    ),
    ("sd1", "lora_unet_input_blocks_3_0_op", "unet.down_blocks.0.downsamplers.0.conv"),
    ("sd1", "lora_unet_input_blocks_4_0_in_layers_2", "unet.down_blocks.1.resnets.0.conv1"),
    ("sd1", "lora_unet_input_blocks_4_0_skip_connection", "unet.down_blocks.1.resnets.0.conv_shortcut"),
    ("sd1", "lora_unet_input_blocks_11_0_out_layers_3", "unet.down_blocks.3.resnets.1.conv2"),
    ("sd1", "lora_unet_middle_block_1_proj_in", "unet.mid_block.attentions.0.proj_in"),
    ("sd1", "lora_unet_middle_block_2_emb_layers_1", "unet.mid_block.resnets.1.time_emb_proj"),
    ("sd1", "lora_unet_output_blocks_2_1_conv", "unet.up_blocks.0.upsamplers.0.conv"),
    ("sd1", "lora_unet_output_blocks_5_2_conv", "unet.up_blocks.1.upsamplers.0.conv"),
    (
        "sd1",
        "lora_unet_output_blocks_3_1_transformer_blocks_0_ff_net_2",
        "unet.up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2",
    ),
    ("sd1", "lora_unet_output_blocks_11_1_proj_out", "unet.up_blocks.3.attentions.2.proj_out"),
    ("sd1", "lora_unet_time_embed_0", "unet.time_embedding.linear_1"),
    ("sd1", "lora_unet_time_embed_2", "unet.time_embedding.linear_2"),
    ("sd1", "lora_unet_input_blocks_0_0", "unet.conv_in"),
    ("sd1", "lora_unet_out_2", "unet.conv_out"),
    ("sd1", "lora_unet_conv_in", "unet.conv_in"),
    ("sd1", "lycoris_mid_block_attentions_0_proj_in", "unet.mid_block.attentions.0.proj_in"),
    (
        "sd1",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
    ),
    (
        "sd2",
        "lora_te_text_model_encoder_layers_22_mlp_fc2",
        "text_encoder.text_model.encoder.layers.22.mlp.fc2",
    ),
    (
        "sdxl",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    ),
    ("sdxl", "lora_unet_input_blocks_1_0_in_layers_2", "unet.down_blocks.0.resnets.0.conv1"),
    ("sdxl", "lora_unet_input_blocks_1_0_emb_layers_1", "unet.down_blocks.0.resnets.0.time_emb_proj"),
    ("sdxl", "lora_unet_input_blocks_6_0_op", "unet.down_blocks.1.downsamplers.0.conv"),
    (
        "sdxl",
        "lora_unet_input_blocks_7_1_transformer_blocks_9_attn2_to_k",
        "unet.down_blocks.2.attentions.0.transformer_blocks.9.attn2.to_k",
    ),
    (
        "sdxl",
        "lora_unet_output_blocks_0_1_transformer_blocks_9_attn2_to_k",
        "unet.up_blocks.0.attentions.0.transformer_blocks.9.attn2.to_k",
    ),
    ("sdxl", "lora_unet_output_blocks_2_2_conv", "unet.up_blocks.0.upsamplers.0.conv"),
    ("sdxl", "lora_unet_output_blocks_5_2_conv", "unet.up_blocks.1.upsamplers.0.conv"),
    ("sdxl", "lora_unet_output_blocks_8_0_skip_connection", "unet.up_blocks.2.resnets.2.conv_shortcut"),
    ("sdxl", "lora_unet_label_emb_0_0", "unet.add_embedding.linear_1"),
    ("sdxl", "lora_unet_label_emb_0_2", "unet.add_embedding.linear_2"),
    (
        "sdxl",
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    ),
    (
        "sdxl",
        "lora_te1_text_model_encoder_layers_11_mlp_fc1",
        "text_encoder.text_model.encoder.layers.11.mlp.fc1",
    ),
    (
        "sdxl",
        "lora_te2_text_model_encoder_layers_31_self_attn_out_proj",
        "text_encoder_2.text_model.encoder.layers.31.self_attn.out_proj",
    ),
    ("sdxl", "lora_te2_text_projection", "text_encoder_2.text_projection"),
]


@pytest.mark.parametrize(("family", "name", "canonical"), KNOWN_PAIRS)
def test_known_kohya_spellings_resolve(family, name, canonical):
    assert kohya_lookup(family)[name] == canonical


@pytest.mark.parametrize(
    ("family", "canonical", "written"),
    [
        (
            "sd1",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
        ),
        ("sd2", "unet.up_blocks.0.upsamplers.0.conv", "lora_unet_up_blocks_0_upsamplers_0_conv"),
        (
            "sdxl",
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        ),
        ("sdxl", "unet.conv_out", "lora_unet_out_2"),
        (
            "sdxl",
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        ),
        (
            None,
            "text_encoder_2.text_model.encoder.layers.0.mlp.fc1",
            "lora_te2_text_model_encoder_layers_0_mlp_fc1",
        ),
        (None, "unet.up_blocks.0.attentions.0.proj_in", "lora_unet_up_blocks_0_attentions_0_proj_in"),
    ],
)
def test_kohya_name_writes_what_sd_scripts_writes(family, canonical, written):
    assert kohya_name(canonical, family) == written


def test_sd_scripts_default_module_set_on_sd15_is_264():
    """LoRA-LierLa: Linear/1x1 Conv2d in Transformer2DModel + the 6 TE projections (docs/formats.md §2.2)."""
    table = family_table("sd1")
    unet = [
        n
        for n, info in table.items()
        if n.startswith("unet.")
        and ".attentions." in n
        and (info.layer == "linear" or info.shape[2:] == (1, 1))
    ]
    text = [
        n
        for n in table
        if n.startswith("text_encoder.")
        and n.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"))
    ]
    assert (len(unet), len(text), len(unet) + len(text)) == (192, 72, 264)
    names = {kohya_name(n, "sd1") for n in unet + text}
    assert len(names) == 264 and all(kohya_lookup("sd1")[k] in table for k in names)


def test_generic_lookup_covers_tiny_models(tiny_unet, tiny_text_encoder):
    from sdlora.arch.tables import table_for_model

    lookup = kohya_lookup(None)
    for table in (table_for_model(tiny_unet), table_for_model(tiny_text_encoder)):
        for canonical in table:
            assert lookup[kohya_name(canonical, None)] == canonical
    tiny = table_for_model(tiny_unet)
    own = kohya_lookup(None, tiny)  # a given table also yields its LDM spellings
    assert own["lora_unet_output_blocks_0_1_proj_in"] == "unet.up_blocks.0.attentions.0.proj_in"
    assert own["lora_unet_input_blocks_3_0_op"] == "unet.down_blocks.0.downsamplers.0.conv"


def test_canonical_name_adds_text_model_for_transformers5_layout():
    assert (
        canonical_name("text_encoder", "encoder.layers.3.mlp.fc1")
        == "text_encoder.text_model.encoder.layers.3.mlp.fc1"
    )
    assert canonical_name("text_encoder", "text_model.encoder.layers.3.mlp.fc1") == (
        "text_encoder.text_model.encoder.layers.3.mlp.fc1"
    )
    assert canonical_name("text_encoder_2", "text_projection") == "text_encoder_2.text_projection"
    assert canonical_name("unet", "encoder.x") == "unet.encoder.x"  # only text encoders get text_model.
    assert diffusers_key_name("text_encoder.text_model.encoder.layers.0.mlp.fc1") == (
        "text_encoder.text_model.encoder.layers.0.mlp.fc1"
    )


def test_live_transformers5_clip_resolves_to_canonical_names(tiny_text_encoder):
    live = {name for name, _ in tiny_text_encoder.named_modules()}
    mapping = module_map(tiny_text_encoder)
    q = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    assert q in mapping
    expected = tiny_text_encoder.get_submodule(
        "encoder.layers.0.self_attn.q_proj"
        if "encoder.layers.0.self_attn.q_proj" in live
        else "text_model.encoder.layers.0.self_attn.q_proj"
    )
    assert find_module(tiny_text_encoder, q) is expected
    assert find_module(tiny_text_encoder, "text_model.encoder.layers.0.self_attn.q_proj") is expected
    assert find_module(tiny_text_encoder, "encoder.layers.0.self_attn.q_proj") is expected


def test_clip_with_projection_keeps_text_model():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from sdlora.arch.tables import table_for_model

    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        vocab_size=1000,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        projection_dim=16,
    )
    model = CLIPTextModelWithProjection(config)
    table = table_for_model(model)
    assert table.components() == ["text_encoder_2"]
    assert "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj" in table
    assert table["text_encoder_2.text_projection"].shape == (16, 32)
    assert find_module(model, "text_encoder_2.text_projection") is model.text_projection


def test_find_module_on_unet_and_pipeline(tiny_unet, tiny_text_encoder):
    class Pipe:
        unet = tiny_unet
        text_encoder = tiny_text_encoder

    name = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    target = tiny_unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k
    assert find_module(Pipe(), name) is target
    assert find_module(tiny_unet, name) is target
    assert find_module(tiny_unet, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k") is target
    with pytest.raises(
        CompatibilityError, match="nearest: 'unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k'"
    ):
        find_module(Pipe(), "unet.down_blocks.1.attentions.0.transformer_blocks.7.attn2.to_k")


def test_nearest_name_prefers_same_leaf():
    candidates = ["unet.a.attn1.to_q", "unet.a.attn1.to_k", "unet.b.attn2.to_q"]
    assert nearest_name("unet.a.attn2.to_q", candidates) in {"unet.a.attn1.to_q", "unet.b.attn2.to_q"}
    assert nearest_name("unet.a.attn1.to_k", candidates) == "unet.a.attn1.to_k"
    assert nearest_name("zzzz", candidates) is None


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="not a canonical module name"):
        kohya_name("down_blocks.0.resnets.0.conv1", "sd1")


def test_golden_kohya_names_of_the_tiny_live_models(tiny_unet, tiny_text_encoder):
    """Live module paths (not meta builds): a diffusers/transformers renaming shows up as a golden diff."""
    from sdlora.arch.tables import table_for_model

    lines = (GOLDEN / "kohya_keys_tiny.txt").read_text().splitlines()
    golden = [line.split() for line in lines if line and not line.startswith("#")]
    table = {**table_for_model(tiny_unet), **table_for_model(tiny_text_encoder)}
    live = sorted(
        [kohya_name(name, None), name, info.layer, "x".join(map(str, info.shape))]
        for name, info in table.items()
    )
    assert live == golden
    lookup = kohya_lookup(None)
    assert all(lookup[kohya] == canonical for kohya, canonical, *_ in golden)
