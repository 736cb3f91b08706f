"""Hand-built files for every dialect the wild folder lacks, checked against ΔW formulas computed
independently here in float64 (explicit loops / outer products, not sdlora.delta's code paths).

Module names and shapes are SD1.5's (SDXL's for the te1/te2 file); every SD1 file also carries an
attn2.to_k LoRA (input width 768), which is what marks it as SD1 to the family detector.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sdlora.errors import CompatibilityError
from sdlora.formats import load_lora, save_lora

G = torch.Generator().manual_seed(0)
Q = "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # (320, 320)
K2 = "down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"  # (320, 768)
CONV = "down_blocks_0_resnets_0_conv1"  # (320, 320, 3, 3)
Q_NAME = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
K2_NAME = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
CONV_NAME = "unet.down_blocks.0.resnets.0.conv1"


def rnd(*shape):
    return torch.randn(shape, generator=G) * 0.1


def anchor(prefix="lora_unet_"):
    """A plain LoRA on attn2.to_k (input 768 = SD1's context width)."""
    return {f"{prefix}{K2}.lora_down.weight": rnd(2, 768), f"{prefix}{K2}.lora_up.weight": rnd(320, 2)}


def write(tmp_path, tensors, metadata=None, name="lora.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def d64(t):
    return t.double()


def kron(a, b):
    """Kronecker product by outer product (independent of torch.kron)."""
    a, b = d64(a), d64(b)
    return torch.einsum("ij,kl->ikjl", a, b).reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1])


def tucker(t, a, b):
    """Σ_ij t[i,j,k,l] · a[i,p] · b[j,r] computed slice by slice: a.T @ t[:,:,k,l] @ b."""
    out = torch.zeros(a.shape[1], b.shape[1], *t.shape[2:], dtype=torch.float64)
    for k in range(t.shape[2]):
        for l in range(t.shape[3]):
            out[:, :, k, l] = d64(a).T @ d64(t[:, :, k, l]) @ d64(b)
    return out


def close(got, want):
    """float32 result vs the float64 formula: 1e-5 relative, plus 1e-6 of the largest entry for
    entries that are near zero (float32 rounding of a long dot product)."""
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))


def roundtrip(lora, tmp_path, fmt="kohya"):
    out = tmp_path / f"roundtrip_{fmt}.safetensors"
    save_lora(lora, out, format=fmt)
    return load_lora(out)


# ------------------------------------------------------------------------------------------- Kohya / LoCon


def test_kohya_lora_scale_alpha_over_rank_and_missing_alpha(tmp_path):
    down, up = rnd(4, 320), rnd(320, 4)
    tensors = {f"lora_unet_{Q}.lora_down.weight": down, f"lora_unet_{Q}.lora_up.weight": up,
               f"lora_unet_{Q}.alpha": torch.tensor(2.0), **anchor()}  # fmt: skip
    lora = load_lora(write(tmp_path, tensors))
    assert lora.format == "kohya" and lora.family == "sd1" and not lora.issues
    close(lora.delta(Q_NAME), 0.5 * d64(up) @ d64(down))
    close(
        lora.delta(K2_NAME),
        d64(tensors[f"lora_unet_{K2}.lora_up.weight"]) @ d64(tensors[f"lora_unet_{K2}.lora_down.weight"]),
    )
    assert lora.modules[K2_NAME].alpha is None and lora.modules[K2_NAME].scale == 1.0
    back = roundtrip(lora, tmp_path)
    close(back.delta(Q_NAME), 0.5 * d64(up) @ d64(down))
    assert back.modules[K2_NAME].alpha == 2.0  # written as rank: scale 1 survives, never alpha 0


def test_ldm_named_kohya_keys_resolve_to_diffusers_modules(tmp_path):
    """SD1 file in LDM names (input_blocks_1_1 = down_blocks.0.attentions.0, docs/formats.md §2.2)."""
    ldm = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    down, up = rnd(2, 320), rnd(320, 2)
    tensors = {f"{ldm}.lora_down.weight": down, f"{ldm}.lora_up.weight": up, **anchor()}
    lora = load_lora(write(tmp_path, tensors))
    close(lora.delta(Q_NAME), d64(up) @ d64(down))


