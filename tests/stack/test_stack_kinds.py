"""Every adapter kind through the stack matches the docs/formats.md formula on hand-built cases."""

from __future__ import annotations

import pytest
import torch
from stack_helpers import assert_bit_identical, live_modules, pick, random_lora, snapshot

from sdlora.errors import CompatibilityError
from sdlora.stack import LoraStack
from sdlora.weights import LoraModule, LoraState

G = torch.Generator().manual_seed(7)


def rnd(*shape):
    return torch.randn(*shape, generator=G, dtype=torch.float64) * 0.1


def _conv3(components):
    live = live_modules(components)
    return next(n for n, m in live.items() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))


def _linear(components):
    return pick(components, "unet", 1)[0]


def _case_locon(w):
    """LoCon 3x3 conv (docs/formats.md §2.5): ΔW = (up(out,r) @ down(r, in·k·k)).reshape(W) · alpha/r."""
    out, cin, kh, kw = w.shape
    down, up = rnd(4, cin, kh, kw), rnd(out, 4, 1, 1)
    module = LoraModule("lora", {"down": down.float(), "up": up.float()}, alpha=3.0)
    delta = (up.reshape(out, 4) @ down.reshape(4, -1)).reshape(w.shape) * (3.0 / 4)
    return module, delta


def _case_tucker(w):
    """Tucker LoCon (docs/formats.md §2.5): ΔW[i,j,k,l] = Σ up[i,n] mid[n,m,k,l] down[m,j]."""
    out, cin, kh, kw = w.shape
    down, mid, up = rnd(4, cin, 1, 1), rnd(4, 4, kh, kw), rnd(out, 4, 1, 1)
    module = LoraModule("lora", {"down": down.float(), "mid": mid.float(), "up": up.float()}, alpha=4.0)
    delta = torch.zeros(w.shape, dtype=torch.float64)
    for n in range(4):
        for m in range(4):
            delta += up[:, n, 0, 0, None, None, None] * mid[n, m][None, None] * down[m, :, 0, 0][None, :, None, None]
    return module, delta


def _case_loha(w):
    """LoHa (docs/formats.md §2.6): ΔW = (w1a @ w1b) ⊙ (w2a @ w2b) · alpha/r."""
    out, cin = w.shape[0], w[0].numel()
    w1a, w1b, w2a, w2b = rnd(out, 2), rnd(2, cin), rnd(out, 2), rnd(2, cin)
    tensors = {"w1a": w1a, "w1b": w1b, "w2a": w2a, "w2b": w2b}
    module = LoraModule("loha", {k: v.float() for k, v in tensors.items()}, alpha=1.0, shape=tuple(w.shape))
    delta = ((w1a @ w1b) * (w2a @ w2b) * 0.5).reshape(w.shape)
    return module, delta


