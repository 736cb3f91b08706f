"""FLUX.1 LoRAs (docs/formats.md §2.14): family detection, every dialect read into diffusers names with ΔW equal to
a reference computed here from the factors, fused q/k/v split and joined exactly, Kohya/diffusers round trips,
and `sdlora inspect` / `verify --base flux` on hand-built files.

The tiny FLUX model is a reduced FluxTransformer2DModel config (2 double + 2 single blocks, hidden 16) built on
the meta device; real-size files for `--base flux` are rank 1 and cover one block of each kind.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdlora.arch.family import detect_family
from sdlora.arch.tables import build_table_from_config_dir, family_table
from sdlora.cli import main
from sdlora.errors import FormatError
from sdlora.formats import load_lora, save_lora

HIDDEN, MLP = 16, 64  # tiny: 2 heads x 8; mlp_ratio 4
TINY_TRANSFORMER = {
    "_class_name": "FluxTransformer2DModel",
    "attention_head_dim": 8,
    "axes_dims_rope": [2, 2, 4],
    "guidance_embeds": True,
    "in_channels": 8,
    "joint_attention_dim": 32,
    "num_attention_heads": 2,
    "num_layers": 2,
    "num_single_layers": 2,
    "patch_size": 1,
    "pooled_projection_dim": 24,
}
TINY_CLIP = {
    "architectures": ["CLIPTextModel"],
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 77,
    "projection_dim": 32,
}

# The original (BFL) layout written out by hand from the published FLUX code, independent of sdlora.arch.flux:
# original layer -> its diffusers parts, each with the rows of the fused layer it takes (h = hidden width).
def reference_parts(h: int, mlp: int) -> dict[str, list[tuple[str, list[tuple[int, int]]]]]:
    d, s = "transformer_blocks.0.", "single_transformer_blocks.1."
    return {
        "double_blocks.0.img_attn.qkv": [(d + "attn.to_q", [(0, h)]), (d + "attn.to_k", [(h, 2 * h)]),
                                         (d + "attn.to_v", [(2 * h, 3 * h)])],
        "double_blocks.0.txt_attn.qkv": [(d + "attn.add_q_proj", [(0, h)]), (d + "attn.add_k_proj", [(h, 2 * h)]),
                                         (d + "attn.add_v_proj", [(2 * h, 3 * h)])],
        "double_blocks.0.img_attn.proj": [(d + "attn.to_out.0", [(0, h)])],
        "double_blocks.0.txt_mlp.0": [(d + "ff_context.net.0.proj", [(0, mlp)])],
        "single_blocks.1.linear1": [(s + "attn.to_q", [(0, h)]), (s + "attn.to_k", [(h, 2 * h)]),
                                    (s + "attn.to_v", [(2 * h, 3 * h)]), (s + "proj_mlp", [(3 * h, 3 * h + mlp)])],
        "single_blocks.1.linear2": [(s + "proj_out", [(0, h)])],
        # diffusers' norm_out holds (scale, shift), the original (shift, scale): halves exchanged
        "final_layer.adaLN_modulation.1": [("norm_out.linear", [(h, 2 * h), (0, h)])],
    }  # fmt: skip


ORIGINAL_IN = {  # input width of each original layer above, as a function of (h, mlp)
    "double_blocks.0.img_attn.qkv": lambda h, m: h, "double_blocks.0.txt_attn.qkv": lambda h, m: h,
    "double_blocks.0.img_attn.proj": lambda h, m: h, "double_blocks.0.txt_mlp.0": lambda h, m: h,
    "single_blocks.1.linear1": lambda h, m: h, "single_blocks.1.linear2": lambda h, m: h + m,
    "final_layer.adaLN_modulation.1": lambda h, m: h,
}  # fmt: skip
TE_NAME = "text_model.encoder.layers.1.self_attn.q_proj"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_flux")
    (root / "transformer").mkdir()
    (root / "text_encoder").mkdir()
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"]}))  # fmt: skip
    (root / "transformer" / "config.json").write_text(json.dumps(TINY_TRANSFORMER))
    (root / "text_encoder" / "config.json").write_text(json.dumps(TINY_CLIP))
    return root


@pytest.fixture(scope="module")
def tiny_table(tiny_dir):
    return build_table_from_config_dir(tiny_dir)


def factors(h: int, mlp: int, rank: int, te_width: int, seed: int = 0):
    """{original layer or "te": (down, up, alpha)} with random factors (alpha != rank, so the scale matters)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, parts in reference_parts(h, mlp).items():
        rows = sum(stop - start for _, ranges in parts for start, stop in ranges)
        out[name] = (torch.randn(rank, ORIGINAL_IN[name](h, mlp), generator=gen),
                     torch.randn(rows, rank, generator=gen), rank / 2)
    out["te"] = (torch.randn(rank, te_width, generator=gen), torch.randn(te_width, rank, generator=gen), rank / 2)
    return out