def test_locon_conv_kxk(tmp_path):
    down, up = rnd(4, 320, 3, 3), rnd(320, 4, 1, 1)
    tensors = {f"lora_unet_{CONV}.lora_down.weight": down, f"lora_unet_{CONV}.lora_up.weight": up,
               f"lora_unet_{CONV}.alpha": torch.tensor(1.0), **anchor()}  # fmt: skip
    lora = load_lora(write(tmp_path, tensors))
    want = 0.25 * (d64(up).reshape(320, 4) @ d64(down).reshape(4, -1)).reshape(320, 320, 3, 3)
    close(lora.delta(CONV_NAME), want)
    close(roundtrip(lora, tmp_path).delta(CONV_NAME), want)


def test_locon_tucker_lora_mid(tmp_path):
    down, mid, up = rnd(4, 320, 1, 1), rnd(4, 4, 3, 3), rnd(320, 4, 1, 1)
    tensors = {f"lora_unet_{CONV}.lora_down.weight": down, f"lora_unet_{CONV}.lora_mid.weight": mid,
               f"lora_unet_{CONV}.lora_up.weight": up, f"lora_unet_{CONV}.alpha": torch.tensor(8.0), **anchor()}  # fmt: skip
    lora = load_lora(write(tmp_path, tensors))
    assert lora.format == "lycoris"
    # ΔW[i,j,k,l] = Σ up[i,n] mid[n,m,k,l] down[m,j]  ==  tucker(mid, up.T, down)
    want = 2.0 * tucker(mid, d64(up).reshape(320, 4).T, d64(down).reshape(4, 320))
    close(lora.delta(CONV_NAME), want)
    back = roundtrip(lora, tmp_path)
    assert "mid" in back.modules[CONV_NAME].tensors
    close(back.delta(CONV_NAME), want)


# ------------------------------------------------------------------------------------------- LoHa / LoKr


def test_loha_linear(tmp_path):
    w1a, w1b, w2a, w2b = rnd(320, 4), rnd(4, 320), rnd(320, 4), rnd(4, 320)
    p = f"lora_unet_{Q}"
    tensors = {f"{p}.hada_w1_a": w1a, f"{p}.hada_w1_b": w1b, f"{p}.hada_w2_a": w2a, f"{p}.hada_w2_b": w2b,
               f"{p}.alpha": torch.tensor(2.0), **anchor()}  # fmt: skip
    lora = load_lora(write(tmp_path, tensors))
    assert lora.modules[Q_NAME].kind == "loha"
    want = 0.5 * (d64(w1a) @ d64(w1b)) * (d64(w2a) @ d64(w2b))
    close(lora.delta(Q_NAME), want)
    close(roundtrip(lora, tmp_path).delta(Q_NAME), want)


def test_loha_conv_without_tucker_is_reshaped_to_the_conv_shape(tmp_path):
    """LyCORIS LoHa conv without Tucker stores w*b as (r, in*3*3): ΔW is reshaped to (out, in, 3, 3)."""
    p = f"lora_unet_{CONV}"
    w1a, w1b, w2a, w2b = rnd(320, 4), rnd(4, 2880), rnd(320, 4), rnd(4, 2880)
    tensors = {f"{p}.hada_w1_a": w1a, f"{p}.hada_w1_b": w1b, f"{p}.hada_w2_a": w2a, f"{p}.hada_w2_b": w2b,
               f"{p}.alpha": torch.tensor(1.0), **anchor()}  # fmt: skip
    lora = load_lora(write(tmp_path, tensors))
    assert lora.modules[CONV_NAME].delta_shape() == (320, 320, 3, 3)
    want = 0.25 * ((d64(w1a) @ d64(w1b)) * (d64(w2a) @ d64(w2b))).reshape(320, 320, 3, 3)
    close(lora.delta(CONV_NAME), want)
    close(roundtrip(lora, tmp_path).delta(CONV_NAME), want)


