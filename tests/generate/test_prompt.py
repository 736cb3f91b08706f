"""A1111 prompt tags."""

from __future__ import annotations

import pytest

from sdlora.errors import ConfigError
from sdlora.prompt import clean_prompt, parse_prompt
from sdlora.strength import Strength


def test_plain_and_positional_tags():
    text, reqs = parse_prompt("a cat <lora:style:0.8>, sitting <lora:pose:0.5:1.25> on grass <lora:plain>")
    assert text == "a cat, sitting on grass"
    assert [(r.name, r.strength) for r in reqs] == [
        ("style", Strength(0.8)), ("pose", Strength(0.5, unet=1.25)), ("plain", Strength(1.0))]
    assert reqs[0].tag == "<lora:style:0.8>"


def test_named_te_and_unet():
    _, (req,) = parse_prompt("<lora:name:te=0.5:unet=1>")
    assert (req.strength.te_value, req.strength.unet_value) == (0.5, 1.0)
    _, (req,) = parse_prompt("<lora:name:unet=0.25>")
    assert (req.strength.te_value, req.strength.unet_value) == (1.0, 0.25)
    _, (req,) = parse_prompt("<lora:name:0.7:unet=0.2>")
    assert (req.strength.te_value, req.strength.unet_value) == (0.7, 0.2)
    # A1111: the UNet strength defaults to the text-encoder one after te= is read
    _, (req,) = parse_prompt("<lora:name:0.8:te=0.5>")
    assert (req.strength.te_value, req.strength.unet_value) == (0.5, 0.5)


def test_lbw_and_lyco_and_negative():
    _, reqs = parse_prompt("x <lyco:old:-0.5> <lora:b:1:lbw=1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1>")
    assert reqs[0].name == "old" and reqs[0].strength == Strength(-0.5)
    assert reqs[1].strength.blocks == "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"


def test_known_names_resolve_case_and_suggest():
    _, (req,) = parse_prompt("<lora:MyStyle:1>", known=["mystyle", "other"])
    assert req.name == "mystyle"
    with pytest.raises(ConfigError, match="no LoRA named 'mystlye'.*did you mean mystyle"):
        parse_prompt("<lora:mystlye:1>", known=["mystyle", "other"])


@pytest.mark.parametrize("bad, words", [
    ("<lora:x:strong>", "strength must be a number"),
    ("<lora:x:nan>", "finite"),
    ("<lora::1>", "name is empty"),
    ("<lora:x:foo=1>", "unknown option 'foo'"),
    ("<lora:x:te=1:0.5>", "plain value after a named"),
    ("<lora:x:1:2:3:4>", "too many values"),
])
def test_bad_tags_are_clear_errors(bad, words):
    with pytest.raises(ConfigError, match=words):
        parse_prompt(f"a photo {bad}")


def test_prompt_without_tags_unchanged_and_cleanup():
    assert parse_prompt("a photo of a cat, 4k") == ("a photo of a cat, 4k", [])
    assert clean_prompt(" ,a ,  , b  ,") == "a, b"
