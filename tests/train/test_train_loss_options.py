"""Loss and noise options: timestep range, pseudo-Huber losses and their threshold schedules, debiased
estimation, input perturbation. The defaults leave training exactly as it was."""

import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tests_train_helpers import make_tiny_components, tiny_config, write_images

from sdlora.errors import ConfigError
from sdlora.settings.config import load_config
from sdlora.train import loss_options, train
from sdlora.train.loss import (
    compute_snr,
    debiased_weights,
    diffusion_loss,
    elementwise_loss,
    huber_c,
    min_snr_weights,
    multires_noise,
    perturb_noise,
    sample_timesteps,
)


def test_timesteps_stay_in_the_range_and_the_default_draws_as_before():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sample_timesteps(64, 1000, g1, torch.device("cpu")),
                       torch.randint(0, 1000, (64,), generator=g2))
    t = sample_timesteps(4096, 1000, torch.Generator().manual_seed(0), torch.device("cpu"), 200, 300)
    assert t.min() == 200 and t.max() == 299
    cfg = load_config(None, ["optim.min_timestep=100", "optim.max_timestep=5000"])
    assert loss_options.timestep_range(cfg, 1000) == (100, 1000)  # capped at the model's timesteps
    with pytest.raises(ConfigError, match="min_timestep=1000"):
        loss_options.timestep_range(load_config(None, ["optim.min_timestep=1000"]), 1000)


def test_pseudo_huber_is_squared_for_small_errors_and_linear_for_large():
    c = torch.tensor([0.1])
    small, large = torch.full((1, 4), 1e-3), torch.full((1, 4), 10.0)
    zero = torch.zeros(1, 4)
    assert elementwise_loss(small, zero, "huber", c) == pytest.approx(torch.full((1, 4), 1e-6), rel=1e-2)  # float32 cancellation
    assert elementwise_loss(large, zero, "huber", c) == pytest.approx(torch.full((1, 4), 2 * 0.1 * (math.sqrt(
        100 + 0.01) - 0.1)))
    assert elementwise_loss(large, zero, "smooth_l1", c)[0, 0].item() == pytest.approx(2 * (math.sqrt(100.01) - 0.1))
    assert diffusion_loss(large, zero, None, "huber", c) < diffusion_loss(large, zero)  # outliers count less


def test_huber_schedules():
    alphas = torch.linspace(0.999, 0.001, 1000)
    t = torch.tensor([0, 500, 999])
    assert huber_c("constant", 0.1, t, alphas, 1000).tolist() == pytest.approx([0.1] * 3)
    assert huber_c("exponential", 0.1, t, alphas, 1000).tolist() == pytest.approx(
        [1.0, math.exp(math.log(0.1) * 0.5), math.exp(math.log(0.1) * 0.999)])
    snr = huber_c("snr", 0.1, t, alphas, 1000)
    sigma = torch.sqrt((1 - alphas[t]) / alphas[t])
    assert snr.tolist() == pytest.approx(((1 - 0.1) / (1 + sigma) ** 2 + 0.1).tolist())
    assert snr[0] > snr[1] > snr[2] > 0.1  # large where the noise is small


def test_debiased_weights():
    snr = torch.tensor([4.0, 1e6])
    assert debiased_weights(snr, "epsilon").tolist() == pytest.approx([0.5, 1 / math.sqrt(1000)])
    assert debiased_weights(snr, "v_prediction").tolist() == pytest.approx([1 / 5, 1 / 1001])


def test_input_perturbation_draws_only_when_on():
    noise = torch.zeros(2, 4)
    g = torch.Generator().manual_seed(0)
    assert perturb_noise(noise, g, 0.0) is noise and torch.equal(g.get_state(),
                                                                   torch.Generator().manual_seed(0).get_state())
    assert perturb_noise(noise, g, 0.1).abs().max() > 0


def test_multires_noise_adds_coarse_structure_at_unit_scale():
    noise = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    assert multires_noise(noise, g, 0, 0.3) is noise
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())  # no draw when off
    pyramid = multires_noise(noise, g, 6, 0.3)
    assert pyramid.shape == noise.shape
    assert pyramid.std().item() == pytest.approx(1.0, rel=1e-5)
    # coarse levels correlate neighbouring pixels: the variance of 8x8 means grows, more with less discount
    pooled = torch.nn.functional.avg_pool2d
    weak, strong = (multires_noise(noise, torch.Generator().manual_seed(0), 6, d) for d in (0.3, 0.8))
    assert pooled(noise, 8).var() < pooled(weak, 8).var() < pooled(strong, 8).var()
    assert pooled(strong, 8).var() > 4 * pooled(noise, 8).var()
    again = multires_noise(noise, torch.Generator().manual_seed(0), 6, 0.3)
    assert torch.equal(again, pyramid)  # drawn from the run's generator: reproducible, resumable


@pytest.mark.parametrize(("settings", "match"), [
    (["optim.min_timestep=-1"], "min_timestep: must be >= 0"),
    (["optim.min_timestep=500", "optim.max_timestep=500"], "must be larger"),
    (["optim.loss_type=huber", "optim.huber_c=0"], "huber_c"),
    (["optim.ip_noise_gamma=-0.1"], "ip_noise_gamma"),
    (["optim.multires_noise_iterations=-1"], "multires_noise_iterations"),
    (["optim.multires_noise_discount=1.5"], "multires_noise_discount"),
    (["optim.zero_terminal_snr=true", "model.prediction_type=epsilon"], "zero_terminal_snr needs v-prediction"),
])
def test_bad_values_are_config_errors(settings, match):
    with pytest.raises(ConfigError, match=match):
        loss_options.check(load_config(None, settings))


