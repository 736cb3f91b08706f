"""Architectures of the embedded model: the same component classes as Stable Diffusion 1.x, tiny.

32 x 32 RGB images; the VAE halves the side (16 x 16 x 4 latents); the UNet has three levels
(16, 8, 4) with self- and cross-attention on the two deeper levels and in the middle (SD has them on
all but the deepest; here the 16 x 16 level would triple the CPU cost);
the text encoder is a 2-layer CLIP transformer over a 32-token context. Module names therefore follow
SD 1.x exactly (down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k, ...), so every LoRA code
path (injection, Kohya keys, stacking) runs on it as it does on SD 1.5.
"""

from __future__ import annotations

IMAGE_SIZE = 32
LATENT_SIZE = 16
MAX_TOKENS = 32
TEXT_WIDTH = 128

VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": IMAGE_SIZE,
}

UNET = {
    "sample_size": LATENT_SIZE,
    "in_channels": 4,
    "out_channels": 4,
    # attention at 8 x 8 and 4 x 4 only: at 16 x 16 it cost a third of each CPU step
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "cross_attention_dim": TEXT_WIDTH,
    "attention_head_dim": 4,  # diffusers' legacy name: this is the number of heads
    "norm_num_groups": 8,
}

SCHEDULER = {  # SD 1.x's training schedule
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
}


def text_config(vocab_size: int, bos_id: int, eos_id: int) -> dict:
    return {
        "vocab_size": vocab_size,
        "hidden_size": TEXT_WIDTH,
        "intermediate_size": 4 * TEXT_WIDTH,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": MAX_TOKENS,
        "projection_dim": TEXT_WIDTH,
        "hidden_act": "quick_gelu",
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
    }


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE)


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET)


def make_text_encoder(vocab_size: int, bos_id: int, eos_id: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**text_config(vocab_size, bos_id, eos_id)))
