"""Prompts longer than CLIP's window at generation time, as A1111 takes them and as training's long captions
are encoded (docs/training.md, "Long captions"): the prompt is cut into windows of the tokenizer's length,
each encoded alone, the states joined; the negative prompt gets as many windows, so both have one length.

`prompt_embedding_kwargs` returns the embedding arguments of a diffusers SD/SDXL pipeline call, or {} when
both prompts fit one window: then the pipeline encodes them itself, exactly as before.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

from sdlora.train.conditioning import encode_text


def _tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False).input_ids)


def windows_needed(tokenizer, *texts: str) -> int:
    """Windows of `tokenizer.model_max_length - 2` tokens the longest of `texts` needs."""
    body = tokenizer.model_max_length - 2
    return max(1, *(math.ceil(_tokens(tokenizer, text or "") / body) for text in texts))


def prompt_embedding_kwargs(pipeline, prompt: str, negative: str | None, device) -> dict:
    """`prompt_embeds` / `negative_prompt_embeds` (and SDXL's pooled ones) for a long prompt; {} otherwise."""
    chunks = windows_needed(pipeline.tokenizer, prompt, negative or "")
    if chunks == 1:
        return {}
    text_encoder_2 = getattr(pipeline, "text_encoder_2", None)
    parts = SimpleNamespace(tokenizer=pipeline.tokenizer, text_encoder=pipeline.text_encoder,
                            tokenizer_2=getattr(pipeline, "tokenizer_2", None), text_encoder_2=text_encoder_2,
                            is_sdxl=text_encoder_2 is not None)
    hidden, pooled = encode_text(parts, [prompt], device, chunks)
    negative_hidden, negative_pooled = encode_text(parts, [negative or ""], device, chunks)
    if parts.is_sdxl and not negative and getattr(pipeline.config, "force_zeros_for_empty_prompt", False):
        # what the SDXL pipeline does for an empty negative prompt
        negative_hidden, negative_pooled = negative_hidden.zero_(), negative_pooled.zero_()
    kwargs = {"prompt_embeds": hidden, "negative_prompt_embeds": negative_hidden}
    if parts.is_sdxl:
        kwargs.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled)
    return kwargs
