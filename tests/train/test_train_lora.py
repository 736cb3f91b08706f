"""Injection: hooks leave base keys and weights alone, zero-init is a no-op, presets pick the right modules."""

import functools

import pytest
import torch
from torch import nn

from sdlora.arch.targets import match_targets
from sdlora.lora import LoraLayer, LoraNetwork, inject_lora


def _unet_out(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    h = torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10]), h).sample


def test_fresh_lora_changes_nothing_and_keys_stay(tiny_unet):
    keys = list(tiny_unet.state_dict())
    before = _unet_out(tiny_unet)
    net = inject_lora({"unet": tiny_unet}, "attn", rank=4, alpha=4)
    assert list(tiny_unet.state_dict()) == keys
    assert torch.equal(_unet_out(tiny_unet), before)
    assert len(net.names) == 6 * 2 * 4  # 6 transformer blocks (down 2, mid 1, up 3) x attn1/2 x q/k/v/out


def test_trained_lora_changes_output_and_remove_restores(tiny_unet):
    before = _unet_out(tiny_unet)
    net = inject_lora({"unet": tiny_unet}, "qv", rank=4, alpha=8)
    for p in net.parameters():
        nn.init.normal_(p, std=0.1)
    assert not torch.allclose(_unet_out(tiny_unet), before, atol=1e-4)
    net.remove()
    assert torch.equal(_unet_out(tiny_unet), before)


def test_hook_matches_merged_weight_linear_and_conv():
    torch.manual_seed(1)
    for base, x in ((nn.Linear(6, 5), torch.randn(3, 6)), (nn.Conv2d(6, 5, 3, padding=1), torch.randn(2, 6, 7, 7))):
        layer = LoraLayer(base, rank=2, alpha=3.0)
        nn.init.normal_(layer.up.weight)
        hooked = layer.hook(base, (x,), base(x))
        merged = base.weight + layer.delta_weight()
        expect = nn.functional.linear(x, merged, base.bias) if isinstance(base, nn.Linear) else \
            nn.functional.conv2d(x, merged, base.bias, padding=1)
        torch.testing.assert_close(hooked, expect, atol=1e-5, rtol=1e-5)


def test_dora_starts_at_base_and_matches_formula():
    torch.manual_seed(2)
    base, x = nn.Linear(6, 5), torch.randn(3, 6)
    layer = LoraLayer(base, rank=2, alpha=2.0, dora=True, dora_axis="out")
    torch.testing.assert_close(layer.hook(base, (x,), base(x)), base(x), atol=1e-6, rtol=1e-6)
    nn.init.normal_(layer.up.weight)
    with torch.no_grad():
        layer.magnitude.mul_(1.5)
    merged = base.weight + layer.delta_weight()
    weight = layer.magnitude * merged / merged.norm(dim=1, keepdim=True)
    torch.testing.assert_close(layer.hook(base, (x,), base(x)), nn.functional.linear(x, weight, base.bias),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("preset", "per_transformer", "per_te_layer"), [
    ("qv", 4, 2), ("attn", 8, 4), ("sd-scripts", 12, 6)])
def test_preset_module_counts(preset, per_transformer, per_te_layer, tiny_unet, tiny_text_encoder):
    # docs/formats.md §2.2: sd-scripts = 12 modules per Transformer2D (proj_in/out, 2x (q, k, v, out), ff x2)
    # and 6 per text-encoder layer; the tiny UNet has 6 Transformer2D, the tiny text encoder 2 layers
    unet = match_targets(tiny_unet, "unet", preset)
    te = match_targets(tiny_text_encoder, "text_encoder", preset)
    assert len(unet) == 6 * per_transformer
    assert len(te) == 2 * per_te_layer
    if preset == "sd-scripts":
        kinds = {p.rsplit(".", 1)[-1]: k for p, _, k in unet}
        assert kinds["proj_in"] == "conv1x1" and kinds["to_q"] == "linear"


