"""Experiment tracking: TensorBoard event files are written during training and read back with
TensorBoard's own reader; missing packages are ConfigErrors naming the extra."""

import pytest
from tests_train_helpers import make_tiny_components, tiny_config, write_images

from sdlora.errors import ConfigError
from sdlora.settings.config import load_config
from sdlora.train import tracking, train


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_logs_loss_lr_and_sample_grids(tmp_path):
    data = write_images(tmp_path / "data", count=2)
    cfg = tiny_config(data, tmp_path / "out", "optim.steps=3", "output.log_with=tensorboard", "optim.lr=1e-3",
                      "optim.scheduler=linear", "output.sample_every=2", "output.sample_prompts=[red shape]",
                      "output.sample_steps=1", "output.sample_size=16", "output.name=run1")
    result = train(cfg, make_tiny_components(tmp_path / "c"))
    run = tmp_path / "out" / "logs" / "run1"
    assert list(run.glob("events.out.tfevents.*"))
    events = _events(run)
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([row[1] for row in result.history], rel=1e-6)
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([row[2] for row in result.history], rel=1e-6)
    images = events.Images("samples")
    assert [e.step for e in images] == [2]
    assert images[0].width > 0 and images[0].height > 0


def test_auto_is_tensorboard_when_installed_and_none_otherwise(monkeypatch):
    cfg = load_config(None)
    assert cfg.output.log_with == "auto"
    assert tracking.resolve(cfg) == "tensorboard"  # tensorboard is in the dev extra
    monkeypatch.setattr(tracking, "_installed", lambda name: False)
    assert tracking.resolve(cfg) is None
    assert tracking.accelerator_kwargs(cfg) == {}


def test_none_writes_no_logs(tmp_path):
    data = write_images(tmp_path / "data", count=2)
    cfg = tiny_config(data, tmp_path / "out", "optim.steps=1", "output.log_with=none")
    train(cfg, make_tiny_components(tmp_path / "c"))
    assert not (tmp_path / "out" / "logs").exists()


@pytest.mark.parametrize(("tracker", "extra"), [("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_missing_tracker_package_is_a_config_error_before_anything_loads(tmp_path, monkeypatch, tracker, extra):
    import sdlora.train.session as train_mod

    monkeypatch.setattr(tracking, "_installed", lambda name: False)
    monkeypatch.setattr(train_mod, "_load_base", lambda cfg: pytest.fail("the model must not load"))
    cfg = load_config(None, [f"output.log_with={tracker}", f"data.path={tmp_path}"])
    with pytest.raises(ConfigError, match=rf'pip install "sdlora\[{extra}\]"'):
        train(cfg)


def test_tensorboard_logs_the_validation_loss(tmp_path):
    data = write_images(tmp_path / "data", count=3)
    cfg = tiny_config(data, tmp_path / "out", "optim.steps=2", "output.log_with=tensorboard", "output.name=run1",
                      "data.validation_split=0.3", "output.validate_every=1")
    result = train(cfg, make_tiny_components(tmp_path / "c"))
    values = _events(tmp_path / "out" / "logs" / "run1").Scalars("val_loss")
    assert [e.step for e in values] == [1, 2]
    assert [e.value for e in values] == pytest.approx([v for _, v in result.validation], rel=1e-6)
