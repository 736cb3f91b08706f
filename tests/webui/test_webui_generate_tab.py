"""Generate tab handlers: slots, prompt tags, and syncing a real LoraStack without reloading."""

from __future__ import annotations

import pytest
import torch

from sdlora.errors import ConfigError
from webui.tabs import generate_tab
from webui.tabs.generate_tab import Slot

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
    for i in range(generate_tab.MAX_SLOTS - 2):
        full = generate_tab.add_slot(full, f"x{i}")
    with pytest.raises(ConfigError, match="at most"):
        generate_tab.add_slot(full, "one too many")
    assert [s.name for s in generate_tab.remove_slot(slots, 0)] == ["other"]


def test_slots_round_trip_through_flat_values():
    slots = [Slot("a", 0.5, True, False, 1.0, 1.0), Slot("b", -1.5, False, True, 0.2, 0.7)]
    updates = generate_tab.slot_updates(slots)
    per_slot = 1 + len(generate_tab.SLOT_FIELDS)
    assert len(updates) == generate_tab.MAX_SLOTS * per_slot
    values = {}
    for i in range(generate_tab.MAX_SLOTS):
        for j, field in enumerate(generate_tab.SLOT_FIELDS):
            values[f"slot{i}.{field}"] = updates[i * per_slot + 1 + j]
    assert generate_tab.slots_from_values(values) == slots
    assert slots[1].te_strength == 0.2 and slots[0].te_strength is None


def test_prompt_tags_override_slots():
    from sdlora.prompt import parse_prompt

    prompt, tags = parse_prompt("a cat <lora:a:0.3> <lora:c:te=0.5:unet=1.5>", ["a", "c"])
    merged = generate_tab._merge_tags([Slot("a", 1.0), Slot("b", 1.0)], tags)
    assert prompt == "a cat"
    assert [(s.name, s.strength, s.te_strength, s.unet_strength) for s in merged] == [
        ("a", 0.3, None, None), ("b", 1.0, None, None), ("c", 0.5, 0.5, 1.5)]


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


def test_unknown_library_name_suggests_close_ones(tmp_path):
    library = {"my-style": tmp_path / "my-style.safetensors"}
    with pytest.raises(Exception, match="did you mean my-style"):
        generate_tab._resolve(library, "my-styl")