def test_loha_tucker_conv(tmp_path):
    p = f"lora_unet_{CONV}"
    w1a, w1b, t1, w2a, w2b, t2 = (
        rnd(4, 320),
        rnd(4, 320),
        rnd(4, 4, 3, 3),
        rnd(4, 320),
        rnd(4, 320),
        rnd(4, 4, 3, 3),
    )
    tensors = {f"{p}.hada_w1_a": w1a, f"{p}.hada_w1_b": w1b, f"{p}.hada_t1": t1, f"{p}.hada_w2_a": w2a,
               f"{p}.hada_w2_b": w2b, f"{p}.hada_t2": t2, f"{p}.alpha": torch.tensor(4.0), **anchor()}  # fmt: skip
    lora = load_lora(write(tmp_path, tensors))
    want = tucker(t1, w1a, w1b) * tucker(t2, w2a, w2b)
    close(lora.delta(CONV_NAME), want)
    close(roundtrip(lora, tmp_path).delta(CONV_NAME), want)


def test_lokr_both_factors_full_is_scale_one(tmp_path):
    p = f"lora_unet_{Q}"
    w1, w2 = rnd(16, 20), rnd(20, 16)
    tensors = {f"{p}.lokr_w1": w1, f"{p}.lokr_w2": w2, f"{p}.alpha": torch.tensor(3.0), **anchor()}
    lora = load_lora(write(tmp_path, tensors))
    assert lora.modules[Q_NAME].rank is None and lora.modules[Q_NAME].scale == 1.0
    close(lora.delta(Q_NAME), kron(w1, w2))
    close(roundtrip(lora, tmp_path).delta(Q_NAME), kron(w1, w2))


def test_lokr_decomposed_w2_scale_alpha_over_rank(tmp_path):
    p = f"lora_unet_{Q}"
    w1, w2a, w2b = rnd(16, 16), rnd(20, 4), rnd(4, 20)
    tensors = {f"{p}.lokr_w1": w1, f"{p}.lokr_w2_a": w2a, f"{p}.lokr_w2_b": w2b, f"{p}.alpha": torch.tensor(2.0),
               **anchor()}  # fmt: skip
    lora = load_lora(write(tmp_path, tensors))
    close(lora.delta(Q_NAME), 0.5 * kron(w1, d64(w2a) @ d64(w2b)))


def test_lokr_tucker_t2_conv(tmp_path):
    p = f"lora_unet_{CONV}"
    w1, t2, w2a, w2b = rnd(16, 16), rnd(4, 4, 3, 3), rnd(4, 20), rnd(4, 20)
    tensors = {f"{p}.lokr_w1": w1, f"{p}.lokr_t2": t2, f"{p}.lokr_w2_a": w2a, f"{p}.lokr_w2_b": w2b,
               f"{p}.alpha": torch.tensor(8.0), **anchor()}  # fmt: skip
    lora = load_lora(write(tmp_path, tensors))
    w2 = tucker(t2, w2a, w2b)  # (20, 20, 3, 3)
    want = torch.zeros(320, 320, 3, 3, dtype=torch.float64)
    for k in range(3):
        for l in range(3):
            want[:, :, k, l] = 2.0 * kron(w1, w2[:, :, k, l])
    close(lora.delta(CONV_NAME), want)
    close(roundtrip(lora, tmp_path).delta(CONV_NAME), want)


@pytest.mark.parametrize("swap", [False, True], ids=["small-first", "large-first"])
def test_lokr_flattened_conv_both_factor_orders(tmp_path, swap):
    """Early LyCORIS: conv kernels flattened to (out, in*3*3); kron then reshape to the SD1 conv shape."""
    p = f"lora_unet_{CONV}"
    shapes = [((16, 2), (2, 45)), ((20, 2), (2, 64))]  # 16*20 = 320 out, 45*64 = 2880 = 320*3*3 in
    if swap:
        shapes.reverse()
    (a1, b1), (a2, b2) = shapes
    w1a, w1b, w2a, w2b = rnd(*a1), rnd(*b1), rnd(*a2), rnd(*b2)
    tensors = {f"{p}.lokr_w1_a": w1a, f"{p}.lokr_w1_b": w1b, f"{p}.lokr_w2_a": w2a, f"{p}.lokr_w2_b": w2b,
               f"{p}.alpha": torch.tensor(1.0), **anchor()}  # fmt: skip
    lora = load_lora(write(tmp_path, tensors))
    assert lora.family == "sd1" and lora.modules[CONV_NAME].shape == (320, 320, 3, 3)
    want = 0.5 * kron(d64(w1a) @ d64(w1b), d64(w2a) @ d64(w2b)).reshape(320, 320, 3, 3)
    close(lora.delta(CONV_NAME), want)
    close(roundtrip(lora, tmp_path).delta(CONV_NAME), want)