def expected_deltas(h: int, mlp: int, fac) -> dict[str, torch.Tensor]:
    """{canonical name: ΔW} computed by hand: the fused ΔW's rows of each part."""
    expected = {}
    for name, parts in reference_parts(h, mlp).items():
        down, up, alpha = fac[name]
        fused = (alpha / down.shape[0]) * up @ down
        for part, ranges in parts:
            expected["transformer." + part] = torch.cat([fused[a:b] for a, b in ranges])
    down, up, alpha = fac["te"]
    expected["text_encoder." + TE_NAME] = (alpha / down.shape[0]) * up @ down
    return expected


def kohya_file(path, fac):
    tensors = {}
    for name, (down, up, alpha) in fac.items():
        key = "lora_te1_" + TE_NAME.replace(".", "_") if name == "te" else "lora_unet_" + name.replace(".", "_")
        tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(alpha)}
    save_file(tensors, str(path))
    return path


def original_file(path, fac):
    """The original layout as ComfyUI-style trainers write it: `diffusion_model.<layer>.lora_A/B` + `.alpha`."""
    tensors = {}
    for name, (down, up, alpha) in fac.items():
        key = "text_encoder." + TE_NAME if name == "te" else "diffusion_model." + name
        tensors |= {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up, f"{key}.alpha": torch.tensor(alpha)}
    save_file(tensors, str(path))
    return path


def diffusers_file(path, h, mlp, fac):
    """diffusers/PEFT keys (`transformer.<diffusers path>`), one pair per part, alpha in lora_adapter_metadata
    (one alpha for the file, as diffusers writes it)."""
    tensors = {}
    for name, parts in reference_parts(h, mlp).items():
        down, up, _ = fac[name]
        for part, ranges in parts:
            key = "transformer." + part
            tensors[f"{key}.lora_A.weight"] = down.clone()
            tensors[f"{key}.lora_B.weight"] = torch.cat([up[a:b] for a, b in ranges]).contiguous()
    down, up, _ = fac["te"]
    tensors |= {f"text_encoder.{TE_NAME}.lora_A.weight": down, f"text_encoder.{TE_NAME}.lora_B.weight": up}
    rank = down.shape[0]
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": rank, "transformer.lora_alpha": rank / 2,
                                                 "text_encoder.r": rank, "text_encoder.lora_alpha": rank / 2})}
    save_file(tensors, str(path), metadata=meta)
    return path


def ai_toolkit_kohya_file(path, h, mlp, fac):
    """Diffusers names in Kohya spelling (`lora_transformer_<path>`), as SimpleTuner and some ai-toolkit exports
    write them."""
    tensors = {}
    for name, parts in reference_parts(h, mlp).items():
        down, up, alpha = fac[name]
        for part, ranges in parts:
            key = "lora_transformer_" + part.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = down.clone()
            tensors[f"{key}.lora_up.weight"] = torch.cat([up[a:b] for a, b in ranges]).contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(alpha)
    down, up, alpha = fac["te"]
    key = "lora_te1_" + TE_NAME.replace(".", "_")
    tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(alpha)}
    save_file(tensors, str(path))
    return path


