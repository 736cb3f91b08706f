"""Learning-rate schedules by kohya's / diffusers' names: the lr values step by step."""

import math

import pytest
import torch

from sdlora.errors import ConfigError
from sdlora.settings.config import load_config
from sdlora.train.optim import SCHEDULES, lr_factor, make_scheduler


def _lrs(*settings: str, steps: int = 10) -> list[float]:
    """The lr make_scheduler gives at steps 0..steps-1, as the training loop sees it."""
    cfg = load_config(None, [f"optim.steps={steps}", "optim.lr=1.0", *settings])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = make_scheduler(optimizer, cfg)
    values = []
    for _ in range(steps):
        values.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    return values


def test_cosine_with_restarts_restarts_at_the_full_lr_each_cycle():
    lrs = _lrs("optim.scheduler=cosine_with_restarts", "optim.lr_cycles=2")
    # cycles of 5 steps: 1, cos-down, ..., back to 1 at step 5
    expected = [0.5 * (1 + math.cos(math.pi * ((2 * s / 10) % 1.0))) for s in range(10)]
    assert lrs == pytest.approx(expected)
    assert lrs[0] == lrs[5] == pytest.approx(1.0)
    assert lrs[4] < 0.1 and lrs[9] < 0.1
    assert lr_factor(10, 10, 0, "cosine_with_restarts", cycles=2) == 0.0  # past the end


def test_cosine_with_one_cycle_is_cosine():
    assert _lrs("optim.scheduler=cosine_with_restarts") == pytest.approx(_lrs("optim.scheduler=cosine"))


def test_polynomial_decays_with_the_power_after_warmup():
    lrs = _lrs("optim.scheduler=polynomial", "optim.lr_power=2", "optim.warmup_steps=2", steps=12)
    assert lrs[:2] == pytest.approx([0.5, 1.0])
    assert lrs[2:] == pytest.approx([(1 - s / 10) ** 2 for s in range(10)])
    assert _lrs("optim.scheduler=polynomial") == pytest.approx(_lrs("optim.scheduler=linear"))


def test_constant_with_warmup_is_kohyas_name_for_constant():
    warm = ("optim.warmup_steps=4",)
    assert _lrs("optim.scheduler=constant_with_warmup", *warm) == _lrs("optim.scheduler=constant", *warm)
    assert _lrs("optim.scheduler=constant", *warm)[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


def test_schedule_free_keeps_the_lr_constant():
    # its warmup runs inside the optimizer; an outside warmup would apply it twice
    assert _lrs("optim.optimizer=adamw_schedulefree", "optim.warmup_steps=4") == [1.0] * 10


def test_every_configurable_schedule_is_computed():
    from dataclasses import fields

    from sdlora.settings.config import OptimConfig

    choices = next(f.metadata["choices"] for f in fields(OptimConfig) if f.name == "scheduler")
    assert set(choices) == set(SCHEDULES)
    for kind in SCHEDULES:
        assert lr_factor(3, 10, 0, kind) <= 1.0


def test_bad_schedule_settings_are_config_errors():
    with pytest.raises(ConfigError, match="optim.scheduler"):
        load_config(None, ["optim.scheduler=cosine_restarts"])
    with pytest.raises(ConfigError, match="optim.lr_cycles: must be > 0"):
        load_config(None, ["optim.lr_cycles=0"])
    with pytest.raises(ConfigError, match="unknown schedule"):
        lr_factor(0, 10, 0, "piecewise")