def _case_lokr(w):
    """LoKr (docs/formats.md §2.7): ΔW = kron(w1, w2a @ w2b) · alpha/r, r from w2b."""
    out, cin = w.shape[0], w.shape[1]
    w1 = rnd(2, 2)
    w2a, w2b = rnd(out // 2, 3), rnd(3, cin // 2)
    module = LoraModule("lokr", {"w1": w1.float(), "w2a": w2a.float(), "w2b": w2b.float()}, alpha=6.0)
    delta = torch.kron(w1, w2a @ w2b) * 2.0
    return module, delta


def _case_dora(w):
    """DoRA per-output (docs/formats.md §2.9): W' = m ⊙ (W + sΔW)/‖W + sΔW‖_row, ΔW_eff = W' - W."""
    out, cin = w.shape
    down, up, m = rnd(4, cin), rnd(out, 4), rnd(out, 1).abs() + 1.0
    module = LoraModule(
        "lora", {"down": down.float(), "up": up.float(), "dora_scale": m.float()}, alpha=4.0, dora_axis="out"
    )
    merged = w.double() + up @ down
    delta = m * merged / merged.norm(dim=1, keepdim=True) - w.double()
    return module, delta


def _case_full(w):
    diff = rnd(*w.shape)
    return LoraModule("full", {"diff": diff.float()}), diff


CASES = {
    "locon": (_case_locon, _conv3),
    "tucker": (_case_tucker, _conv3),
    "loha": (_case_loha, _linear),
    "lokr": (_case_lokr, _linear),
    "dora": (_case_dora, _linear),
    "full": (_case_full, _linear),
}


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_kind_matches_formula(components, kind, strength):
    """Tolerance: 1e-5 of the weight's magnitude (factors are float32, formula in float64)."""
    build, where = CASES[kind]
    name = where(components)
    weight = live_modules(components)[name].weight
    w0 = weight.detach().double().clone()
    module, delta = build(weight.detach())
    stack = LoraStack(components)
    stack.add(LoraState(modules={name: module}), strength)
    expected = w0 + strength * delta
    err = (weight.detach().double() - expected).abs().max()
    assert err <= 1e-5 * expected.abs().max(), f"{kind}: max error {err}"
    assert (weight.detach().double() - w0).abs().max() > 1e-4, "the delta must be visible"


def test_mixed_kinds_on_one_layer_then_clear(components):
    name = _linear(components)
    weight = live_modules(components)[name].weight
    before = snapshot(components)
    w0 = weight.detach().double().clone()
    stack = LoraStack(components)
    total = torch.zeros_like(w0)
    for kind in ["loha", "lokr", "dora", "full"]:
        module, delta = CASES[kind][0](weight.detach().clone() if kind != "dora" else w0.float())
        stack.add(LoraState(modules={name: module}), 0.5, name=kind)
        total += 0.5 * delta
    err = (weight.detach().double() - (w0 + total)).abs().max()
    assert err <= 1e-5 * w0.abs().max()
    stack.clear()
    assert_bit_identical(components, before)


def _linear_with_bias(components):
    live = live_modules(components)
    return next(n for n, m in live.items() if isinstance(m, torch.nn.Linear) and m.bias is not None)


def test_full_diff_bias_is_applied_changed_and_restored(components):
    """LyCORIS full modules carry `diff_b`: bias = b0 + s·diff_b, like the weight (docs/formats.md §2.8)."""
    name = _linear_with_bias(components)
    module = live_modules(components)[name]
    before = snapshot(components)
    w0, b0 = module.weight.detach().double().clone(), module.bias.detach().double().clone()
    diff, diff_b = rnd(*module.weight.shape), rnd(module.bias.shape[0])
    lora = LoraState(modules={name: LoraModule("full", {"diff": diff.float(), "diff_b": diff_b.float()})})
    stack = LoraStack(components)
    stack.add(lora, 0.8, name="full")
    for strength in (0.8, -0.3, 0.0, 1.2):
        stack.set_strength("full", strength)
        assert (module.bias.detach().double() - (b0 + strength * diff_b)).abs().max() <= 1e-6
        assert (module.weight.detach().double() - (w0 + strength * diff)).abs().max() <= 1e-5
    stack.clear()
    assert_bit_identical(components, before)


def test_bias_diff_on_a_layer_without_bias_is_refused_before_any_change(components):
    live = live_modules(components)
    name = next(n for n, m in live.items() if isinstance(m, torch.nn.Linear) and m.bias is None)
    before = snapshot(components)
    diff = rnd(*live[name].weight.shape).float()
    lora = LoraState(modules={name: LoraModule("full", {"diff": diff, "diff_b": torch.ones(diff.shape[0])})})
    with pytest.raises(CompatibilityError, match="bias diff"):
        LoraStack(components).add(lora)
    assert_bit_identical(components, before)


def test_pristine_weight_is_never_written_through_zero_strength(components):
    """On the CPU the module's own W0 tensor is the backup: a move to strength 0 puts it back in the
    model, and the next move must build a new W instead of adding into W0."""
    name = _linear(components)
    module = live_modules(components)[name]
    w0_tensor = module.weight.data
    w0_copy = w0_tensor.clone()
    lora = LoraState(modules={name: LoraModule("full", {"diff": rnd(*w0_copy.shape).float()})})
    plain = random_lora(components, [name], seed=3)
    stack = LoraStack(components)
    stack.add(plain, 1.0, name="plain")
    stack.add(lora, 1.0, name="full")
    for step in [("plain", 0.0), ("full", 0.0), ("plain", 0.7), ("full", 0.4), ("plain", 0.0), ("full", 0.0)]:
        stack.set_strength(*step)
        assert torch.equal(w0_tensor, w0_copy), f"W0 changed after {step}"
    assert torch.equal(module.weight.detach(), w0_copy)
    stack.set_strength("plain", 0.5)
    assert not torch.equal(module.weight.detach(), w0_copy) and torch.equal(w0_tensor, w0_copy)


def test_patched_weights_work_under_autograd(components):
    """The swapped-in W must be an ordinary tensor (not an inference-mode one): a later training step or
    any forward that needs input gradients saves it for backward."""
    name = _linear(components)
    module = live_modules(components)[name]
    LoraStack(components).add(random_lora(components, [name], seed=4), 0.9)
    x = torch.randn(2, module.in_features, requires_grad=True)
    module(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
