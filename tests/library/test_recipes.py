"""Recipes: A1111 parameters read from PNG, JPEG and WebP; LoRAs matched by hash then name; named recipes."""

from __future__ import annotations

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdlora.errors import ConfigError, FormatError
from sdlora.library import scan
from sdlora.recipes import (
    EXIF_IFD,
    USER_COMMENT,
    list_recipes,
    load_recipe,
    match_loras,
    missing_text,
    parse_parameters,
    read_recipe,
    recipe_from,
    save_recipe,
)
from sdlora.strength import Strength

TEXT = ('a cat, <lora:a:0.7> ink style <lora:zz:te=0.5:unet=1>\nsecond line\n'
        'Negative prompt: blurry, low quality\n'
        'Steps: 12, Sampler: DPM++ 2M Karras, CFG scale: 5.5, Seed: 1234, Size: 64x32, Model: embedded, '
        'Lora hashes: "a: {a}, zz: 0123456789ab", Version: sdlora 0.1')


def _text(hash_a="ffffffffffff"):
    return TEXT.replace("{a}", hash_a)


def test_parse_prompt_settings_and_stack():
    recipe = parse_parameters(_text())
    assert recipe.prompt == "a cat, ink style second line"  # tags out, spaces tidied as generate does
    assert recipe.negative_prompt == "blurry, low quality"
    assert (recipe.steps, recipe.sampler, recipe.cfg, recipe.seed) == (12, "DPM++ 2M Karras", 5.5, 1234)
    assert (recipe.width, recipe.height, recipe.model) == (64, 32, "embedded")
    assert [(lora.name, lora.strength, lora.hash) for lora in recipe.loras] == [
        ("a", Strength(0.7), "ffffffffffff"), ("zz", Strength(0.5, None, 1.0), "0123456789ab")]


def test_a_prompt_without_settings_line_is_all_prompt():
    recipe = parse_parameters("just a prompt, with: a colon")
    assert recipe.prompt == "just a prompt, with: a colon" and recipe.steps is None and recipe.loras == []


def test_bad_numbers_and_tags_are_one_line_errors():
    with pytest.raises(ConfigError, match="not a number"):
        parse_parameters("x\nSteps: many, Sampler: Euler, Seed: 1")
    with pytest.raises(ConfigError):
        parse_parameters("x <lora:a:strong>\nSteps: 1, Sampler: Euler, Seed: 1")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_reads_png_text_and_jpeg_webp_exif(tmp_path, fmt):
    image = Image.new("RGB", (16, 16), (10, 20, 30))
    path = tmp_path / f"image.{fmt}"
    text = _text().replace("a cat", "a cät ☕")  # not ASCII: UTF-16 in EXIF
    if fmt == "png":
        info = PngInfo()
        info.add_text("parameters", text)
        image.save(path, pnginfo=info)
    else:
        exif = Image.Exif()
        exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\x00" + text.encode("utf-16-be")  # as A1111 writes it
        image.save(path, format=fmt, exif=exif)
    recipe = read_recipe(path)
    assert recipe.prompt.startswith("a cät ☕, ink style") and recipe.seed == 1234 and len(recipe.loras) == 2


def test_an_image_without_parameters_and_a_non_image_are_refused(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(FormatError, match="no generation parameters"):
        read_recipe(tmp_path / "plain.png")
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(FormatError, match="not an image"):
        read_recipe(tmp_path / "x.png")


def test_match_by_hash_first_then_by_name_and_list_missing(library_root):
    entries = scan(library_root, cache_path=False).entries
    c = next(e for e in entries if e.name == "c")
    from sdlora.library import file_hash

    text = _text(hash_a=file_hash(c, cache_path=False)[:12])  # "a" in the image is c's weights under another name
    for entry in entries:
        entry.sha256 = ""  # as after a scan: hashes are computed only when a recipe hash is not known
    matches = match_loras(parse_parameters(text), entries, cache_path=False)
    assert [(m.lora.name, m.entry and m.entry.name, m.by) for m in matches] == [("a", "c", "hash"), ("zz", None, "")]
    assert missing_text(matches) == "not in the library: zz (hash 0123456789ab)"
    by_name = match_loras(parse_parameters(_text()), entries, cache_path=False)  # hash unknown: the name decides
    assert (by_name[0].entry.name, by_name[0].by) == ("a", "name")


def test_named_recipes_save_list_and_load(tmp_path):
    image = tmp_path / "image.png"
    Image.new("RGB", (600, 300)).save(image)
    path = save_recipe(tmp_path / "recipes", "ink cat", _text(), image)
    assert path.name == "ink cat.json" and list_recipes(tmp_path / "recipes") == ["ink cat"]
    with Image.open(tmp_path / "recipes" / "ink cat.png") as thumb:
        assert max(thumb.size) == 256
    assert load_recipe(tmp_path / "recipes", "ink cat").seed == 1234
    assert recipe_from("ink cat", tmp_path / "recipes").loras[0].name == "a"
    assert recipe_from(str(path)).cfg == 5.5
    with pytest.raises(ConfigError, match="no recipe named 'other'.*saved: ink cat"):
        load_recipe(tmp_path / "recipes", "other")
    with pytest.raises(ConfigError, match="recipe name"):
        save_recipe(tmp_path / "recipes", "../x", _text())
