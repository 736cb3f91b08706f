"""Generate tab handlers: slots, prompt tags, and syncing a real LoraStack without reloading."""

from __future__ import annotations

import pytest
import torch

from sdlora.errors import ConfigError, SdloraError
from sdlora_webui.tabs import generate_tab
from sdlora_webui.tabs.generate_tab import Slot

TO_Q = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"


def make_lora(seed: int, rank: int = 2):
    from sdlora.weights import LoraModule, LoraState

    gen = torch.Generator().manual_seed(seed)
    module = LoraModule(kind="lora", tensors={"down": torch.randn(rank, 64, generator=gen),
                                              "up": torch.randn(64, rank, generator=gen)}, alpha=float(rank))
    return LoraState(modules={TO_Q: module}, path=f"lora{seed}.safetensors")


def weight(unet):
    return unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight


def test_add_and_remove_slots():
    slots = generate_tab.add_slot([], "style")
    slots = generate_tab.add_slot(slots, "other")
    assert [s.name for s in slots] == ["style", "other"]
    with pytest.raises(ConfigError, match="already"):
        generate_tab.add_slot(slots, "style")
    with pytest.raises(ConfigError, match="pick"):
        generate_tab.add_slot(slots, "")
    full = slots
    for i in range(10):  # no slot limit
        full = generate_tab.add_slot(full, f"x{i}")
    assert len(full) == 12
    assert [s.name for s in generate_tab.remove_slot(slots, 0)] == ["other"]


def test_slots_round_trip_through_the_stack_state():
    slots = [Slot("a", 0.5, True, False, 1.0, 1.0), Slot("b", -1.5, False, True, 0.2, 0.7)]
    value, version = generate_tab.slot_updates(slots)
    assert generate_tab.slots_from_values({"stack": value}) == slots
    assert generate_tab.slot_updates(slots)[1] != version  # a new version: the rows are drawn again
    moved = generate_tab.set_slot_field(value, 1, "strength", 0.25)
    assert generate_tab.slots_of(moved)[1].strength == 0.25 and value[1]["strength"] == -1.5  # a new list
    assert slots[1].value.te == 0.2 and slots[0].value.te is None


def test_insert_trigger_words_into_the_prompt():
    assert generate_tab.insert_words("", ["zqx"]) == "zqx"
    assert generate_tab.insert_words("a cat", ["zqx", "ink style"]) == "a cat, zqx, ink style"
    assert generate_tab.insert_words("a cat, ZQX", ["zqx"]) == "a cat, ZQX"  # already there: not twice


def form(prompt="a red circle", **slots):
    values = {"prompt": prompt, "negative": "", "seed": 3, "steps": 2, "cfg": 5.0, "width": 32, "height": 32}
    values["stack"] = [{"name": name, "strength": strength, "enabled": True, "separate": False, "te": 1.0,
                        "unet": 1.0} for name, strength in slots.items()]
    return values


@pytest.mark.slow
def test_generate_then_move_a_slider_reloads_nothing(gen_app, monkeypatch):
    import numpy as np

    import sdlora.formats

    loads = []
    real_load = sdlora.formats.load_lora
    monkeypatch.setattr(sdlora.formats, "load_lora", lambda path, *a, **k: loads.append(path) or real_load(path))
    image1, params, status = generate_tab.generate(gen_app, form(a=1.0))
    assert image1.size == (32, 32) and "Lora hashes" in params and "Seed: 3" in params
    assert "1 loaded from disk" in status and len(loads) == 1
    image2, _, status = generate_tab.generate(gen_app, form(a=-1.5))
    assert "0 loaded from disk, 1 updated in place" in status and len(loads) == 1
    assert not np.array_equal(np.asarray(image1), np.asarray(image2))
    # the same slider value again gives the same image (exact in-place update, seeded)
    image3, _, _ = generate_tab.generate(gen_app, form(a=1.0))
    assert np.abs(np.asarray(image3, dtype=int) - np.asarray(image1, dtype=int)).max() <= 1


def test_prompt_tags_apply_for_one_image(gen_app):
    _, params, _ = generate_tab.generate(gen_app, form("a red circle <lora:b:0.5>", a=1.0))
    assert "b:" in params.split("Lora hashes")[1]
    _, stack = gen_app.pipeline_and_stack()
    assert [e.name for e in stack.entries] == ["a"]


def test_generate_errors_are_clear(gen_app):
    with pytest.raises(SdloraError, match="did you mean"):
        generate_tab.generate(gen_app, form(aa=1.0))
    with pytest.raises(ConfigError, match="multiple of 8"):
        generate_tab.generate(gen_app, form(a=1.0) | {"width": 30})


