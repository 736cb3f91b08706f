"""Generate tab recipes: rebuild prompt, settings and stack from a generated PNG and draw the same image;
save and load a named recipe; missing LoRAs named with their hash."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdlora.errors import SdloraError
from sdlora_webui.tabs import generate_tab, recipe_panel

FIELDS = recipe_panel.RECIPE_FIELDS


def _form(values: list) -> dict:
    form = dict(zip(FIELDS, values[:len(FIELDS)], strict=True))
    form["stack"] = values[len(FIELDS)]
    return form


@pytest.mark.slow
def test_rebuild_from_a_generated_png_draws_the_same_image(gen_app, tmp_path):
    stack = [{"name": "a", "strength": 0.7, "enabled": True, "separate": False, "te": 1.0, "unet": 1.0},
             {"name": "b", "strength": 1.0, "enabled": True, "separate": True, "te": 0.5, "unet": -0.6}]
    form = {"prompt": "a red circle", "negative": "blue", "seed": 5, "steps": 3, "cfg": 6.0, "sampler": "Euler a",
            "width": 32, "height": 24, "stack": stack}
    image, parameters, _ = generate_tab.generate(gen_app, form)
    png = max((tmp_path / "out").rglob("*.png"))
    with Image.open(png) as saved:
        assert saved.text["parameters"] == parameters
    gen_app.pipeline_and_stack()[1].clear()  # another session: nothing stacked
    values = recipe_panel.rebuild_from_image(gen_app, str(png))
    rebuilt = _form(values)
    assert values[-1].startswith("rebuilt from the image: 2 LoRA(s) in the stack")
    assert (rebuilt["prompt"], rebuilt["negative"], rebuilt["seed"], rebuilt["steps"], rebuilt["cfg"]) == (
        "a red circle", "blue", 5, 3, 6.0)
    assert (rebuilt["sampler"], rebuilt["width"], rebuilt["height"]) == ("Euler a", 32, 24)
    slots = generate_tab.slots_of(rebuilt["stack"])
    assert [(s.name, s.strength, s.separate, s.te, s.unet) for s in slots] == [
        ("a", 0.7, False, 0.7, 0.7), ("b", 0.5, True, 0.5, -0.6)]
    again, parameters_again, _ = generate_tab.generate(gen_app, rebuilt)
    assert np.array_equal(np.asarray(again), np.asarray(image)) and parameters_again == parameters
    # saved under a name (the image as thumbnail) and loaded back
    _, message = recipe_panel.save_current(gen_app, "red circle", parameters, image)
    assert message == "saved recipe 'red circle'" and recipe_panel.saved_names(gen_app) == ["red circle"]
    assert _form(recipe_panel.load_saved(gen_app, "red circle"))["stack"] == rebuilt["stack"]


def test_missing_loras_are_named_with_their_hash(gen_app):
    from sdlora.recipes import parse_parameters

    recipe = parse_parameters('x <lora:a:1> <lora:gone:0.5>\nSteps: 2, Sampler: Euler, Seed: 1, Size: 32x32, '
                              'Lora hashes: "a: 000000000000, gone: 0123456789ab"')
    values = recipe_panel.apply_recipe(gen_app, recipe, "the image")
    assert [s.name for s in generate_tab.slots_of(values[len(FIELDS)])] == ["a"]  # a: by name (hash unknown)
    assert "not in the library: gone (hash 0123456789ab)" in values[-1] and values[-2] == ["0123456789ab"]
    with pytest.raises(SdloraError, match="generate an image first"):
        recipe_panel.save_current(gen_app, "x", "", None)