DIALECTS = {
    "kohya": lambda p, h, m, f: kohya_file(p, f),
    "original": lambda p, h, m, f: original_file(p, f),
    "diffusers": diffusers_file,
    "lora_transformer": ai_toolkit_kohya_file,
}


def assert_deltas(state, expected):
    assert sorted(state.modules) == sorted(expected)
    for name, delta in expected.items():
        torch.testing.assert_close(state.delta(name), delta, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------- detection


def test_family_detection_from_every_dialect(tmp_path):
    fac = factors(HIDDEN, MLP, 2, 32)
    for dialect, build in DIALECTS.items():
        path = build(tmp_path / f"{dialect}.safetensors", HIDDEN, MLP, fac)
        assert detect_family({k: tuple(v.shape) for k, v in load_file(str(path)).items()}) == "flux", dialect


def test_diffusers_double_blocks_only_told_by_the_flux_width():
    shapes = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (4, 3072),
              "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": (3072, 4)}  # fmt: skip
    assert detect_family(shapes) == "flux"
    shapes = {k: (4, 1536) if "lora_A" in k else (1536, 4) for k in shapes}  # SD3 medium's width
    with pytest.raises(FormatError, match="SD3"):
        detect_family(shapes)


def test_sd3_is_still_refused_by_name():
    with pytest.raises(FormatError, match=r"SD3 / SD3\.5.*SD1, SD2, SDXL and FLUX\.1 LoRAs only"):
        detect_family({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": (4, 1536)})


# ---------------------------------------------------------------------------------------------- tables


def test_shipped_flux_table_has_the_published_architecture():
    table = family_table("flux")
    assert table.components() == ["transformer", "text_encoder"]
    names = list(table)
    assert len({n.split(".")[2] for n in names if n.startswith("transformer.transformer_blocks.")}) == 19
    assert len({n.split(".")[2] for n in names if n.startswith("transformer.single_transformer_blocks.")}) == 38
    assert table["transformer.transformer_blocks.18.attn.to_q"].shape == (3072, 3072)
    assert table["transformer.single_transformer_blocks.37.proj_out"].shape == (3072, 3072 + 12288)
    assert table["transformer.context_embedder"].shape == (3072, 4096)  # T5-XXL width
    assert table["transformer.time_text_embed.text_embedder.linear_1"].shape == (3072, 768)  # CLIP-L pooled
    assert table["text_encoder.text_model.encoder.layers.11.self_attn.q_proj"].shape == (768, 768)


def test_schnell_config_is_dev_without_the_guidance_embedder():
    from sdlora.configs import models_root

    schnell = build_table_from_config_dir(models_root() / "flux1-schnell")
    dev = family_table("flux")
    assert schnell.family == "flux"  # a subset of the dev table
    assert set(dev) - set(schnell) == {"transformer.time_text_embed.guidance_embedder.linear_1",
                                       "transformer.time_text_embed.guidance_embedder.linear_2"}  # fmt: skip


def test_tiny_folder_skips_t5_and_tables_transformer_and_clip(tiny_table):
    assert tiny_table.components() == ["transformer", "text_encoder"]
    assert tiny_table["transformer.single_transformer_blocks.1.proj_mlp"].shape == (MLP, HIDDEN)


# ---------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_every_dialect_reads_to_the_reference_delta(tmp_path, tiny_table, dialect):
    fac = factors(HIDDEN, MLP, 2, 32)
    path = DIALECTS[dialect](tmp_path / "lora.safetensors", HIDDEN, MLP, fac)
    state = load_lora(path, table=tiny_table)
    assert state.family == "flux"
    assert state.issues == []
    assert_deltas(state, expected_deltas(HIDDEN, MLP, fac))


def test_fused_split_of_a_lycoris_module_is_reported_not_guessed(tmp_path, tiny_table):
    name = "lora_unet_double_blocks_0_img_attn_qkv"
    tensors = {f"{name}.hada_w1_a": torch.randn(3 * HIDDEN, 2), f"{name}.hada_w1_b": torch.randn(2, HIDDEN),
               f"{name}.hada_w2_a": torch.randn(3 * HIDDEN, 2), f"{name}.hada_w2_b": torch.randn(2, HIDDEN),
               "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.randn(2, HIDDEN),
               "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": torch.randn(HIDDEN, 2)}  # fmt: skip
    save_file(tensors, str(tmp_path / "loha.safetensors"))
    state = load_lora(tmp_path / "loha.safetensors", table=tiny_table)
    assert list(state.modules) == ["transformer.transformer_blocks.0.attn.to_out.0"]
    assert {i.key.split(".")[0] for i in state.issues} == {name}
    assert all("fused FLUX layer" in i.detail for i in state.issues)


# ---------------------------------------------------------------------------------------------- writing


@pytest.mark.parametrize("dialect", ["kohya", "diffusers"])
@pytest.mark.parametrize("out_format", ["kohya", "diffusers"])
def test_round_trip_keeps_every_delta(tmp_path, tiny_table, dialect, out_format):
    fac = factors(HIDDEN, MLP, 2, 32, seed=1)
    state = load_lora(DIALECTS[dialect](tmp_path / "in.safetensors", HIDDEN, MLP, fac), table=tiny_table)
    save_lora(state, tmp_path / "out.safetensors", format=out_format)
    written = load_file(str(tmp_path / "out.safetensors"))
    if out_format == "kohya":  # sd-scripts' FLUX names: fused layers again, CLIP-L as lora_te1
        names = {k.split(".")[0] for k in written}
        assert names == {"lora_unet_" + n.replace(".", "_") for n in reference_parts(HIDDEN, MLP)} | {
            "lora_te1_" + TE_NAME.replace(".", "_")}
    else:
        assert "transformer.transformer_blocks.0.attn.to_k.lora_A.weight" in written
    again = load_lora(tmp_path / "out.safetensors", table=tiny_table)
    assert again.issues == []
    assert_deltas(again, expected_deltas(HIDDEN, MLP, fac))


def test_kohya_join_keeps_a_shared_down_factor(tmp_path, tiny_table):
    fac = factors(HIDDEN, MLP, 2, 32, seed=2)
    state = load_lora(kohya_file(tmp_path / "in.safetensors", fac), table=tiny_table)
    save_lora(state, tmp_path / "out.safetensors", format="kohya")
    written = load_file(str(tmp_path / "out.safetensors"))
    down, up, alpha = fac["double_blocks.0.img_attn.qkv"]
    torch.testing.assert_close(written["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"], down)
    torch.testing.assert_close(written["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"], up)
    assert written["lora_unet_double_blocks_0_img_attn_qkv.alpha"].item() == alpha


def test_kohya_join_of_q_and_v_only_leaves_zero_k_rows(tmp_path, tiny_table):
    """A q/v-only diffusers LoRA (different down factors) joins block-diagonally; the k rows stay zero."""
    gen = torch.Generator().manual_seed(3)
    part = "transformer.transformer_blocks.1.attn."
    tensors = {f"{part}{p}.lora_{s}.weight": torch.randn(*(2, HIDDEN) if s == "A" else (HIDDEN, 2), generator=gen)
               for p in ("to_q", "to_v") for s in "AB"}  # fmt: skip
    # a q/v LoRA trained with diffusers targets the single blocks' to_q/to_v too (they tell the family)
    tensors |= {f"transformer.single_transformer_blocks.0.attn.to_q.lora_{s}.weight": tensors[f"{part}to_q.lora_{s}.weight"].clone()
                for s in "AB"}  # fmt: skip
    save_file(tensors, str(tmp_path / "qv.safetensors"),
              metadata={"lora_adapter_metadata": json.dumps({"transformer.r": 2, "transformer.lora_alpha": 1.0})})
    state = load_lora(tmp_path / "qv.safetensors", table=tiny_table)
    save_lora(state, tmp_path / "out.safetensors", format="kohya")
    written = load_file(str(tmp_path / "out.safetensors"))
    name = "lora_unet_double_blocks_1_img_attn_qkv"
    assert written[f"{name}.lora_up.weight"].shape == (3 * HIDDEN, 4)
    fused = written[f"{name}.lora_up.weight"] @ written[f"{name}.lora_down.weight"] * (written[f"{name}.alpha"] / 4)
    for index, proj in enumerate(("to_q", "to_k", "to_v")):
        rows = fused[index * HIDDEN : (index + 1) * HIDDEN]
        if proj == "to_k":
            assert torch.count_nonzero(rows) == 0
        else:
            want = 0.5 * tensors[f"{part}{proj}.lora_B.weight"] @ tensors[f"{part}{proj}.lora_A.weight"]
            torch.testing.assert_close(rows, want)


# ---------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_verify_base_flux_applies_every_key_of_a_real_size_file(tmp_path, capsys, dialect):
    fac = factors(3072, 12288, 1, 768)
    path = DIALECTS[dialect](tmp_path / f"{dialect}.safetensors", 3072, 12288, fac)
    keys = len(load_file(str(path)))
    assert main(["verify", str(path), "--base", "flux"]) == 0
    out = capsys.readouterr().out
    assert f"OK: {keys} of {keys} keys applied" in out
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "family:      flux" in out and "components:  text_encoder, transformer" in out
    assert f"modules:     {len(fac)} " in out or dialect in ("diffusers", "lora_transformer")


def test_verify_against_a_tiny_flux_folder(tmp_path, tiny_dir, capsys):
    path = kohya_file(tmp_path / "tiny.safetensors", factors(HIDDEN, MLP, 2, 32))
    assert main(["verify", str(path), "--base", str(tiny_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["lora_family"] == "flux"


def test_every_kohya_name_written_for_flux_is_one_comfyui_maps():
    """ComfyUI maps `lora_unet_` + an original-layout module path (dots as underscores) of the FLUX state dict,
    and `lora_te1_` + a CLIP-L path; every name sdlora writes for the shipped FLUX table must be one of those.
    The original paths are listed here from the published model: 19 double, 38 single blocks."""
    from sdlora.arch.naming import kohya_name

    double = ("img_attn.qkv", "img_attn.proj", "img_mlp.0", "img_mlp.2", "img_mod.lin",
              "txt_attn.qkv", "txt_attn.proj", "txt_mlp.0", "txt_mlp.2", "txt_mod.lin")  # fmt: skip
    original = {f"double_blocks.{i}.{leaf}" for i in range(19) for leaf in double}
    original |= {f"single_blocks.{i}.{leaf}" for i in range(38) for leaf in ("linear1", "linear2", "modulation.lin")}
    original |= {"img_in", "txt_in", "final_layer.linear", "final_layer.adaLN_modulation.1"}
    original |= {f"{e}.{l}" for e in ("time_in", "vector_in", "guidance_in") for l in ("in_layer", "out_layer")}
    known = {"lora_unet_" + path.replace(".", "_") for path in original}
    table = family_table("flux")
    written = {kohya_name(name, "flux") for name in table if name.startswith("transformer.")}
    assert written == known  # every original layer is reachable, and nothing else is written
    clip = {kohya_name(name, "flux") for name in table if name.startswith("text_encoder.")}
    assert all(n.startswith("lora_te1_text_model_encoder_layers_") for n in clip)