def test_sync_stack_updates_in_place_without_reloading(tiny_unet):
    from sdlora.stack import LoraStack

    loras = {"a": make_lora(1), "b": make_lora(2)}
    loaded = []

    def resolve(name):
        loaded.append(name)
        return loras[name]

    w0 = weight(tiny_unet).detach().clone()
    stack = LoraStack({"unet": tiny_unet})
    counts = generate_tab.sync_stack(stack, [Slot("a", 1.0), Slot("b", 0.5)], resolve)
    assert counts == {"loaded": 2, "changed": 0, "removed": 0} and loaded == ["a", "b"]
    expected = w0 + loras["a"].delta(TO_Q) + 0.5 * loras["b"].delta(TO_Q)
    assert torch.allclose(weight(tiny_unet), expected, atol=1e-5)

    # a slider move: one strength change, nothing loaded
    counts = generate_tab.sync_stack(stack, [Slot("a", 1.0), Slot("b", -1.0)], resolve)
    assert counts == {"loaded": 0, "changed": 1, "removed": 0} and loaded == ["a", "b"]
    expected = w0 + loras["a"].delta(TO_Q) - loras["b"].delta(TO_Q)
    assert torch.allclose(weight(tiny_unet), expected, atol=1e-5)

    # the enable box and the advanced UNet strength
    counts = generate_tab.sync_stack(stack, [Slot("a", 1.0, enabled=False), Slot("b", 1.0, True, True, 0.0, 2.0)],
                                     resolve)
    assert counts["loaded"] == 0
    assert torch.allclose(weight(tiny_unet), w0 + 2.0 * loras["b"].delta(TO_Q), atol=1e-5)

    # nothing changed -> nothing done
    same = [Slot("a", 1.0, enabled=False), Slot("b", 1.0, True, True, 0.0, 2.0)]
    assert generate_tab.sync_stack(stack, same, resolve) == {"loaded": 0, "changed": 0, "removed": 0}

    # removing both restores the base bit for bit
    assert generate_tab.sync_stack(stack, [], resolve)["removed"] == 2
    assert torch.equal(weight(tiny_unet), w0)


def test_unknown_library_name_suggests_close_ones(tmp_path, app):
    library = {"my-style": tmp_path / "my-style.safetensors"}
    with pytest.raises(Exception, match="did you mean my-style"):
        generate_tab._resolve(app, library, "my-styl")


def test_generation_works_while_a_training_job_runs(gen_app):
    import threading

    release = threading.Event()
    job = gen_app.jobs.submit("blocking training", lambda ctx: release.wait(60))
    try:
        while gen_app.jobs.get(job.id).status != "running":
            threading.Event().wait(0.01)
        image, _, _ = generate_tab.generate(gen_app, form(a=1.0))
        assert image.size == (32, 32)
        assert gen_app.jobs.get(job.id).status == "running"
    finally:
        release.set()


def test_added_slot_starts_at_the_preferred_weight(gen_app):
    from sdlora.library import write_notes

    write_notes(gen_app.config.lora_dir / "a.safetensors", {"preferred weight": 0.6})
    assert generate_tab.preferred_weight(gen_app, "a") == 0.6
    assert generate_tab.preferred_weight(gen_app, "b") == 1.0
    assert generate_tab.add_slot([], "a", generate_tab.preferred_weight(gen_app, "a"))[0].strength == 0.6


def test_sampler_dropdown_picks_the_sampler_for_one_image(gen_app):
    pipe, _ = gen_app.pipeline_and_stack()
    own = pipe.scheduler
    _, params, _ = generate_tab.generate(gen_app, form(a=1.0) | {"sampler": "Euler a"})
    assert "Sampler: Euler a," in params and pipe.scheduler is own
    _, params, _ = generate_tab.generate(gen_app, form(a=1.0) | {"sampler": generate_tab.MODEL_SAMPLER})
    assert "Sampler: Euler a," not in params
    with pytest.raises(ConfigError, match="unknown sampler"):
        generate_tab.generate(gen_app, form(a=1.0) | {"sampler": "nope"})


def test_default_size_comes_from_the_base_configs(tmp_path):
    from types import SimpleNamespace

    from sdlora.configs import models_root

    def size(base):
        return generate_tab.default_size(SimpleNamespace(config=SimpleNamespace(base=base)))

    assert size("embedded") == 32
    assert size(str(models_root() / "sdxl")) == 1024
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 16)
    assert size(str(bad)) == size("org/model") == 512  # only loading would tell: GenerateSettings' default