def test_options_change_training_and_are_written_as_ss_keys(tmp_path):
    data = write_images(tmp_path / "data", count=2)
    runs = {}
    for name, extra in {"plain": [], "options": ["optim.loss_type=huber", "optim.huber_schedule=constant",
                                                 "optim.ip_noise_gamma=0.1", "optim.debiased_estimation=true",
                                                 "optim.min_timestep=100", "optim.max_timestep=900",
                                                 "optim.multires_noise_iterations=3"]}.items():
        cfg = tiny_config(data, tmp_path / name, "optim.steps=2", "optim.lr=1e-3", *extra)
        runs[name] = train(cfg, make_tiny_components(tmp_path / f"c{name}"))
    plain, options = (load_file(runs[n].files[0]) for n in ("plain", "options"))
    assert any(not torch.equal(plain[k], options[k]) for k in plain)
    with safe_open(str(runs["options"].files[0]), "pt") as f:
        meta = f.metadata()
    assert (meta["ss_loss_type"], meta["ss_huber_schedule"], meta["ss_huber_c"]) == ("huber", "constant", "0.1")
    assert (meta["ss_ip_noise_gamma"], meta["ss_debiased_estimation"]) == ("0.1", "True")
    assert (meta["ss_multires_noise_iterations"], meta["ss_multires_noise_discount"]) == ("3", "0.3")
    with safe_open(str(runs["plain"].files[0]), "pt") as f:
        meta = f.metadata()
    assert meta["ss_loss_type"] == "l2" and "ss_huber_c" not in meta and "ss_ip_noise_gamma" not in meta
    assert "ss_multires_noise_iterations" not in meta


def _ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, prediction_type="v_prediction")


def test_zero_terminal_snr_rescales_schedule_to_zero_at_the_end():
    base = _ddpm()
    schedule = loss_options.noise_schedule(load_config(None, ["optim.zero_terminal_snr=true"]), base,
                                           "v_prediction")
    alphas_cumprod = schedule.alphas_cumprod
    assert alphas_cumprod[-1].item() == 0.0 and base.alphas_cumprod[-1].item() > 0.0
    assert bool((alphas_cumprod[1:] < alphas_cumprod[:-1]).all())  # strictly decreasing noise level
    assert alphas_cumprod[0].item() == pytest.approx(base.alphas_cumprod[0].item())  # the first step keeps its SNR
    snr = compute_snr(alphas_cumprod, torch.tensor([0, 500, 999]))
    assert snr[-1].item() == 0.0 and torch.isfinite(min_snr_weights(snr, 5.0, "v_prediction")).all()


def test_zero_terminal_snr_off_keeps_the_schedule_and_refuses_epsilon():
    base = _ddpm()
    assert loss_options.noise_schedule(load_config(None), base, "epsilon") is base
    with pytest.raises(ConfigError, match="base predicts epsilon.*model.prediction_type=v_prediction"):
        loss_options.noise_schedule(load_config(None, ["optim.zero_terminal_snr=true"]), base, "epsilon")


def test_zero_terminal_snr_trains_and_is_written(tmp_path):
    data = write_images(tmp_path / "data", count=2)
    runs = {}
    for name, extra in {"plain": [], "ztsnr": ["optim.zero_terminal_snr=true"]}.items():
        cfg = tiny_config(data, tmp_path / name, "optim.steps=2", "optim.lr=1e-3", "model.prediction_type=v_prediction",
                          "optim.min_timestep=990", *extra)  # late timesteps, where the rescaled schedule differs most
        runs[name] = train(cfg, make_tiny_components(tmp_path / f"c{name}"))
    plain, ztsnr = (load_file(runs[n].files[0]) for n in ("plain", "ztsnr"))
    assert any(not torch.equal(plain[k], ztsnr[k]) for k in plain)
    assert all(torch.isfinite(t).all() for t in ztsnr.values())
    for name, expect in (("plain", "False"), ("ztsnr", "True")):
        with safe_open(str(runs[name].files[0]), "pt") as f:
            assert f.metadata()["ss_zero_terminal_snr"] == expect


@pytest.mark.parametrize("folder", ["embedded", "sdxl", "sd15"])
def test_the_forward_process_is_ddpm_whatever_scheduler_the_base_ships(folder):
    """The embedded model ships DPM-Solver++ and SDXL Euler: their add_noise is not q(x_t | x_0) at the
    training timestep (DPM-Solver++ gave t=0 the noise of t=999). Training noises with DDPM of the same
    config: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, its noise share growing with t."""
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

    from sdlora.configs import models_root
    from sdlora.embedded import weights_dir

    root = weights_dir() if folder == "embedded" else models_root() / folder
    kind = {"embedded": DPMSolverMultistepScheduler, "sdxl": EulerDiscreteScheduler, "sd15": PNDMScheduler}[folder]
    shipped = kind.from_pretrained(root / "scheduler")
    forward = loss_options.forward_process(shipped)
    t = torch.tensor([0, 10, 100, 500, 900, 999])
    noisy = forward.add_noise(torch.zeros(6, 1), torch.ones(6, 1), t).flatten()
    expected = (1 - forward.alphas_cumprod[t]).sqrt()
    torch.testing.assert_close(noisy, expected)
    assert bool((noisy[1:] > noisy[:-1]).all())
    torch.testing.assert_close(forward.alphas_cumprod, shipped.alphas_cumprod)  # the same betas