def test_full_diff(tmp_path):
    diff, diff_b = rnd(320, 320), rnd(320)
    tensors = {f"lora_unet_{Q}.diff": diff, f"lora_unet_{Q}.diff_b": diff_b, **anchor()}
    lora = load_lora(write(tmp_path, tensors))
    assert lora.modules[Q_NAME].kind == "full"
    close(lora.delta(Q_NAME), d64(diff))
    back = roundtrip(lora, tmp_path)
    torch.testing.assert_close(back.modules[Q_NAME].tensors["diff_b"], diff_b)


# ------------------------------------------------------------------------------------------------- DoRA


def dora_reference(base, delta, magnitude, axis):
    merged = d64(base) + delta
    norm = merged.norm(dim=1, keepdim=True) if axis == "out" else merged.norm(dim=0, keepdim=True)
    return d64(magnitude).reshape(norm.shape) * merged / norm - d64(base)


@pytest.mark.parametrize("axis", ["out", "in"])
def test_dora_both_axes_detected_from_shape(tmp_path, axis):
    down, up = rnd(4, 320), rnd(320, 4)
    magnitude = (
        torch.rand(320, 1, generator=G) + 0.5 if axis == "out" else torch.rand(1, 320, generator=G) + 0.5
    )
    base = rnd(320, 320) * 5
    tensors = {f"lora_unet_{Q}.lora_down.weight": down, f"lora_unet_{Q}.lora_up.weight": up,
               f"lora_unet_{Q}.alpha": torch.tensor(2.0), f"lora_unet_{Q}.dora_scale": magnitude, **anchor()}  # fmt: skip
    lora = load_lora(write(tmp_path, tensors))
    assert lora.modules[Q_NAME].dora_axis == axis
    want = dora_reference(base, 0.5 * d64(up) @ d64(down), magnitude, axis)
    close(lora.delta(Q_NAME, base), want)
    with pytest.raises(CompatibilityError, match="DoRA module needs the base weight"):
        lora.delta(Q_NAME)
    back = roundtrip(lora, tmp_path)
    assert back.modules[Q_NAME].dora_axis == axis
    assert tuple(back.modules[Q_NAME].tensors["dora_scale"].shape) == tuple(magnitude.shape)
    close(back.delta(Q_NAME, base), want)


# ------------------------------------------------------------------------------------------- diffusers / PEFT


