"""LoraStack on tiny real models: exactness, strengths, restore, errors."""

from __future__ import annotations

import random

import pytest
import torch
from stack_helpers import (
    assert_bit_identical,
    live_modules,
    pick,
    random_lora,
    snapshot,
    unet_output,
)

from sdlora.errors import CompatibilityError, ConfigError
from sdlora.stack import LoraStack
from sdlora.strength import Strength

CONVS = (torch.nn.Conv2d,)


def _hand_merged(components, loras_and_strengths):
    """Weights W0 + Σ s·(alpha/r)·up@down computed in float64, cast once to float32."""
    live = live_modules(components)
    merged = {}
    for lora, te_s, unet_s in loras_and_strengths:
        for name, module in lora.modules.items():
            w0 = live[name].weight.detach().double()
            s = unet_s if name.startswith("unet.") else te_s
            up = module.tensors["up"].double().reshape(w0.shape[0], -1)
            down = module.tensors["down"].double().reshape(up.shape[1], -1)
            delta = (s * module.alpha / up.shape[1]) * (up @ down)
            merged[name] = merged.get(name, w0) + delta.reshape(w0.shape)
    return {name: w.float() for name, w in merged.items()}


def _mixed_names(components):
    return pick(components, "unet", 6) + pick(components, "unet", 3, CONVS) + pick(components, "text_encoder", 4)


def test_stack_equals_hand_merged_float64(components):
    """Tolerance: each weight within 2 float32 ulps of the float64 merge, i.e. 2.5e-7 relative."""
    names = _mixed_names(components)
    a = random_lora(components, names, seed=1)
    b = random_lora(components, names[3:], rank=8, alpha=8.0, seed=2)
    expected = _hand_merged(components, [(a, 0.7, 0.7), (b, -0.4, 1.3)])
    stack = LoraStack(components)
    stack.add(a, 0.7)
    stack.add(b, Strength(-0.4, unet=1.3))
    live = live_modules(components)
    for name, want in expected.items():
        got = live[name].weight.detach()
        tol = 2 * torch.finfo(torch.float32).eps * want.abs().max()
        assert (got - want).abs().max() <= tol, name


def test_stack_output_matches_manually_merged_model(components):
    """Same UNet output as a copy of the model with the float64 merge written in (atol 1e-5)."""
    names = _mixed_names(components)
    lora = random_lora(components, names, seed=3)
    import copy

    manual = copy.deepcopy(components)
    expected = _hand_merged(manual, [(lora, 0.9, 0.9)])
    manual_live = live_modules(manual)
    with torch.no_grad():
        for name, w in expected.items():
            manual_live[name].weight.copy_(w)
    base_out = unet_output(components)
    LoraStack(components).add(lora, 0.9)
    out = unet_output(components)
    assert not torch.allclose(out, base_out, atol=1e-4), "the LoRA must change the output"
    torch.testing.assert_close(out, unet_output(manual), atol=1e-5, rtol=1e-5)


def test_strength_zero_equals_base_bit_for_bit(components):
    before = snapshot(components)
    stack = LoraStack(components)
    stack.add(random_lora(components, _mixed_names(components)), strength=0.0)
    assert_bit_identical(components, before)
    stack.set_strength(stack.entries[0].name, 1.0)
    stack.set_strength(stack.entries[0].name, 0.0)
    changed = snapshot(components)
    # after a round trip through 1.0 the incremental path may leave a rounding residue; refresh is exact
    stack.refresh()
    assert_bit_identical(components, before)
    assert changed.keys() == before.keys()


def test_te_and_unet_strengths_act_separately(components):
    names = _mixed_names(components)
    before = snapshot(components)
    stack = LoraStack(components)
    name = stack.add(random_lora(components, names), Strength(1.0, te=0.0, unet=1.0))
    after = snapshot(components)
    te_keys = [k for k in before if k.startswith("text_encoder.")]
    unet_keys = [k for k in before if k.startswith("unet.")]
    assert all(torch.equal(before[k], after[k]) for k in te_keys)
    assert any(not torch.equal(before[k], after[k]) for k in unet_keys)
    stack.set_strength(name, Strength(1.0, te=1.0, unet=0.0))
    stack.refresh()
    after = snapshot(components)
    assert all(torch.equal(before[k], after[k]) for k in unet_keys)
    assert any(not torch.equal(before[k], after[k]) for k in te_keys)


def _random_steps(seed=1234, count=40):
    """A seeded sequence of stack operations, as (action, random.Random) pairs the caller replays."""
    rng = random.Random(seed)
    return [(step, rng.choice(["add", "strength", "strength", "remove", "toggle", "batch"])) for step in range(count)]


