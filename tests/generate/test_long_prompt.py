"""Prompts longer than CLIP's window at generation time: encoded in windows (as training's long captions),
the negative prompt padded to the same windows; short prompts go to the pipeline untouched."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from stack_helpers import tiny_tokenizer

from sdlora.generate import GenerateSettings, generate
from sdlora.long_prompt import prompt_embedding_kwargs, windows_needed

LONG = "a " * 100  # the tiny tokenizer is character-level: 100 tokens, then the words that differ


def _image(pipe, prompt):
    settings = GenerateSettings(prompt=prompt, seed=3, steps=2, cfg=5.0, width=16, height=16)
    return np.asarray(generate(pipe, settings).image, dtype=np.int16)


def test_short_prompts_are_left_to_the_pipeline(pipe):
    assert prompt_embedding_kwargs(pipe, "a red circle", "blurry", "cpu") == {}


def test_long_prompt_is_encoded_in_windows_and_its_end_matters(pipe):
    with torch.no_grad():
        kwargs = prompt_embedding_kwargs(pipe, LONG + "red circle", "", "cpu")
    assert kwargs["prompt_embeds"].shape[1] == 2 * 75 + 2 == kwargs["negative_prompt_embeds"].shape[1]
    assert not np.array_equal(_image(pipe, LONG + "red circle"), _image(pipe, LONG + "blue square"))


def test_sdxl_long_prompt_has_pooled_embeddings_and_zero_empty_negative(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
              "vocab_size": 1000, "projection_dim": 32}
    tokenizer = tiny_tokenizer(tmp_path)
    pipeline = SimpleNamespace(tokenizer=tokenizer, tokenizer_2=tokenizer,
                               text_encoder=CLIPTextModel(CLIPTextConfig(**config)).eval(),
                               text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**config)).eval(),
                               config=SimpleNamespace(force_zeros_for_empty_prompt=True))
    assert windows_needed(tokenizer, LONG * 2) == 3
    with torch.no_grad():
        kwargs = prompt_embedding_kwargs(pipeline, LONG + "red", None, "cpu")
    assert kwargs["prompt_embeds"].shape == (1, 152, 64) and kwargs["pooled_prompt_embeds"].shape == (1, 32)
    assert torch.count_nonzero(kwargs["negative_prompt_embeds"]) == 0
    assert torch.count_nonzero(kwargs["negative_pooled_prompt_embeds"]) == 0
