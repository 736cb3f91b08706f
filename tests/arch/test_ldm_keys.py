"""diffusers -> original (LDM single-file) keys: checked against diffusers' own reader, in both directions.

* Tiny SD1, SD2 and SDXL pipelines are converted by sdlora, written as one .safetensors file and read back by
  diffusers' `from_single_file` (offline, with the tiny pipeline's saved configs): every tensor of every
  component must come back bit for bit (a wrong, missing or swapped key changes a tensor or leaves one at
  its random initial value).
* Full-size SD1.5 / SD2.1 / SDXL models from sdlora/configs/models, built on the meta device (no memory): diffusers'
  model-type detector must recognise our files, and diffusers' converters must map our keys back to exactly
  the original key set and shapes (covers the real block counts, 3x3 vs linear projections, 10-deep SDXL
  transformers, the 23/32-layer OpenCLIP encoders).
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from sdlora.arch.ldm_keys import (
    checkpoint_to_ldm,
    clip_to_ldm,
    models_to_ldm,
    open_clip_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)
from sdlora.configs import models_root
from sdlora.errors import FormatError

TEXT = {"intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000,
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}


pytestmark = pytest.mark.usefixtures("one_thread")


def _tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    folder = tmp_path / "tok"
    folder.mkdir()
    vocab = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2, "a</w>": 3}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)


def _text_encoder(hidden: int, projection: bool = False, act: str = "quick_gelu"):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(hidden_size=hidden, projection_dim=hidden, hidden_act=act, **TEXT)).eval()


def _sd_unet(**extra):
    """A tiny UNet in SD's block order (attention blocks first, a plain up block with an upsampler first)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 32, 64), layers_per_block=2, sample_size=8, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4, **extra)


def _pipeline(family, tiny_vae, tmp_path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    torch.manual_seed({"sd1": 1, "sd2": 2, "sdxl": 3}[family])
    if family == "sdxl":
        # the two encoders need different widths: diffusers tells them apart by the position-embedding width
        unet = _sd_unet(cross_attention_dim=80, use_linear_projection=True, addition_embed_type="text_time",
                        addition_time_embed_dim=8, projection_class_embeddings_input_dim=48 + 6 * 8,
                        transformer_layers_per_block=(1, 2, 1))
        return StableDiffusionXLPipeline(vae=tiny_vae, text_encoder=_text_encoder(32), unet=unet,
                                         text_encoder_2=_text_encoder(48, projection=True, act="gelu"),
                                         tokenizer=_tokenizer(tmp_path), tokenizer_2=_tokenizer(tmp_path / "2"),
                                         scheduler=_scheduler())
    sd2 = family == "sd2"
    unet = _sd_unet(cross_attention_dim=32, use_linear_projection=sd2)
    return StableDiffusionPipeline(vae=tiny_vae, text_encoder=_text_encoder(32, act="gelu" if sd2 else "quick_gelu"),
                                   unet=unet, tokenizer=_tokenizer(tmp_path), scheduler=_scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


COMPONENTS = {"sd1": ("unet", "vae", "text_encoder"), "sd2": ("unet", "vae", "text_encoder"),
              "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2")}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_diffusers_from_single_file_reads_our_checkpoint_bit_for_bit(family, tiny_vae, tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    (tmp_path / "2").mkdir()
    pipe = _pipeline(family, tiny_vae, tmp_path)
    pipe.save_pretrained(tmp_path / "config")
    state = models_to_ldm(pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None),
                          family=family)
    save_file(state, str(tmp_path / "model.safetensors"))

    back = type(pipe).from_single_file(str(tmp_path / "model.safetensors"), config=str(tmp_path / "config"),
                                       local_files_only=True, **({} if family == "sdxl" else {
                                           "safety_checker": None, "requires_safety_checker": False}))
    for name in COMPONENTS[family]:
        want, got = getattr(pipe, name).state_dict(), getattr(back, name).state_dict()
        assert sorted(got) == sorted(want), name
        differ = [key for key in want if not torch.equal(want[key], got[key])]
        assert not differ, f"{name}: {len(differ)} tensors differ, e.g. {differ[:3]}"


def test_sd1_landmark_keys(tiny_vae):
    """Names A1111/ComfyUI look for, at the positions SD's layout gives them."""
    torch.manual_seed(0)
    state = models_to_ldm(_sd_unet(cross_attention_dim=32), tiny_vae, _text_encoder(32))
    keys = set(state)
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.input_blocks.3.0.op.weight",
                "model.diffusion_model.input_blocks.6.0.op.bias", "model.diffusion_model.input_blocks.1.1.proj_in.weight",
                "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.middle_block.2.out_layers.3.weight",
                "model.diffusion_model.output_blocks.2.1.conv.weight",      # plain up block: upsampler after resnet
                "model.diffusion_model.output_blocks.5.2.conv.weight",      # attention up block: after transformer
                "model.diffusion_model.output_blocks.8.1.norm.weight",
                "model.diffusion_model.output_blocks.3.0.skip_connection.weight",
                "model.diffusion_model.time_embed.2.bias", "model.diffusion_model.out.2.weight",
                "first_stage_model.decoder.up.0.block.0.conv1.weight",      # decoder numbered in reverse
                "first_stage_model.encoder.down.0.downsample.conv.weight", "first_stage_model.encoder.norm_out.bias",
                "first_stage_model.decoder.mid.block_2.norm2.weight", "first_stage_model.quant_conv.weight",
                "cond_stage_model.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.bias"):
        assert key in keys, key
    assert not any(k.endswith("output_blocks.8.2.conv.weight") or "op.weight" in k and "input_blocks.9" in k
                   for k in keys)
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    # diffusers' first decoder up block is the original's last; tensors are shared, not copied
    upsample = tiny_vae.decoder.up_blocks[0].upsamplers[0].conv.weight
    assert state["first_stage_model.decoder.up.1.upsample.conv.weight"].data_ptr() == upsample.data_ptr()