def test_locon_adds_resnet_convs_with_conv_rank(tiny_unet):
    net = inject_lora({"unet": tiny_unet}, "locon", rank=4, alpha=4, conv_rank=2, conv_alpha=1)
    conv = net.layer("unet.down_blocks.0.resnets.0.conv1")
    assert conv.rank == 2 and conv.alpha == 1.0 and conv.down.weight.shape[-2:] == (3, 3)
    assert net.layer("unet.down_blocks.0.resnets.0.time_emb_proj").rank == 4
    assert net.layer("unet.down_blocks.1.attentions.0.proj_in").rank == 4


def test_locon_io_adds_conv_in_and_conv_out_to_locon(tiny_unet):
    locon = {path for path, _, _ in match_targets(tiny_unet, "unet", "locon")}
    with_io = {path: kind for path, _, kind in match_targets(tiny_unet, "unet", "locon-io")}
    assert set(with_io) - locon == {"conv_in", "conv_out"} and locon <= set(with_io)
    net = inject_lora({"unet": tiny_unet}, "locon-io", rank=4, alpha=4, conv_rank=2, conv_alpha=1)
    assert net.layer("unet.conv_out").rank == 2 and net.layer("unet.conv_in").down.weight.shape[-2:] == (3, 3)


def test_text_encoder_names_are_canonical(tiny_text_encoder):
    net = inject_lora({"text_encoder": tiny_text_encoder}, "qv", rank=2, alpha=2)
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj" in net.names


def test_network_state_dict_round_trip(tiny_unet):
    net = inject_lora({"unet": tiny_unet}, "qv", rank=2, alpha=2)
    for p in net.parameters():
        nn.init.normal_(p)
    other = LoraNetwork()
    for name in net.names:
        other.add(name, dict(tiny_unet.named_modules())[name.removeprefix("unet.")], rank=2, alpha=2)
    other.load_state_dict(net.state_dict())
    for a, b in zip(net.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)