def _play(stack, names, rng, move, added):
    """Replay one (step, action) on `stack`; `added` tracks the names in the stack."""
    step, action = move
    if action == "add" or not added:
        subset = rng.sample(names, rng.randint(1, len(names)))
        lora = random_lora(stack.components, subset, seed=step)
        added.append(stack.add(lora, rng.uniform(-2, 2), name=f"l{step}"))
    elif action == "strength":
        stack.set_strength(rng.choice(added), Strength(rng.uniform(-2, 2), te=rng.choice([None, 0.3])))
    elif action == "remove":
        stack.remove(added.pop(rng.randrange(len(added))))
    elif action == "toggle":
        target = rng.choice(added)
        stack.disable(target) if rng.random() < 0.5 else stack.enable(target)
    else:
        with stack.batch():
            for target in added:
                stack.set_strength(target, rng.uniform(-1, 1))


def test_in_place_mode_matches_the_default_and_keeps_the_tensors(components):
    """`in_place=True` (the GPU path: W patched inside the existing tensor, W0 copied to the CPU) gives
    bit-identical weights to the CPU default (W0 kept, new W swapped in) after every operation."""
    import copy

    twin = copy.deepcopy(components)
    names = _mixed_names(components)
    live, twin_live = live_modules(components), live_modules(twin)
    pointers = {n: twin_live[n].weight.data_ptr() for n in names}
    before = snapshot(twin)
    stacks = LoraStack(components), LoraStack(twin, in_place=True)
    added = ([], [])
    for step, action in _random_steps(seed=99, count=25):
        for stack, names_added in zip(stacks, added, strict=True):
            _play(stack, names, random.Random(step), (step, action), names_added)
        differ = [n for n in names if not torch.equal(live[n].weight, twin_live[n].weight)]
        assert not differ, f"step {step} ({action}): {differ[:3]}"
    assert {n: twin_live[n].weight.data_ptr() for n in names} == pointers
    stacks[1].clear()
    assert_bit_identical(twin, before)


def test_random_sequence_then_clear_restores_every_weight(components):
    rng = random.Random(1234)
    names = _mixed_names(components)
    before = snapshot(components)
    stack = LoraStack(components)
    added = []
    for move in _random_steps():
        _play(stack, names, rng, move, added)
    stack.clear()
    assert_bit_identical(components, before)
    assert stack.entries == []


def test_remove_last_lora_restores_bit_for_bit(components):
    before = snapshot(components)
    stack = LoraStack(components)
    a = stack.add(random_lora(components, _mixed_names(components), seed=1), 1.5)
    b = stack.add(random_lora(components, _mixed_names(components)[:4], seed=2), 0.5)
    stack.remove(a)
    stack.remove(b)
    assert_bit_identical(components, before)


def test_incremental_changes_stay_within_tolerance_of_exact(components):
    names = _mixed_names(components)
    loras = [random_lora(components, names, seed=s) for s in range(3)]
    stack = LoraStack(components)
    for i, lora in enumerate(loras):
        stack.add(lora, 1.0, name=f"l{i}")
    rng = random.Random(0)
    for _ in range(20):
        stack.set_strength(f"l{rng.randrange(3)}", rng.uniform(-1.5, 1.5))
    live = live_modules(components)
    got = {n: live[n].weight.detach().clone() for n in names}
    stack.refresh()  # exact recompute from W0
    for n in names:
        exact = live[n].weight.detach()
        assert (got[n] - exact).abs().max() <= 1e-5 * exact.abs().max(), n


def test_block_strengths_zero_a_block(components):
    names = pick(components, "unet", 0)
    in_block = [n for n in names if n.startswith("unet.down_blocks.1.attentions.0.")]
    other = [n for n in names if n.startswith("unet.up_blocks.0.attentions.0.")]
    assert in_block and other
    live = live_modules(components)
    before = {n: live[n].weight.detach().clone() for n in in_block + other}
    stack = LoraStack(components)
    # tiny UNet: down_blocks.1.attentions.0 is input_blocks.4 -> IN04
    stack.add(random_lora(components, in_block + other), Strength(1.0, blocks={"IN04": 0.0}))
    assert all(torch.equal(before[n], live[n].weight) for n in in_block)
    assert all(not torch.equal(before[n], live[n].weight) for n in other)


def test_block_strengths_bad_name_is_refused(components):
    stack = LoraStack(components)
    with pytest.raises(ConfigError, match="IN99"):
        stack.add(random_lora(components, _mixed_names(components)), Strength(1.0, blocks={"IN99": 0.5}))
    assert stack.entries == []


@pytest.mark.parametrize("bad", ["strong", float("nan"), float("inf"), None, True])
def test_bad_strength_is_a_clear_error(components, bad):
    before = snapshot(components)
    stack = LoraStack(components)
    with pytest.raises(ConfigError, match="strength"):
        stack.add(random_lora(components, _mixed_names(components)), strength=bad)
    assert_bit_identical(components, before)


