"""Sample prompts with kohya's per-prompt options (--n, --w, --h, --d, --s, --l): parsing, errors before
training, and what reaches the pipeline."""

import pytest
from PIL import Image

from sdlora.errors import ConfigError
from sdlora.train import samples
from sdlora.train.samples import SamplePrompt, parse_sample_prompt


def test_all_options_parse():
    parsed = parse_sample_prompt("a cat, sitting --n blurry, lowres --w 512 --h 768 --d 42 --s 30 --l 6.5")
    assert parsed == SamplePrompt("a cat, sitting", negative="blurry, lowres", width=512, height=768, seed=42,
                                  steps=30, cfg_scale=6.5)


def test_plain_prompt_and_dashes_inside_words():
    assert parse_sample_prompt("  a cat  ") == SamplePrompt("a cat")
    # only " --x " starts an option: a hyphenated word or "--" glued to text stays in the prompt
    assert parse_sample_prompt("a close-up of a cat--dog --N no-people").prompt == "a close-up of a cat--dog"
    assert parse_sample_prompt("a close-up of a cat--dog --N no-people").negative == "no-people"


def test_options_in_any_order_and_case():
    assert parse_sample_prompt("x --S 5 --n a b c --W 64") == SamplePrompt("x", negative="a b c", width=64, steps=5)


@pytest.mark.parametrize(("text", "match"), [
    ("a cat --q 3", "unknown option --q"),
    ("a cat --w wide", "--w expects a whole number"),
    ("a cat --l high", "--l expects a number"),
    ("a cat --h 500", "multiple of 8"),
    ("a cat --s 0", "at least 1"),
])
def test_bad_options_are_config_errors_naming_the_prompt(text, match):
    with pytest.raises(ConfigError, match=match) as err:
        parse_sample_prompt(text)
    assert repr(text) in str(err.value)


def test_bad_prompt_fails_before_the_model_loads(tmp_path, monkeypatch):
    import sdlora.train.session as train_mod
    from sdlora.settings.config import load_config

    monkeypatch.setattr(train_mod, "_load_base", lambda cfg: pytest.fail("the model must not load"))
    cfg = load_config(None, [f"data.path={tmp_path}", "output.sample_prompts=[a cat --x 1]"])
    with pytest.raises(ConfigError, match="unknown option --x"):
        train_mod.train(cfg)


class _WordTokenizer:
    """One token per word, a 77-token window: enough for the long-prompt check to see short prompts."""

    model_max_length = 77

    def __call__(self, text, **kwargs):
        return type("Ids", (), {"input_ids": text.split()})()


class _FakePipe:
    """Records each call; returns an image of the requested size (no diffusion needed to test the wiring)."""

    def __init__(self):
        self.calls = []
        self.tokenizer = _WordTokenizer()

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        image = Image.new("RGB", (kwargs["width"], kwargs["height"]), "gray")
        return type("Out", (), {"images": [image]})()


def test_options_reach_the_pipeline_and_defaults_fill_the_rest(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import torch

    pipe = _FakePipe()
    monkeypatch.setattr(samples, "build_pipeline", lambda components: pipe)
    components = SimpleNamespace(unet=SimpleNamespace(device=torch.device("cpu")))
    paths = samples.render_samples(components, ["a cat --n ugly --w 64 --h 32 --d 7 --s 3 --l 4", "a dog"], 5,
                                   tmp_path, size=16, steps=20, seed=100)
    first, second = pipe.calls
    assert {k: v for k, v in first.items() if k != "generator"} == {
        "prompt": "a cat", "negative_prompt": "ugly", "width": 64, "height": 32, "num_inference_steps": 3,
        "guidance_scale": 4.0}
    assert first["generator"].initial_seed() == 7
    assert {k: v for k, v in second.items() if k != "generator"} == {
        "prompt": "a dog", "width": 16, "height": 16, "num_inference_steps": 20}
    assert second["generator"].initial_seed() == 101  # seed + index, as before
    assert Image.open(paths[1]).size == (64, 32) and Image.open(paths[2]).size == (16, 16)
    grid = Image.open(paths[0])
    # small images are enlarged 8x (the smallest side, 16 px, to 128); cells fit the widest (64 px) image
    assert grid.size == (2 * 64 * 8, 32 * 8 + 36)
