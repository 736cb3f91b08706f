"""The one strength type (sdlora.strength): parsing, effective values, stack keywords, immutability."""

from __future__ import annotations

import dataclasses

import pytest

from sdlora.errors import ConfigError
from sdlora.strength import Strength


def test_plain_number_means_both_encoders():
    s = Strength(0.8)
    assert (s.te_value, s.unet_value) == (0.8, 0.8)
    assert (s.te, s.unet, s.blocks) == (None, None, None) and Strength.of(0.8) == s
    assert str(s) == "0.8"


@pytest.mark.parametrize("text, te, unet", [
    ("0.8", 0.8, 0.8), ("0.5:1", 0.5, 1.0), ("te=0.5:unet=1", 0.5, 1.0), ("unet=0.25", 1.0, 0.25),
    ("0.8:te=0.5", 0.5, 0.5),  # A1111: unet follows te after te= is read
    ("-1", -1.0, -1.0),
])
def test_parse_a1111_forms(text, te, unet):
    s = Strength.parse(text)
    assert (s.te_value, s.unet_value) == (te, unet)


def test_separate_te_and_unet():
    s = Strength(0.8, te=0.5)
    assert (s.te_value, s.unet_value) == (0.5, 0.8)
    assert s.text() == "0.5:0.8"
    assert Strength.parse(s.text()) .te_value == 0.5 and Strength.parse(s.text()).unet_value == 0.8
    assert s.with_overall(0.2) == Strength(0.2, te=0.5)


def test_immutable_and_hashable():
    s = Strength(1.0, blocks={"IN04": 0.5})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.overall = 2.0  # type: ignore[misc]
    assert s.blocks == (("IN04", 0.5),)
    assert hash(s) == hash(Strength(1.0, blocks="IN04=0.5"))


def test_for_module_uses_te_unet_and_named_blocks():
    s = Strength(1.0, te=0.25, unet=0.5, blocks={"IN04": 0.0})
    assert s.for_module("text_encoder.text_model.encoder.layers.0.mlp.fc1") == 0.25
    assert s.for_module("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q") == 0.0  # IN04
    assert s.for_module("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q") == 0.5
    with pytest.raises(ConfigError, match="need a model"):
        Strength(1.0, blocks="1,0,0").for_module("unet.mid_block.attentions.0.proj_in")


def test_of_accepts_numbers_text_and_strengths():
    assert Strength.of(0.7) == Strength(0.7)
    assert Strength.of("0.5:1") == Strength(0.5, unet=1.0)
    s = Strength(1, te=0)
    assert Strength.of(s) is s


@pytest.mark.parametrize("bad, words", [("strong", "must be a number"), ("nan", "finite"),
                                        ("foo=1", "unknown option"), ("1:2:3:4", "too many")])
def test_bad_values_are_config_errors(bad, words):
    with pytest.raises(ConfigError, match=words):
        Strength.parse(bad)
    with pytest.raises(ConfigError):
        Strength(float("inf"))
