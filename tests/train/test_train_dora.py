"""DoRA files every loader applies alike (docs/formats.md §2.9): sdlora trains and writes the per-input-column
magnitude by default, and a file trained with defaults and exported to Kohya is applied by A1111's and ComfyUI's
rules (transcribed below in our own words from their DoRA code), and LyCORIS', to within 1e-5 of sdlora's ΔW."""

import pytest
import torch
from safetensors import safe_open
from tests_train_helpers import make_tiny_components, tiny_config, write_images
from torch import nn

import sdlora
from sdlora.delta import module_delta
from sdlora.errors import ConfigError
from sdlora.lora import LoraLayer
from sdlora.train import train

# ---------------------------------------------------------------- the peers' rules, in our words ---------


def a1111_dora(weight, up, down, alpha, magnitude):
    """A1111 (extensions-builtin/Lora network.py): the LoRA product times alpha/rank is added to the weight;
    the sum is normalised per input column (transpose, flatten the rest, norm), multiplied by the stored
    dora_scale as it is (broadcast, whatever its shape), and the original weight taken off again."""
    rank = down.shape[0]
    updown = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * (alpha / rank)
    merged = weight + updown
    ones = [1] * (weight.dim() - 1)
    norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
    norm = norm.reshape(merged.shape[1], *ones).transpose(0, 1)
    return merged * (magnitude / norm) - weight


def comfyui_dora(weight, up, down, alpha, magnitude):
    """ComfyUI (comfy/weight_adapter): the scaled LoRA product is added to the weight; when dora_scale's first
    dimension equals the weight's output size the norm is the *base* weight's per output row, else the merged
    weight's per input column; float eps is added to the norm before the merged weight is rescaled."""
    rank = down.shape[0]
    merged = weight + (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * (alpha / rank)
    ones = [1] * (weight.dim() - 1)
    if magnitude.shape[0] == weight.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True).reshape(weight.shape[0], *ones)
    else:
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(merged.shape[1], *ones).transpose(0, 1)
    norm = norm + torch.finfo(weight.dtype).eps
    return merged * (magnitude / norm) - weight


def lycoris_dora(weight, up, down, alpha, magnitude, wd_on_output):
    """LyCORIS (lycoris/modules, apply_weight_decompose): the merged weight's norm per output row when the
    network argument wd_on_output is true, else per input column, plus float eps; the merged weight times
    dora_scale over that norm replaces the weight."""
    rank = down.shape[0]
    merged = weight + (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * (alpha / rank)
    ones = [1] * (weight.dim() - 1)
    if wd_on_output:
        norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(merged.shape[0], *ones)
    else:
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(merged.shape[1], *ones).transpose(0, 1)
    return merged * (magnitude / (norm + torch.finfo(weight.dtype).eps)) - weight


def _relative(a, b):
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------- training-time math ---------

@pytest.mark.parametrize("axis", ["in", "out"])
@pytest.mark.parametrize("conv", [False, True])
def test_dora_hook_equals_merged_weight(axis, conv):
    """The hook's output is exactly the DoRA weight m * W' / ||W'|| (along `axis`) applied to the input."""
    torch.manual_seed(3)
    base = nn.Conv2d(6, 5, 3, padding=1) if conv else nn.Linear(6, 5)
    x = torch.randn(2, 6, 7, 7) if conv else torch.randn(3, 6)
    layer = LoraLayer(base, rank=2, alpha=2.0, dora=True, dora_axis=axis)
    expect_shape = ((1, 6) if axis == "in" else (5, 1)) + ((1, 1) if conv else ())
    assert tuple(layer.magnitude.shape) == expect_shape
    torch.testing.assert_close(layer.hook(base, (x,), base(x)), base(x), atol=1e-5, rtol=1e-5)  # starts at W
    nn.init.normal_(layer.up.weight)
    with torch.no_grad():
        layer.magnitude.mul_(torch.rand_like(layer.magnitude) + 0.5)
    merged = base.weight + layer.delta_weight()
    if axis == "in":
        norm = merged.transpose(0, 1).flatten(1).norm(dim=1).reshape(expect_shape)
    else:
        norm = merged.flatten(1).norm(dim=1).reshape(expect_shape)
    weight = layer.magnitude * merged / norm
    expect = nn.functional.conv2d(x, weight, base.bias, padding=1) if conv else \
        nn.functional.linear(x, weight, base.bias)
    torch.testing.assert_close(layer.hook(base, (x,), base(x)), expect, atol=1e-5, rtol=1e-5)


def test_dora_in_gradients_reach_magnitude_and_factors():
    torch.manual_seed(4)
    base = nn.Linear(6, 5)
    layer = LoraLayer(base, rank=2, alpha=2.0, dora=True)
    nn.init.normal_(layer.up.weight)
    layer.hook(base, (torch.randn(3, 6),), base(torch.randn(3, 6))).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (layer.magnitude, layer.up.weight,
                                                                        layer.down.weight))


