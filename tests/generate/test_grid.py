"""Strength grids (sdlora.grid) and stopping / previewing a generation (sdlora.generate)."""

from __future__ import annotations

import numpy as np
import pytest
from stack_helpers import assert_bit_identical, pick, random_lora, snapshot

from sdlora import save_lora
from sdlora.errors import ConfigError, Interrupted
from sdlora.generate import GenerateSettings, generate
from sdlora.grid import SEED, Axis, parse_values, strength_grid
from sdlora.stack import LoraStack
from sdlora.strength import Strength


def _settings(seed=3):
    return GenerateSettings(prompt="a cat", seed=seed, steps=2, cfg=5.0, width=16, height=16)


def _draw(pipe, stack):
    def draw(seed):
        return generate(pipe, _settings(seed), stack=stack).image
    return draw


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


@pytest.fixture
def second_lora(components, tmp_path):
    names = [n for n in pick(components, "unet", 0) if ".attentions." in n]
    path = tmp_path / "other.safetensors"
    save_lora(random_lora(components, names, scale=0.3, seed=7), path, format="kohya")
    return path


def test_strength_by_seed_cells_equal_single_images(pipe, lora_file, monkeypatch):
    stack = LoraStack(pipe)
    stack.add(lora_file, 0.7, name="style")
    import sdlora.formats

    monkeypatch.setattr(sdlora.formats, "load_lora", lambda *a, **k: pytest.fail("a grid cell loaded a file"))
    result = strength_grid(stack, _draw(pipe, stack), Axis("style", (0.0, 0.5, 1.0)), Axis(SEED, (3, 4)), seed=3)
    monkeypatch.undo()
    assert len(result.cells) == 2 and len(result.cells[0]) == 3
    assert stack.entries[0].strength == Strength(0.7)  # put back
    for i, seed in enumerate((3, 4)):
        for j, strength in enumerate((0.0, 0.5, 1.0)):
            fresh = LoraStack(pipe)  # a single image on a fresh stack at that strength and seed
            stack.clear()
            fresh.add(lora_file, strength, name="style")
            single = generate(pipe, _settings(seed), stack=fresh).image
            fresh.clear()
            assert _same(result.cells[i][j], single), (seed, strength)
            x, y = result.boxes[i][j]
            crop = result.image.crop((x, y, x + single.width, y + single.height))
            assert _same(crop, single), "the assembled sheet holds the cell at its box"
    assert result.image.width > 3 * 16 and result.image.height > 2 * 16  # labels take room


def test_two_loras_against_each_other_and_exact_restore(pipe, components, lora_file, second_lora):
    before = snapshot(components)
    stack = LoraStack(pipe)
    stack.add(lora_file, 1.0, name="style")
    stack.add(second_lora, Strength(-0.5, te=0.25), name="other")
    reference = LoraStack(pipe)
    result = strength_grid(stack, _draw(pipe, stack), Axis("style", (0.0, 1.0)), Axis("other", (0.5, -1.0)), seed=5)
    assert [(e.name, e.strength) for e in stack.entries] == [("style", Strength(1.0)), ("other", Strength(-0.5, te=0.25))]
    stack.clear()
    assert_bit_identical(components, before)
    for i, b in enumerate((0.5, -1.0)):
        for j, a in enumerate((0.0, 1.0)):
            with reference.batch():
                reference.add(lora_file, a, name="style")
                reference.add(second_lora, Strength(b, te=0.25), name="other")
            assert _same(result.cells[i][j], generate(pipe, _settings(5), stack=reference).image), (a, b)
            reference.clear()


def test_grid_refuses_bad_axes(pipe, lora_file):
    stack = LoraStack(pipe)
    stack.add(lora_file, name="style")
    with pytest.raises(ConfigError, match="no LoRA of that name"):
        strength_grid(stack, _draw(pipe, stack), Axis("nope", (1.0,)), Axis(SEED, (1,)))
    with pytest.raises(ConfigError, match="both grid axes"):
        strength_grid(stack, _draw(pipe, stack), Axis("style", (1.0,)), Axis("style", (0.0,)))
    with pytest.raises(ConfigError, match="not a list of numbers"):
        parse_values("0, strong", "strengths")
    assert parse_values("1; 2,3", "seeds", whole=True) == (1, 2, 3)


def test_grid_stops_between_cells_and_restores(pipe, lora_file):
    stack = LoraStack(pipe)
    stack.add(lora_file, 0.3, name="style")
    asked = []
    with pytest.raises(Interrupted, match="1 of 4"):
        strength_grid(stack, _draw(pipe, stack), Axis("style", (0.0, 1.0)), Axis(SEED, (1, 2)),
                      should_stop=lambda: asked.append(1) or len(asked) > 1)
    assert stack.entries[0].strength == Strength(0.3) and not stack.exact


def test_generation_stops_within_a_step_and_previews(pipe, components, lora_file):
    before = snapshot(components)
    steps, previews = [], []
    settings = GenerateSettings(prompt="a cat <lora:style:1>", seed=1, steps=6, width=16, height=16)
    with pytest.raises(Interrupted, match="after step 2 of 6"):
        generate(pipe, settings, library={"style": str(lora_file)}, on_progress=lambda p: steps.append(p.done),
                 should_stop=lambda: len(steps) >= 2)
    assert steps == [1, 2]
    assert_bit_identical(components, before)  # the tag's LoRA was taken out again
    generate(pipe, settings, on_preview=lambda step, image: previews.append((step, image.size)), preview_every=2,
             library={"style": str(lora_file)})
    assert previews == [(2, (16, 16)), (4, (16, 16))]