def test_family_mismatch_refused_before_any_change(components):
    lora = random_lora(components, _mixed_names(components))
    lora.family = "sd1"
    before = snapshot(components)
    components["unet"].config.cross_attention_dim = 2048  # pretend SDXL
    with pytest.raises(CompatibilityError, match="sd1.*sdxl"):
        LoraStack(components).add(lora)
    assert_bit_identical(components, before)


def test_shape_mismatch_refused_before_any_change(components):
    names = _mixed_names(components)
    lora = random_lora(components, names)
    last = names[-1]
    module = lora.modules[last]
    module.tensors["up"] = torch.zeros(module.tensors["up"].shape[0] + 3, module.tensors["up"].shape[1])
    before = snapshot(components)
    with pytest.raises(CompatibilityError, match="different base model"):
        LoraStack(components).add(lora)
    assert_bit_identical(components, before)


def test_unknown_names_and_files_are_clear_errors(components, tmp_path):
    stack = LoraStack(components)
    stack.add(random_lora(components, _mixed_names(components)), name="style")
    with pytest.raises(ConfigError, match="no LoRA named 'stlye'.*style"):
        stack.set_strength("stlye", 0.5)
    with pytest.raises(ConfigError, match="already in the stack"):
        stack.add(random_lora(components, _mixed_names(components)), name="style")
    with pytest.raises(ConfigError, match="LoraState"):
        stack.add(42)


def test_lora_for_no_module_is_refused(components):
    lora = random_lora(components, _mixed_names(components))
    lora.modules = {f"unet.nowhere.{k}": v for k, v in lora.modules.items()}
    with pytest.raises(CompatibilityError, match="none of its"):
        LoraStack(components).add(lora)


def test_report_for_a_stacked_lora(components):
    lora = random_lora(components, _mixed_names(components))
    stack = LoraStack(components)
    name = stack.add(lora)
    report = stack.report(name)
    verdicts = {v.verdict for v in report.verdicts}
    assert verdicts == {"applied"}, report.summary()
    assert len(report.verdicts) >= len(lora.modules)
    with pytest.raises(ConfigError, match="no LoRA named"):
        stack.report("missing")


def test_progress_is_reported(components):
    seen = []
    stack = LoraStack(components, on_progress=seen.append)
    names = _mixed_names(components)
    stack.add(random_lora(components, names))
    assert seen and seen[-1].done == seen[-1].total == len(names)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_recomputed_from_w0(components, dtype):
    """Half-precision layers never drift: each change is W0 + Σ sΔW in float32, cast once."""
    for model in components.values():
        model.to(dtype)
    before = snapshot(components)
    names = _mixed_names(components)
    a, b = random_lora(components, names, seed=1), random_lora(components, names, seed=2)
    live = live_modules(components)
    originals = {name: live[name].weight.detach().float().clone() for name in names}
    stack = LoraStack(components)
    stack.add(a, 0.5, name="a")
    stack.add(b, 1.0, name="b")
    for value in (0.1, -0.7, 1.3, 0.25):
        stack.set_strength("a", value)
    for name in names:
        w0 = originals[name]
        expected = w0.reshape(w0.shape[0], -1).clone()
        for lora, s in ((a, 0.25), (b, 1.0)):
            m = lora.modules[name]
            up, down = m.tensors["up"].reshape(w0.shape[0], -1), m.tensors["down"].reshape(m.rank, -1)
            expected += s * m.scale * (up @ down)
        got = live[name].weight.detach().float().reshape(expected.shape)
        # one rounding to the half dtype: within one half-precision ulp of the float32 result
        assert (got - expected).abs().max() <= torch.finfo(dtype).eps * expected.abs().max(), name
    stack.clear()
    assert_bit_identical(components, before)


def test_entry_holds_one_strength_with_named_blocks_and_set_strength_replaces_it(components):
    """StackEntry.strength is a Strength; a block vector is named for the model; a number replaces all."""
    stack = LoraStack(components)
    names = stack.block_names()
    vector = ",".join("0.5" if n == "IN04" else "1" for n in names)
    name = stack.add(random_lora(components, _mixed_names(components)), Strength(0.8, te=0.2, blocks=vector))
    held = stack.entries[0].strength
    assert isinstance(held, Strength) and (held.overall, held.te) == (0.8, 0.2)
    assert dict(held.blocks)["IN04"] == 0.5 and len(held.blocks) == len(names)
    stack.set_strength(name, 0.3)
    assert stack.entries[0].strength == Strength(0.3)  # te and blocks follow the number again
