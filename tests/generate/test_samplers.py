"""A1111 sampler names <-> diffusers schedulers (sdlora.samplers) and `generate(..., sampler=...)`."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest

from sdlora.errors import ConfigError
from sdlora.generate import GenerateSettings, generate
from sdlora.samplers import SAMPLERS, make_scheduler, resolve_sampler, sampler_name

# a training schedule unlike diffusers' defaults, to see that a new sampler keeps it
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.001, "beta_end": 0.02, "beta_schedule": "scaled_linear",
            "prediction_type": "v_prediction", "steps_offset": 1}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_each_sampler_is_built_from_the_model_schedule_and_named_back(name):
    scheduler = make_scheduler(name, SCHEDULE)
    assert type(scheduler).__name__ == SAMPLERS[name][0]
    assert sampler_name(scheduler) == name
    for key in ("beta_start", "beta_end", "prediction_type"):
        if key in scheduler.config:  # every scheduler in the table takes these three
            assert scheduler.config[key] == SCHEDULE[key], (name, key)


def test_names_are_matched_ignoring_case_and_spaces():
    assert resolve_sampler("dpm++ 2m sde") == "DPM++ 2M SDE"
    assert resolve_sampler("EULER  A") == "Euler a"


def test_unknown_sampler_lists_close_and_known_names():
    with pytest.raises(ConfigError, match=r"unknown sampler 'DPM\+\+ 3M SDE'.*did you mean 'DPM\+\+ 2M SDE'.*Euler a"):
        resolve_sampler("DPM++ 3M SDE")


def test_a_scheduler_the_table_does_not_know_keeps_its_class_name():
    plain_dpm = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver", final_sigmas_type="sigma_min")  # A1111 has no such sampler
    assert sampler_name(plain_dpm) == "DPMSolverMultistepScheduler"
    assert sampler_name(diffusers.DPMSolverMultistepScheduler()) == "DPM++ 2M"  # diffusers' defaults
    assert sampler_name(diffusers.PNDMScheduler()) == "PNDMScheduler"  # PRK warm-up steps: not A1111's PLMS
    assert sampler_name(diffusers.PNDMScheduler(skip_prk_steps=True)) == "PLMS"
    lms = type("LMSDiscreteScheduler", (), {"config": {}})()  # named, not offered (diffusers needs scipy for it)
    assert sampler_name(lms) == "LMS"


def _settings(**kw):
    return GenerateSettings(prompt="a cat", seed=3, steps=2, cfg=5.0, width=16, height=16, **kw)


def test_generate_with_a_sampler_draws_with_it_and_gives_the_scheduler_back(pipe):
    own = pipe.scheduler
    base = generate(pipe, _settings())
    euler_a = generate(pipe, _settings(sampler="euler a"))
    again = generate(pipe, _settings(sampler="Euler a"))
    assert pipe.scheduler is own
    assert "Sampler: Euler a," in euler_a.parameters and f"Sampler: {sampler_name(own)}," in base.parameters
    pixels = [np.asarray(r.image, dtype=np.int16) for r in (base, euler_a, again)]
    assert np.abs(pixels[1] - pixels[0]).max() > 0, "another sampler must draw another image"
    assert np.array_equal(pixels[1], pixels[2]), "an ancestral sampler is seeded too"


def test_an_unknown_sampler_fails_before_drawing(pipe):
    calls = []
    pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ConfigError, match="unknown sampler"):
        generate(pipe, _settings(sampler="nope"))
    assert not calls
