"""Checkpoints: a run killed after step k and resumed equals an uninterrupted run; crashes while saving
leave the previous files intact; cancel stops within a step and leaves a resumable checkpoint."""

import os
import threading

import pytest
import torch
from safetensors.torch import load_file
from tests_train_helpers import make_tiny_components, tiny_config, write_images

from sdlora.errors import TrainingError
from sdlora.train import train
from sdlora.train.checkpoint import list_checkpoints

# Resumed and uninterrupted runs do the same float32 operations in the same order on CPU, so they agree
# to rounding; 1e-6 absolute leaves room for a different BLAS path after reloading tensors.
TOLERANCE = 1e-6


class Killed(Exception):
    pass


def _kill_at(step):
    def on_step(info):
        if info.step == step:
            raise Killed(f"simulated kill after step {step}")
    return on_step


@pytest.fixture
def data(tmp_path):
    return write_images(tmp_path / "data", count=3)


def _cfg(data, out, *extra):
    return tiny_config(data, out, "optim.steps=6", "output.save_every=3", "optim.lr=1e-3", "data.flip=true",
                       "data.shuffle_captions=true", "lora.dropout=0.1", "optim.scheduler=cosine",
                       "optim.warmup_steps=2", *extra)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("lora.rank_dropout=0.3", "lora.module_dropout=0.3"),
                                   ("lora.dora=true", "lora.targets=locon", "lora.conv_rank=2")])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, data, extra):
    full = train(_cfg(data, tmp_path / "a", *extra), make_tiny_components(tmp_path / "ca"))
    cfg = _cfg(data, tmp_path / "b", *extra)
    with pytest.raises(Killed):
        train(cfg, make_tiny_components(tmp_path / "cb"), on_step=_kill_at(5))
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-000003"]
    resumed = train(cfg, make_tiny_components(tmp_path / "cc"), resume=True)
    assert resumed.steps == 6
    a, b = load_file(full.files[0]), load_file(resumed.files[0])
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= TOLERANCE
    assert any(a[k].abs().sum() > 0 for k in a if "lora_up" in k)
    assert [r[0] for r in resumed.history] == [1, 2, 3, 4, 5, 6]


def test_crash_while_saving_checkpoint_keeps_previous(tmp_path, data, monkeypatch):
    import sdlora.train.checkpoint as ckpt

    real_save, calls = torch.save, []

    def flaky_save(obj, path, *args, **kwargs):
        calls.append(path)
        if "step-000004" in str(path) and str(path).endswith("state.pt"):
            raise OSError("disk full (simulated)")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", flaky_save)
    cfg = tiny_config(data, tmp_path / "out", "optim.steps=6", "output.save_every=2")
    with pytest.raises(TrainingError, match=r"disk full.*last good checkpoint: .*step-000002"):
        train(cfg, make_tiny_components(tmp_path / "c"))
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["step-000002"]
    assert not (tmp_path / "out" / "checkpoints" / "step-000004").exists()
    resumed = train(cfg, make_tiny_components(tmp_path / "c2"), resume=True)
    assert resumed.steps == 6 and [r[0] for r in resumed.history][:2] == [1, 2]


def test_crash_while_exporting_keeps_previous_file(tmp_path, data, monkeypatch):
    cfg = tiny_config(data, tmp_path / "out", "optim.steps=1")
    first = train(cfg, make_tiny_components(tmp_path / "c"))
    before = first.files[0].read_bytes()

    def crash(fd):
        raise OSError("power cut (simulated)")

    monkeypatch.setattr(os, "fsync", crash)  # wherever the atomic writer lives, its fsync is os.fsync
    with pytest.raises(TrainingError, match="power cut"):
        train(tiny_config(data, tmp_path / "out", "optim.steps=2"), make_tiny_components(tmp_path / "c2"))
    assert first.files[0].read_bytes() == before
    assert [p.name for p in (tmp_path / "out").glob("*.tmp")] == []


def test_cancel_stops_within_a_step_and_leaves_checkpoint(tmp_path, data):
    cancel, seen = threading.Event(), []

    def on_step(info):
        seen.append(info.step)
        if info.step == 2:
            cancel.set()

    cfg = tiny_config(data, tmp_path / "out", "optim.steps=50")
    result = train(cfg, make_tiny_components(tmp_path / "c"), on_step=on_step, cancel=cancel)
    assert result.cancelled and result.steps == 2 and seen == [1, 2]
    assert result.checkpoint == tmp_path / "out" / "checkpoints" / "step-000002"
    assert (result.checkpoint / "lora.safetensors").is_file()


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path, data):
    cfg = tiny_config(data, tmp_path / "out", "optim.steps=6", "output.save_every=2")
    components = make_tiny_components(tmp_path / "c")

    def poison(info):
        if info.step == 3:  # make the UNet produce NaN from step 4 on
            with torch.no_grad():
                components.unet.conv_out.bias.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"loss became nan at step 4.*last good checkpoint: .*step-000002"):
        train(cfg, components, on_step=poison)
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["step-000002"]
    assert not (tmp_path / "out" / "lora.safetensors").exists()


def test_keep_last_prunes_checkpoints_and_their_exports(tmp_path, data):
    cfg = tiny_config(data, tmp_path / "out", "optim.steps=5", "output.save_every=1", "output.keep_last=2")
    train(cfg, make_tiny_components(tmp_path / "c"))
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["step-000003", "step-000004"]
    exported = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert exported == ["lora-step000003.safetensors", "lora-step000004.safetensors", "lora.safetensors"]