def test_peft_era_diffusers_with_dora_and_adapter_metadata(tmp_path):
    q, k = (
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    )
    te = "text_model.encoder.layers.0.self_attn.q_proj"
    a_q, b_q, a_k, b_k, a_t, b_t = (
        rnd(4, 320),
        rnd(320, 4),
        rnd(2, 768),
        rnd(320, 2),
        rnd(8, 768),
        rnd(768, 8),
    )
    magnitude = torch.rand(320, generator=G) + 0.5
    tensors = {f"unet.{q}.lora_A.weight": a_q, f"unet.{q}.lora_B.weight": b_q, f"unet.{q}.lora_magnitude_vector": magnitude,
               f"unet.{k}.lora_A.weight": a_k, f"unet.{k}.lora_B.weight": b_k,
               f"text_encoder.{te}.lora_A.weight": a_t, f"text_encoder.{te}.lora_B.weight": b_t}  # fmt: skip
    adapter = {"unet.r": 4, "unet.lora_alpha": 8, "unet.alpha_pattern": {"attn2.to_k": 1}, "unet.rank_pattern": {"attn2.to_k": 2},
               "text_encoder.r": 8, "text_encoder.lora_alpha": 4}  # fmt: skip
    path = write(tmp_path, tensors, {"format": "pt", "lora_adapter_metadata": json.dumps(adapter)})
    lora = load_lora(path)
    assert lora.format == "diffusers" and lora.family == "sd1" and not lora.issues
    base = rnd(320, 320) * 5
    close(lora.delta(Q_NAME, base), dora_reference(base, 2.0 * d64(b_q) @ d64(a_q), magnitude, "out"))
    close(lora.delta(K2_NAME), 0.5 * d64(b_k) @ d64(a_k))
    close(lora.delta("text_encoder." + te), 0.5 * d64(b_t) @ d64(a_t))
    for fmt in ("kohya", "diffusers"):
        back = roundtrip(lora, tmp_path, fmt)
        close(back.delta(Q_NAME, base), dora_reference(base, 2.0 * d64(b_q) @ d64(a_q), magnitude, "out"))
        close(back.delta(K2_NAME), 0.5 * d64(b_k) @ d64(a_k))
        close(back.delta("text_encoder." + te), 0.5 * d64(b_t) @ d64(a_t))


def test_no_prefix_diffusers_with_adapter_metadata_alpha(tmp_path):
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    k = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    a, b, a2, b2 = rnd(4, 320), rnd(320, 4), rnd(4, 768), rnd(320, 4)
    tensors = {
        f"{q}.lora_A.weight": a,
        f"{q}.lora_B.weight": b,
        f"{k}.lora_A.weight": a2,
        f"{k}.lora_B.weight": b2,
    }
    path = write(tmp_path, tensors, {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 2})})
    lora = load_lora(path)
    assert lora.format == "diffusers" and sorted(lora.modules) == sorted([Q_NAME, K2_NAME])
    close(lora.delta(Q_NAME), 0.5 * d64(b) @ d64(a))


def test_legacy_text_encoder_lora_linear_layer_and_attnproc(tmp_path):
    te = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    a, b, d, u = rnd(4, 768), rnd(768, 4), rnd(4, 320), rnd(320, 4)
    tensors = {f"{te}.lora_linear_layer.down.weight": a, f"{te}.lora_linear_layer.up.weight": b,
               f"unet.{attn}.processor.to_out_lora.down.weight": d, f"unet.{attn}.processor.to_out_lora.up.weight": u}  # fmt: skip
    lora = load_lora(write(tmp_path, tensors))
    close(lora.delta(te), d64(b) @ d64(a))
    close(lora.delta(f"unet.{attn}.to_out.0"), d64(u) @ d64(d))


