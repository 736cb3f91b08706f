"""Long captions (data.max_token_length 150/225): windows of 75 tokens with their own BOS/EOS, joined; the
kohya import maps them; the data set check counts captions that are cut."""

from __future__ import annotations

import pytest
import torch
from tests_train_helpers import make_tiny_components, tiny_config, write_images
from transformers import CLIPTokenizer

from sdlora.configs import tokenizers_root
from sdlora.settings.kohya_import import map_settings
from sdlora.train import train
from sdlora.train.captions import token_limit
from sdlora.train.conditioning import encode_text, join_chunks, tokenize, tokenize_chunks

WORDS = ["red", "blue", "green", "circle", "square", "triangle", "big", "small", "left", "right", "top", "bottom"]


def _long_caption(words: int) -> str:
    return ", ".join(WORDS[i % len(WORDS)] for i in range(words))


@pytest.fixture(scope="module")
def clip():
    return CLIPTokenizer.from_pretrained(tokenizers_root() / "clip-vit-large-patch14", local_files_only=True)


@pytest.fixture(scope="module")
def open_clip():  # pads with "!", not with the end token (SD2, SDXL's second encoder)
    return CLIPTokenizer.from_pretrained(tokenizers_root() / "open-clip", local_files_only=True)


def test_short_caption_first_window_is_the_usual_tokens(clip, open_clip):
    for tokenizer in (clip, open_clip):
        chunks = tokenize_chunks(tokenizer, ["a red circle"], 3)
        assert chunks.shape == (1, 3, 77)
        assert torch.equal(chunks[0, 0], tokenize(tokenizer, ["a red circle"])[0])


@pytest.mark.parametrize("chunks", [2, 3])
def test_windows_hold_the_whole_caption_in_order(clip, open_clip, chunks):
    caption = _long_caption(70)  # ~140 tokens
    for tokenizer in (clip, open_clip):
        windows = tokenize_chunks(tokenizer, [caption], chunks)[0]
        text = tokenizer(caption, add_special_tokens=False).input_ids[:token_limit(tokenizer, chunks)]
        bodies = torch.cat([window[1:-1] for window in windows]).tolist()
        assert bodies[:len(text)] == text
        assert (windows[:, 0] == tokenizer.bos_token_id).all()
        # every window has an end token (the pooled embedding is read there)
        assert all(tokenizer.eos_token_id in window.tolist() for window in windows)


def test_join_chunks_keeps_first_bos_inner_states_and_last_state():
    hidden = torch.arange(2 * 2 * 5, dtype=torch.float32).reshape(4, 5, 1)  # batch 2, 2 windows of 5
    joined = join_chunks(hidden, batch=2, chunks=2)
    assert joined.shape == (2, 2 * 3 + 2, 1)
    assert joined[0, :, 0].tolist() == [0, 1, 2, 3, 6, 7, 8, 9]


def test_long_caption_reaches_the_text_encoder(tmp_path):
    components = make_tiny_components(tmp_path)
    # the tiny tokenizer is character-level: 90 one-letter words are 90 tokens, then the word that differs
    tail_a, tail_b = "a " * 90 + "red", "a " * 90 + "blue"
    with torch.no_grad():
        cut_a, _ = encode_text(components, [tail_a], "cpu", chunks=1)
        cut_b, _ = encode_text(components, [tail_b], "cpu", chunks=1)
        long_a, _ = encode_text(components, [tail_a], "cpu", chunks=3)
        long_b, _ = encode_text(components, [tail_b], "cpu", chunks=3)
    assert cut_a.shape[1] == 77 and long_a.shape[1] == 3 * 75 + 2
    assert torch.equal(cut_a, cut_b)          # the last word is cut at 75 tokens
    assert not torch.allclose(long_a, long_b)  # and seen with 225


def test_training_with_long_captions(tmp_path):
    data = write_images(tmp_path / "data", count=2)
    (data / "img0.txt").write_text("a " * 120 + "red")
    cfg = tiny_config(data, tmp_path / "out", "data.max_token_length=150", "optim.steps=2")
    result = train(cfg, make_tiny_components(tmp_path / "c"))
    assert result.steps == 2 and result.files


def test_kohya_max_token_length_and_masks():
    result = map_settings({"max_token_length": "225", "alpha_mask": True, "masked_loss": True})
    mapped = {key: (target, value) for key, target, value in result.mapped}
    assert mapped["max_token_length"] == ("data.max_token_length", 225)
    assert mapped["alpha_mask"] == ("data.alpha_mask", True)
    assert "data.alpha_mask" in dict(result.ignored)["masked_loss"]
    odd = map_settings({"max_token_length": 100, "conditioning_data_dir": "/m"})
    assert "75, 150 or 225" in dict(odd.ignored)["max_token_length"]
    assert {key: value for key, _, value in odd.mapped} == {"conditioning_data_dir": "/m"}