# ---------------------------------------------------------------- the acceptance test ---------

def _trained(tmp_path, *extra):
    cfg = tiny_config(write_images(tmp_path / "data", count=2), tmp_path / "out", "optim.steps=3",
                      "optim.lr=0.05", "lora.targets=locon", "lora.dora=true", "lora.conv_rank=2", *extra)
    components = make_tiny_components(tmp_path)
    result = train(cfg, components)
    return result, components


def test_default_dora_export_is_applied_alike_by_a1111_and_comfyui(tmp_path):
    result, components = _trained(tmp_path)
    path = result.files[0]
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert '"dora_wd": "True"' in meta["ss_network_args"] and '"wd_on_output": "False"' in meta["ss_network_args"]
    lora = sdlora.load_lora(path)
    weights = dict(components.unet.named_parameters())
    checked = 0
    for name, module in lora.modules.items():
        if not name.startswith("unet."):
            continue
        weight = weights[name.removeprefix("unet.") + ".weight"].detach().float()
        t = module.tensors
        assert module.dora_axis == "in" and t["dora_scale"].shape[0] == 1  # (1, in[, 1, 1])
        ours = module_delta(module, base_weight=weight, name=name)
        assert float(ours.norm() / weight.norm()) > 1e-3  # trained: a real change, not zeros
        for rule in (a1111_dora, comfyui_dora):
            theirs = rule(weight, t["up"].float(), t["down"].float(), module.alpha, t["dora_scale"].float())
            assert _relative(theirs, ours) < 1e-5, (rule.__name__, name)
        theirs = lycoris_dora(weight, t["up"].float(), t["down"].float(), module.alpha, t["dora_scale"].float(),
                              wd_on_output=False)
        assert _relative(theirs, ours) < 1e-5, ("lycoris", name)
        checked += 1
    assert checked > 10  # attention linears, 1x1 and 3x3 convs


def test_per_output_layout_is_an_option_and_peers_differ_on_it(tmp_path):
    """lora.dora_axis=out keeps PEFT's layout (metadata says so); A1111's rule mis-applies it, which is why it
    is not the default."""
    result, components = _trained(tmp_path, "lora.dora_axis=out")
    with safe_open(str(result.files[0]), "pt") as f:
        assert '"wd_on_output": "True"' in f.metadata()["ss_network_args"]
    lora = sdlora.load_lora(result.files[0])
    name = next(n for n in lora.modules if n.startswith("unet.") and n.endswith("attn1.to_q"))
    module = lora.modules[name]
    weight = dict(components.unet.named_parameters())[name.removeprefix("unet.") + ".weight"].detach().float()
    t = module.tensors
    assert module.dora_axis == "out"
    ours = module_delta(module, base_weight=weight, name=name)
    theirs = a1111_dora(weight, t["up"].float(), t["down"].float(), module.alpha, t["dora_scale"].float())
    assert _relative(theirs, ours) > 1e-2
    lycoris = lycoris_dora(weight, t["up"].float(), t["down"].float(), module.alpha, t["dora_scale"].float(),
                           wd_on_output=True)
    assert _relative(lycoris, ours) < 1e-5  # LyCORIS reads the layout from wd_on_output: exact


def test_both_formats_need_per_output_dora(tmp_path):
    cfg = tiny_config(write_images(tmp_path / "data", count=2), tmp_path / "out", "lora.dora=true",
                      "output.format=both")
    with pytest.raises(ConfigError, match="lora.dora_axis"):
        train(cfg, make_tiny_components(tmp_path))


def test_diffusers_output_defaults_to_per_output(tmp_path):
    cfg = tiny_config(write_images(tmp_path / "data", count=2), tmp_path / "out", "lora.dora=true",
                      "output.format=diffusers", "optim.steps=1")
    result = train(cfg, make_tiny_components(tmp_path))
    lora = sdlora.load_lora(result.files[0])
    assert {m.dora_axis for m in lora.modules.values()} == {"out"}


def test_resume_with_the_other_layout_names_the_setting(tmp_path):
    from sdlora.errors import TrainingError

    data = write_images(tmp_path / "data", count=2)
    out = tmp_path / "out"
    train(tiny_config(data, out, "lora.dora=true", "lora.dora_axis=out", "optim.steps=2", "output.save_every=1"),
          make_tiny_components(tmp_path))
    cfg = tiny_config(data, out, "lora.dora=true", "optim.steps=3")
    with pytest.raises(TrainingError, match="lora.dora_axis"):
        train(cfg, make_tiny_components(tmp_path), resume=True)
