"""fp8 base weights (optim.fp8_base): forward and LoRA gradients equal the reference model that holds the same
fp8-rounded weights upcast; frozen weight bytes halve against bf16; a run exports the same kind of LoRA and
leaves the caller's model working."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from tests_train_helpers import make_tiny_components, make_tiny_unet, tiny_config, write_images
from torch import nn

from sdlora.lora import inject_lora
from sdlora.train import fp8, train


def _stored(model) -> int:
    """Bytes of a model's parameters and buffers as stored."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _rounded_reference(model: nn.Module, compute: torch.dtype) -> nn.Module:
    """A copy whose Linear/Conv2d weights are the fp8-rounded ones in `compute`, with the layers' own forward."""
    ref = copy.deepcopy(model)
    for module in ref.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.data = module.weight.data.to(torch.float8_e4m3fn).to(compute)
    return ref


def _unet_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]),
            torch.randn(2, 77, 32, generator=g))


@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16])
def test_forward_and_lora_gradients_equal_the_upcast_reference(compute):
    torch.manual_seed(0)
    unet = make_tiny_unet().to(compute).requires_grad_(False)
    ref = _rounded_reference(unet, compute)
    layers = fp8.store_fp8(unet, compute)
    assert layers and all(m.weight.dtype == torch.float8_e4m3fn for m in layers)
    results = []
    for model in (unet, ref):
        torch.manual_seed(1)
        net = inject_lora({"unet": model}, "attn", rank=4, alpha=4, conv_rank=2, conv_alpha=1)
        with torch.no_grad():
            for p in net.parameters():  # up is zero-initialised: make the LoRA path carry gradient both ways
                p.add_(0.05)
        sample, t, hidden = _unet_inputs()
        sample = sample.to(compute).requires_grad_()
        out = model(sample, t, hidden.to(compute)).sample
        out.float().pow(2).mean().backward()
        results.append((out.detach().float(), sample.grad.float(),
                        {n: p.grad.clone() for n, p in net.named_parameters()}))
        net.remove()
    (out_a, gx_a, grads_a), (out_b, gx_b, grads_b) = results
    tol = {"atol": 1e-5, "rtol": 1e-5} if compute == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(out_a, out_b, **tol)
    torch.testing.assert_close(gx_a, gx_b, **tol)  # the input gradient through every converted layer
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], **tol)


def test_frozen_weight_bytes_halve_against_bf16():
    bf16 = make_tiny_unet().to(torch.bfloat16).requires_grad_(False)
    layers = fp8.store_fp8(copy.deepcopy(bf16), torch.bfloat16)
    weights = [(m.weight.numel(), m.weight.element_size()) for m in layers]
    assert all(size == 1 for _, size in weights)
    stored8 = sum(n for n, _ in weights)
    before = sum(m.weight.numel() * m.weight.element_size()
                 for m in bf16.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    assert before == 2 * stored8  # every Linear/Conv2d weight of the tiny UNet is converted
    model8 = bf16
    fp8.store_fp8(model8, torch.bfloat16)
    assert _stored(model8) < 0.55 * _stored(make_tiny_unet().to(torch.bfloat16))


def test_restore_gives_back_a_plain_model():
    unet = make_tiny_unet().requires_grad_(False)
    ref = _rounded_reference(unet, torch.float32)
    layers = fp8.store_fp8(unet, torch.float32)
    fp8.restore(layers)
    assert all("forward" not in vars(m) and m.weight.dtype == torch.float32 for m in layers)
    sample, t, hidden = _unet_inputs()
    with torch.no_grad():
        torch.testing.assert_close(unet(sample, t, hidden).sample, ref(sample, t, hidden).sample)


@pytest.mark.slow
def test_training_with_fp8_base_exports_the_same_kind_of_lora(tmp_path):
    data = write_images(tmp_path / "data", count=2)
    extra = ("optim.steps=2", "lora.train_text_encoder=false", "optim.gradient_checkpointing=true",
             "optim.fused_backward=true", "optim.lr=1e-3")
    plain = train(tiny_config(data, tmp_path / "a", *extra), make_tiny_components(tmp_path / "ca"))
    components = make_tiny_components(tmp_path / "cb")
    rounded = train(tiny_config(data, tmp_path / "b", *extra, "optim.fp8_base=true"), components)
    a, b = load_file(plain.files[0]), load_file(rounded.files[0])
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape for k in a)
    assert any(b[k].abs().sum() > 0 for k in b if "lora_up" in k)
    # the base differs only by fp8 rounding: the LoRA trained against it stays close to the plain one
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-2
    # the caller's models are plain again: float weights and the classes' own forward
    assert all(p.dtype == torch.float32 for p in components.unet.parameters())
    assert not any("forward" in vars(m) for m in components.unet.modules())
    assert all(p.dtype == torch.float32 for p in components.text_encoder.parameters())


def test_refused_where_torch_has_no_float8(monkeypatch):
    from sdlora.errors import ConfigError
    from sdlora.settings import load_config

    monkeypatch.setattr(fp8, "STORAGE", None)
    with pytest.raises(ConfigError, match="optim.fp8_base: torch .* has no float8_e4m3fn"):
        fp8.check(load_config(None, ["optim.fp8_base=true"]))
    fp8.check(load_config(None, []))
