"""Memory estimate (sdlora.train.estimate): frozen weights, LoRA parameters, gradients and optimizer states
equal the real tensors of a tiny model to the byte; the activation model moves the right way; the budget
ladder and the CLI."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from tests_train_helpers import make_tiny_text_encoder, make_tiny_unet, make_tiny_vae

from sdlora.errors import ConfigError
from sdlora.settings import load_config
from sdlora.train import estimate as est
from sdlora.train import fp8
from sdlora.train.loop import inject_network
from sdlora.train.optim import make_optimizer, param_groups


def _stored(model) -> int:
    """Bytes of a model's parameters and buffers as stored."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _components(device=None):
    with torch.device(device or "cpu"):
        return SimpleNamespace(unet=make_tiny_unet(), vae=make_tiny_vae(),
                               text_encoders={"text_encoder": make_tiny_text_encoder()}, family="sd1")


def _cfg(*extra):
    return load_config(None, ["data.resolution=64", "data.cache_latents=off", "lora.rank=4", "lora.alpha=4",
                              "lora.conv_rank=2", "lora.targets=locon", *extra])


def _real_run(cfg):
    """What the trainer holds after one optimizer step on the real tiny model: frozen models as the trainer
    stores them, the LoRA, its gradients (before the step) and the optimizer state."""
    c = _components()
    dtype = est.compute_dtype(cfg)
    for model in (c.unet, *c.text_encoders.values()):
        model.requires_grad_(False).to(dtype)
    c.vae.requires_grad_(False)
    fp8.apply(cfg, c, dtype, torch.device("cpu"))
    torch.manual_seed(0)
    network = inject_network(cfg, c)
    optimizer = make_optimizer(param_groups(network, cfg), cfg, torch.device("cpu"))
    loss = sum((p.float() * torch.randn_like(p.float())).sum() for p in network.parameters())
    loss.backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in network.parameters())
    optimizer.step()
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    lora = sum(p.numel() * p.element_size() for p in network.parameters())
    models = {"unet": _stored(c.unet), "vae": _stored(c.vae),
              "text_encoder": _stored(c.text_encoder if hasattr(c, "text_encoder")
                                               else c.text_encoders["text_encoder"])}
    largest = max(p.numel() * p.element_size() for p in network.parameters())
    return models, lora, grads, state, largest


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor", "lion", "prodigy", "adamw_schedulefree"])
@pytest.mark.parametrize("settings", [(), ("optim.mixed_precision=bf16", "optim.fp8_base=true",
                                           "lora.train_text_encoder=false", "optim.fused_backward=true")])
def test_exact_parts_equal_the_real_tensors(optimizer, settings):
    if "optim.fused_backward=true" in settings and optimizer not in ("adamw", "adafactor"):
        settings = tuple(s for s in settings if "fused" not in s)
    cfg = _cfg(f"optim.optimizer={optimizer}", *settings)
    estimate = est.estimate(cfg, _components("meta"))
    models, lora, grads, state, largest = _real_run(cfg)
    assert {k: v for k, v in estimate.models.items() if k != "fp8 upcast"} == models
    assert estimate.lora == lora
    assert estimate.gradients == (largest if cfg.optim.fused_backward else grads)
    assert estimate.optimizer == state
    assert estimate.frozen == sum(estimate.models.values())


def test_fp8_halves_the_unet_against_bf16():
    bf16 = est.estimate(_cfg("optim.mixed_precision=bf16"), _components("meta"))
    eight = est.estimate(_cfg("optim.mixed_precision=bf16", "optim.fp8_base=true"), _components("meta"))
    assert eight.models["unet"] < 0.55 * bf16.models["unet"]
    assert eight.models["fp8 upcast"] > 0


def test_parked_encoders_are_not_counted():
    cached = est.estimate(_cfg("data.cache_latents=memory", "lora.train_text_encoder=false"), _components("meta"))
    assert set(cached.models) == {"unet"}
    trained = est.estimate(_cfg("data.cache_latents=memory"), _components("meta"))
    assert {"unet", "vae", "text_encoder"} <= set(trained.models)


def test_activations_follow_batch_checkpointing_and_text_encoder():
    def acts(*extra):
        return est.estimate(_cfg("lora.train_text_encoder=false", *extra), _components("meta")).activations

    one, two = acts("data.batch_size=1"), acts("data.batch_size=2")
    assert 1.8 * one < two < 2.2 * one
    assert acts("optim.gradient_checkpointing=true") < one
    assert est.estimate(_cfg(), _components("meta")).activations > one  # the text encoder trained too


def test_budget_ladder_and_sizes():
    assert est.parse_size("8GB") == 8 * 1024 ** 3 == est.parse_size("8 GiB")
    assert est.parse_size("512MB") == 512 * 1024 ** 2
    with pytest.raises(ConfigError, match="--vram"):
        est.parse_size("lots")
    cfg = _cfg()
    current = est.estimate(cfg, _components("meta")).total
    roomy = est.fit(cfg, current + 1, _components("meta"))
    assert roomy.changes == [] and "fits with the current settings" in roomy.lines()[0]
    tight = est.fit(cfg, int(current * 0.8), _components("meta"))
    assert tight.changes and tight.fitted is not None and tight.fitted.total <= int(current * 0.8)
    assert "low-memory" in "\n".join(tight.lines())
    hopeless = est.fit(cfg, 1, _components("meta"))
    assert hopeless.fitted is None and "does not fit" in hopeless.lines()[0]


@pytest.mark.slow
def test_cli_estimate_and_vram():
    run = subprocess.run([sys.executable, "-m", "sdlora", "train", "--base", "sd1", "--estimate", "--vram", "8GB"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    for part in ("frozen weights", "LoRA parameters", "gradients", "optimizer states", "activations",
                 "budget 8.00 GiB", "low-memory preset"):
        assert part in run.stdout


def test_dry_run_prints_the_estimate_and_refuses_fused_with_lion(tmp_path, capsys):
    from tests_train_helpers import write_images

    from sdlora.cli import main

    data = write_images(tmp_path / "data", count=2)
    assert main(["train", "--data", str(data), "--base", "embedded", "--dry-run"]) == 0
    assert "estimated peak accelerator memory: " in capsys.readouterr().out
    assert main(["train", "--data", str(data), "--dry-run", "--set", "optim.fused_backward=true",
                 "--set", "optim.optimizer=lion"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the CLI's stage line: the one-line error
    assert "error: optim.fused_backward: works with adamw or adafactor, not lion" in last