def test_peft_folder_with_rank_alpha_patterns_and_rslora(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    paths = {
        "q": "text_model.encoder.layers.0.self_attn.q_proj",
        "v": "text_model.encoder.layers.0.self_attn.v_proj",
    }
    a_q, b_q, a_v, b_v = rnd(4, 768), rnd(768, 4), rnd(16, 768), rnd(768, 16)
    tensors = {f"base_model.model.{paths['q']}.lora_A.weight": a_q, f"base_model.model.{paths['q']}.lora_B.weight": b_q,
               f"base_model.model.{paths['v']}.lora_A.weight": a_v, f"base_model.model.{paths['v']}.lora_B.weight": b_v}  # fmt: skip
    write(folder, tensors, {"format": "pt"}, "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "rank_pattern": {"v_proj": 16}, "alpha_pattern": {"v_proj": 4},
              "use_rslora": True, "auto_mapping": {"base_model_class": "CLIPTextModel"}}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    lora = load_lora(folder)
    assert lora.format == "peft" and lora.family == "sd1"
    # rsLoRA: scale = lora_alpha / sqrt(r)
    close(lora.delta("text_encoder." + paths["q"]), (8 / 2) * d64(b_q) @ d64(a_q))
    close(lora.delta("text_encoder." + paths["v"]), (4 / 4) * d64(b_v) @ d64(a_v))


# --------------------------------------------------------------------------------------------------- SDXL


def test_sdxl_kohya_te1_te2_and_sgm_unet_names(tmp_path):
    sgm = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"  # = down_blocks.1.attentions.0..., (640, 2048)
    te1 = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"  # CLIP-L (768)
    te2 = "lora_te2_text_model_encoder_layers_31_mlp_fc2"  # bigG (1280 <- 5120)
    t = {sgm: (rnd(4, 2048), rnd(640, 4)), te1: (rnd(4, 768), rnd(768, 4)), te2: (rnd(4, 5120), rnd(1280, 4))}
    tensors = {}
    for name, (down, up) in t.items():
        tensors |= {
            f"{name}.lora_down.weight": down,
            f"{name}.lora_up.weight": up,
            f"{name}.alpha": torch.tensor(1.0),
        }
    lora = load_lora(write(tmp_path, tensors))
    assert lora.family == "sdxl" and not lora.issues
    names = {
        sgm: "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
        te1: "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
        te2: "text_encoder_2.text_model.encoder.layers.31.mlp.fc2",
    }
    assert sorted(lora.modules) == sorted(names.values())
    out = tmp_path / "sdxl_out.safetensors"
    save_lora(lora, out)
    from sdlora.header import read_header

    written = {k.split(".")[0] for k in read_header(out).tensors}
    assert written == set(t)  # sd-scripts' SGM names and lora_te1_/lora_te2_ prefixes
    back = load_lora(out)
    for key, name in names.items():
        down, up = t[key]
        close(back.delta(name), 0.25 * d64(up) @ d64(down))


# -------------------------------------------------------------------------------------- extras and issues


def test_bundled_embeddings_go_to_extras_and_survive_kohya(tmp_path):
    emb = rnd(2, 768)
    tensors = {"bundle_emb.mytoken.string_to_param.*": emb, **anchor()}
    lora = load_lora(write(tmp_path, tensors))
    torch.testing.assert_close(lora.extras["embeddings"]["mytoken"], emb)
    back = roundtrip(lora, tmp_path)
    torch.testing.assert_close(back.extras["embeddings"]["mytoken"], emb)


def test_unsupported_and_unknown_keys_are_reported_not_dropped(tmp_path):
    tensors = {
        f"lora_unet_{Q}.oft_blocks": rnd(4, 80, 80),
        f"lora_unet_{Q}.alpha": torch.tensor(1.0),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_qq.lora_down.weight": rnd(2, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_qq.lora_up.weight": rnd(320, 2),
        **anchor(),
    }
    lora = load_lora(write(tmp_path, tensors))
    verdicts = {issue.key: (issue.verdict, issue.detail) for issue in lora.issues}
    assert verdicts[f"lora_unet_{Q}.oft_blocks"][0] == "unsupported_kind"
    assert "OFT" in verdicts[f"lora_unet_{Q}.oft_blocks"][1]
    unknown = verdicts[
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_qq.lora_down.weight"
    ]
    assert unknown[0] == "unknown_module" and f"lora_unet_{Q}" in unknown[1]
    assert list(lora.modules) == [K2_NAME]
    from sdlora.report import check_lora

    report_keys = {v.key for v in check_lora(lora, "sd1").verdicts}
    assert set(tensors) <= report_keys


def test_kohya_names_of_a_custom_sized_model_resolve_without_a_table(tmp_path):
    """Tiny/custom UNets: `up_blocks.0.attentions.0` is not an SD1 module, yet its Kohya name resolves."""
    from sdlora.weights import LoraModule, LoraState

    name = "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    te = "text_encoder.text_model.encoder.layers.1.mlp.fc2"
    modules = {name: LoraModule("lora", {"down": rnd(2, 32), "up": rnd(32, 2)}, alpha=1.0),
               te: LoraModule("lora", {"down": rnd(2, 37), "up": rnd(32, 2)}, alpha=4.0)}  # fmt: skip
    out = tmp_path / "tiny.safetensors"
    save_lora(LoraState(modules=modules), out)
    back = load_lora(out)
    assert back.family is None and sorted(back.modules) == sorted(modules) and not back.issues
    close(back.delta(te), 2.0 * d64(modules[te].tensors["up"]) @ d64(modules[te].tensors["down"]))
