"""Pure pieces of the loss and the schedule, checked against their formulas."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from sdlora.train.loss import compute_snr, diffusion_loss, min_snr_weights, noise_target, sample_noise
from sdlora.train.optim import lr_factor, make_optimizer


@pytest.fixture
def scheduler():
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def test_snr_and_min_snr_weights(scheduler):
    t = torch.tensor([0, 500, 999])
    a = scheduler.alphas_cumprod[t]
    snr = compute_snr(scheduler.alphas_cumprod, t)
    torch.testing.assert_close(snr, a / (1 - a))
    eps = min_snr_weights(snr, 5.0, "epsilon")
    torch.testing.assert_close(eps, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert eps[0] < 1 and eps[2] == pytest.approx(1.0)   # low noise is down-weighted, high noise kept
    v = min_snr_weights(snr, 5.0, "v_prediction")
    torch.testing.assert_close(v, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))


def test_v_prediction_target_is_velocity(scheduler):
    x0, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    a = scheduler.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - scheduler.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(noise_target(scheduler, x0, noise, t, "v_prediction"), a * noise - s * x0)
    assert noise_target(scheduler, x0, noise, t, "epsilon") is noise


def test_noise_offset_shifts_channel_means():
    latents = torch.zeros(64, 4, 16, 16)
    g = torch.Generator().manual_seed(0)
    plain = sample_noise(latents, g)
    g.manual_seed(0)
    offset = sample_noise(latents, g, noise_offset=1.0)
    # the offset adds one value per (sample, channel): channel means spread much more
    assert offset.mean(dim=(2, 3)).std() > 5 * plain.mean(dim=(2, 3)).std()


def test_weighted_loss():
    pred, target = torch.zeros(2, 1, 2, 2), torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    assert diffusion_loss(pred, target).item() == pytest.approx(2.5)
    assert diffusion_loss(pred, target, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.5)


def test_schedules():
    assert [lr_factor(s, 10, 2, "constant") for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(10, 10, 2, "linear") == pytest.approx(0.0)


def test_cpu_optimizer_is_fused_adamw_with_the_same_updates():
    # the fused kernel is a speed choice only: five steps must match torch's plain (for-loop) AdamW
    from sdlora.settings.config import load_config

    cfg = load_config(None, ["optim.lr=1e-2", "optim.weight_decay=0.05"])
    torch.manual_seed(0)
    fused_params = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    plain_params = [p.detach().clone().requires_grad_(True) for p in fused_params]
    fused = make_optimizer([{"params": fused_params, "lr": 1e-2}], cfg, torch.device("cpu"))
    plain = torch.optim.AdamW([{"params": plain_params, "lr": 1e-2}], weight_decay=0.05, foreach=False)
    assert fused.param_groups[0]["fused"] is True
    for step in range(5):
        for params in (fused_params, plain_params):
            for i, p in enumerate(params):
                p.grad = torch.sin(p.detach() * (step + 1) + i)
        fused.step()
        plain.step()
    for a, b in zip(fused_params, plain_params, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
