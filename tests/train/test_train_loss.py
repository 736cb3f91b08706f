"""Pure pieces of the loss and the schedule, checked against their formulas."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from sdlora.train.loss import compute_snr, diffusion_loss, min_snr_weights, noise_target, sample_noise
from sdlora.train.optim import lr_factor


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