@functools.lru_cache(maxsize=2)
def _meta_model(kind: str, folder: str):
    """SD1.5-shaped model on the meta device (no memory, no weights), built once per test session."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlora.configs import models_root

    root = models_root() / folder
    with init_empty_weights():
        if kind == "unet":
            return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
        return CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))


@pytest.mark.parametrize(("preset", "unet_modules", "te_modules"), [
    ("qv", 16 * 4, 12 * 2), ("attn", 16 * 8, 12 * 4), ("sd-scripts", 192, 72)])
def test_presets_on_sd15_shapes(preset, unet_modules, te_modules):
    # docs/formats.md §2.2: sd-scripts' default set on SD1.5 is 192 UNet + 72 text-encoder modules (264)
    assert len(match_targets(_meta_model("unet", "sd15"), "unet", preset)) == unet_modules
    assert len(match_targets(_meta_model("te", "sd15"), "text_encoder", preset)) == te_modules


def _general_path(layer, base, x):
    """The unfused LoRA formula: base(x) + scale * up(down(x)), as separate modules."""
    return base(x) + layer.up(layer.down(x)) * layer.scale


def test_fused_linear_path_matches_formula_and_gradients():
    # the hook adds the LoRA branch with one addmm (alpha=scale); values and gradients must be the formula's
    torch.manual_seed(3)
    base = nn.Linear(8, 6)
    layer = LoraLayer(base, rank=3, alpha=1.5)
    nn.init.normal_(layer.up.weight)
    x = torch.randn(2, 5, 8, requires_grad=True)  # (batch, tokens, features), as in attention
    fused = layer.hook(base, (x,), base(x))
    fused.square().sum().backward()
    grads = [t.grad.clone() for t in (x, layer.down.weight, layer.up.weight)]
    for t in (x, layer.down.weight, layer.up.weight):
        t.grad = None
    expect = _general_path(layer, base, x)
    expect.square().sum().backward()
    torch.testing.assert_close(fused, expect, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, (x.grad, layer.down.weight.grad, layer.up.weight.grad), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_dropout_applies_in_training_only():
    torch.manual_seed(4)
    base = nn.Linear(8, 6)
    layer = LoraLayer(base, rank=2, alpha=2.0, dropout=0.5)
    nn.init.normal_(layer.up.weight)
    x = torch.randn(4, 8)
    layer.train()
    assert not torch.allclose(layer.hook(base, (x,), base(x)), layer.hook(base, (x,), base(x)))
    layer.eval()
    torch.testing.assert_close(layer.hook(base, (x,), base(x)), _general_path(layer, base, x), atol=1e-5,
                               rtol=1e-5)


def _rank_dropout_pair(**options):
    torch.manual_seed(5)
    base = nn.Linear(8, 6)
    plain = LoraLayer(base, rank=4, alpha=2.0)
    nn.init.normal_(plain.up.weight)
    dropped = LoraLayer(base, rank=4, alpha=2.0, **options)
    dropped.load_state_dict(plain.state_dict())
    return base, plain, dropped


@pytest.mark.parametrize("options", [{"rank_dropout": 0.5}, {"module_dropout": 0.5}])
def test_rank_and_module_dropout_apply_in_training_only(options):
    base, plain, dropped = _rank_dropout_pair(**options)
    x = torch.randn(4, 3, 8)
    expect = plain.hook(base, (x,), base(x))
    torch.manual_seed(6)
    outputs = [dropped.hook(base, (x,), base(x)) for _ in range(8)]
    assert any(not torch.allclose(out, expect) for out in outputs)
    dropped.eval()
    torch.testing.assert_close(dropped.hook(base, (x,), base(x)), expect)


def test_off_dropouts_are_bit_identical_and_draw_nothing():
    base, plain, dropped = _rank_dropout_pair(rank_dropout=0.0, module_dropout=0.0)
    x = torch.randn(2, 5, 8)
    state = torch.get_rng_state()
    assert torch.equal(dropped.hook(base, (x,), base(x)), plain.hook(base, (x,), base(x)))
    assert torch.equal(torch.get_rng_state(), state)  # the other random draws of a run stay where they were


def test_rank_dropout_zeroes_rank_channels_per_sample_and_rescales():
    # with up = identity-like and scale 1, the output shows which rank channels survived, scaled by 1/(1-p)
    base = nn.Linear(4, 4, bias=False)
    nn.init.zeros_(base.weight)
    layer = LoraLayer(base, rank=4, alpha=4.0, rank_dropout=0.5)
    with torch.no_grad():
        layer.down.weight.copy_(torch.eye(4))
        layer.up.weight.copy_(torch.eye(4))
    x = torch.ones(64, 3, 4)
    torch.manual_seed(7)
    out = layer.hook(base, (x,), base(x))
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(out[:, 0], out[:, 1])  # one draw per sample and channel, shared by the tokens
    assert 0.3 < (out == 0).float().mean().item() < 0.7


def test_module_dropout_skips_whole_conv_lora():
    torch.manual_seed(8)
    base = nn.Conv2d(3, 4, 3, padding=1)
    layer = LoraLayer(base, rank=2, alpha=2.0, module_dropout=0.5, rank_dropout=0.5)
    nn.init.normal_(layer.up.weight)
    x = torch.randn(2, 3, 5, 5)
    outputs = [layer.hook(base, (x,), base(x)) for _ in range(16)]
    assert any(torch.equal(out, base(x)) for out in outputs)
    assert any(not torch.allclose(out, base(x)) for out in outputs)


def test_rank_stabilized_scale_is_alpha_over_sqrt_rank_and_exports_as_a_plain_alpha(tiny_unet):
    """rsLoRA: scale alpha / sqrt(rank); the module keeps alpha x sqrt(rank), so any loader's alpha / rank
    (and sdlora's own LoraModule.scale of the exported state) is the same scale."""
    plain = inject_lora({"unet": tiny_unet}, "qv", rank=4, alpha=2.0)
    assert all(layer.scale == 0.5 for layer in plain.layers.values())
    plain.remove()
    net = inject_lora({"unet": tiny_unet}, "qv", rank=4, alpha=2.0, rank_stabilized=True)
    assert all(layer.scale == 1.0 and layer.alpha == 4.0 for layer in net.layers.values())
    state = net.to_state()
    assert {module.alpha for module in state.modules.values()} == {4.0}
    assert {module.scale for module in state.modules.values()} == {1.0}
    net.remove()


def test_rank_stabilized_is_named_in_the_network_args():
    from sdlora.settings.config import load_config
    from sdlora.train import export

    assert "rs_lora" not in export._network_args(load_config(None))
    assert export._network_args(load_config(None, ["lora.rank_stabilized=true"]))["rs_lora"] == "True"