def test_open_clip_fuses_qkv_in_order_and_transposes_projection():
    torch.manual_seed(0)
    model = _text_encoder(8, projection=True)
    hf = model.state_dict()
    out = open_clip_to_ldm(hf)
    layer = "text_model.encoder.layers.1.self_attn"
    fused = out["transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(fused, torch.cat([hf[f"{layer}.q_proj.weight"], hf[f"{layer}.k_proj.weight"],
                                         hf[f"{layer}.v_proj.weight"]]))
    assert torch.equal(out["transformer.resblocks.1.attn.in_proj_bias"][8:16], hf[f"{layer}.k_proj.bias"])
    assert torch.equal(out["text_projection"], hf["text_projection.weight"].T)
    assert torch.equal(out["positional_embedding"], hf["text_model.embeddings.position_embedding.weight"])
    assert torch.equal(out["transformer.resblocks.0.mlp.c_proj.weight"], hf["text_model.encoder.layers.0.mlp.fc2.weight"])


def test_clip_keys_with_and_without_text_model_level():
    torch.manual_seed(0)
    flat = _text_encoder(8).state_dict()  # transformers 5: CLIPTextModel has no text_model. level
    nested = {f"text_model.{k}": v for k, v in flat.items()}
    assert clip_to_ldm(flat).keys() == clip_to_ldm(nested).keys()
    assert all(k.startswith("text_model.") for k in clip_to_ldm(flat))


# ----- full-size configs on the meta device ----------------------------------------------------------

def _meta_models(folder):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = models_root() / folder
    with init_empty_weights():
        models = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet")),
                  "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")),
                  "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))}
        if (root / "text_encoder_2").is_dir():
            models["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(
                root / "text_encoder_2"))
    return models


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize(("family", "folder", "kind"), [("sd1", "sd15", "v1"), ("sd2", "sd21", "v2"),
                                                         ("sdxl", "sdxl", "xl_base")])
def test_full_size_layouts_convert_back_with_diffusers(family, folder, kind, caplog):
    from diffusers.loaders import single_file_utils as sfu

    caplog.set_level(logging.ERROR)
    models = _meta_models(folder)
    state = checkpoint_to_ldm({k: m.state_dict() for k, m in models.items()}, family)
    assert sfu.infer_diffusers_model_type(state) == kind

    unet = models["unet"]
    assert _shapes(sfu.convert_ldm_unet_checkpoint(state, unet.config)) == _shapes(unet.state_dict())
    vae = models["vae"]
    assert _shapes(sfu.convert_ldm_vae_checkpoint(state, vae.config)) == _shapes(vae.state_dict())
    for name, prefix in (("text_encoder", None), ("text_encoder_2", "conditioner.embedders.1.model.")):
        if name not in models:
            continue
        model = models[name]
        if family == "sd2":
            back = sfu.convert_open_clip_checkpoint(model, state, prefix="cond_stage_model.model.")
        elif prefix:
            back = sfu.convert_open_clip_checkpoint(model, state, prefix=prefix)
        else:
            back = sfu.convert_ldm_clip_checkpoint(state)
        want = {k.removeprefix("text_model."): v for k, v in _shapes(model.state_dict()).items()}
        want.pop("embeddings.position_ids", None)
        assert {k.removeprefix("text_model."): v for k, v in _shapes(back).items()} == want, name


# ----- errors ----------------------------------------------------------------------------------------

def test_unknown_keys_and_layouts_are_named():
    with pytest.raises(FormatError, match="class_embedding.linear_1.weight"):
        unet_to_ldm({"down_blocks.0.resnets.0.norm1.weight": torch.zeros(1),
                     "class_embedding.linear_1.weight": torch.zeros(1)})
    with pytest.raises(FormatError, match="different resnet counts"):
        unet_to_ldm({"down_blocks.0.resnets.0.norm1.weight": torch.zeros(1),
                     "down_blocks.1.resnets.0.norm1.weight": torch.zeros(1),
                     "down_blocks.1.resnets.1.norm1.weight": torch.zeros(1)})
    with pytest.raises(FormatError, match="encoder.weird.weight"):
        vae_to_ldm({"encoder.weird.weight": torch.zeros(1)})
    with pytest.raises(FormatError, match="text_projection.weight"):
        clip_to_ldm({"text_projection.weight": torch.zeros(1)})
    with pytest.raises(FormatError, match=r"layer 0: weight of q/k/v incomplete \(found \['k', 'q'\]\)"):
        open_clip_to_ldm({"encoder.layers.0.self_attn.q_proj.weight": torch.zeros(1),
                          "encoder.layers.0.self_attn.k_proj.weight": torch.zeros(1)})
    with pytest.raises(FormatError, match="'sd3'.*supported: sd1, sd2, sdxl"):
        checkpoint_to_ldm({}, "sd3")
    with pytest.raises(FormatError, match=r"missing \['text_encoder_2'\]"):
        checkpoint_to_ldm({"unet": {}, "vae": {}, "text_encoder": {}}, "sdxl")
