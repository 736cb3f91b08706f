"""Fused backward pass (optim.fused_backward): the same LoRA as the ordinary step for AdamW and Adafactor,
exact resume, per-tensor clipping, gradients freed in backward, and the refused combinations."""

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from tests_train_helpers import make_tiny_components, tiny_config, write_images

from sdlora.errors import ConfigError
from sdlora.settings import load_config
from sdlora.train import train
from sdlora.train.checkpoint import list_checkpoints
from sdlora.train.fused import FusedSteps, check, check_launch

# Both runs do the same float32 operations per tensor on CPU; the fused one in another order across tensors
TOLERANCE = 1e-6


@pytest.fixture
def data(tmp_path):
    return write_images(tmp_path / "data", count=3)


def _cfg(data, out, *extra):
    return tiny_config(data, out, "optim.steps=4", "optim.lr=1e-3", "optim.scheduler=cosine",
                       "optim.warmup_steps=2", "optim.ema_decay=0.9", *extra)


def _worst(a_file, b_file) -> float:
    a, b = load_file(a_file), load_file(b_file)
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_fused_equals_unfused(tmp_path, data, optimizer):
    common = (f"optim.optimizer={optimizer}", "optim.max_grad_norm=0")
    plain = train(_cfg(data, tmp_path / "a", *common), make_tiny_components(tmp_path / "ca"))
    fused = train(_cfg(data, tmp_path / "b", *common, "optim.fused_backward=true"),
                  make_tiny_components(tmp_path / "cb"))
    assert [p.name for p in fused.files] == [p.name for p in plain.files]
    for a, b in zip(plain.files, fused.files, strict=True):
        if a.suffix == ".safetensors":  # the LoRA and its EMA beside it
            assert _worst(a, b) <= TOLERANCE
    trained = load_file(fused.files[0])
    assert any(trained[k].abs().sum() > 0 for k in trained if "lora_up" in k)
    assert [round(r[1], 5) for r in fused.history] == [round(r[1], 5) for r in plain.history]


class Killed(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_fused_resume_is_exact(tmp_path, data, optimizer):
    extra = (f"optim.optimizer={optimizer}", "optim.fused_backward=true", "optim.steps=6", "output.save_every=3",
             "optim.max_grad_norm=0.01")  # small enough that the per-tensor clipping acts

    def kill(info):
        if info.step == 5:
            raise Killed

    full = train(_cfg(data, tmp_path / "a", *extra), make_tiny_components(tmp_path / "ca"))
    cfg = _cfg(data, tmp_path / "b", *extra)
    with pytest.raises(Killed):
        train(cfg, make_tiny_components(tmp_path / "cb"), on_step=kill)
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-000003"]
    resumed = train(cfg, make_tiny_components(tmp_path / "cc"), resume=True)
    assert resumed.steps == 6
    assert _worst(full.files[0], resumed.files[0]) <= TOLERANCE


def test_hooks_clip_each_tensor_and_free_its_gradient():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))
    start = [a.detach().clone(), b.detach().clone()]
    optimizer = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.5}])
    steps = FusedSteps(optimizer, max_grad_norm=0.5)
    x = torch.randn(4)
    loss = (a @ x).pow(2).sum() + 3 * b.pow(3).sum()
    grads = torch.autograd.grad(loss, [a, b], retain_graph=True)
    loss.backward()
    assert a.grad is None and b.grad is None  # freed inside backward
    for param, before, grad, lr in zip((a, b), start, grads, (0.1, 0.5), strict=True):
        clipped = grad * min(1.0, 0.5 / (grad.norm().item() + 1e-6))  # each tensor on its own, as torch clips
        torch.testing.assert_close(param.detach(), before - lr * clipped)
    assert len(optimizer.param_groups) == 2 and optimizer.param_groups[1]["params"] == [b]
    steps.remove()
    (a.sum() + b.sum()).backward()
    assert a.grad is not None  # no hook left


@pytest.mark.parametrize(("settings", "message"), [
    (["optim.optimizer=lion"], "adamw or adafactor, not lion"),
    (["optim.grad_accum=2"], "grad_accum=1"),
    (["optim.mixed_precision=fp16"], "bf16"),
])
def test_refused_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        check(load_config(None, ["optim.fused_backward=true", *settings]))
    check(load_config(None, settings))  # the same settings without fused backward are fine


def test_refused_launches():
    one = SimpleNamespace(num_processes=1)
    check_launch(one, uses_deepspeed=False)
    with pytest.raises(ConfigError, match="DeepSpeed"):
        check_launch(one, uses_deepspeed=True)
    with pytest.raises(ConfigError, match="one process"):
        check_launch(SimpleNamespace(num_processes=2), uses_deepspeed=False)


def test_sd_scripts_flags_are_imported(tmp_path):
    from sdlora.settings.kohya_import import read_kohya

    toml = tmp_path / "config.toml"
    toml.write_text("fused_backward_pass = true\nfp8_base = true\noptimizer_type = \"Adafactor\"\n")
    cfg = load_config(None, read_kohya(toml).overrides())
    assert (cfg.optim.fused_backward, cfg.optim.fp8_base, cfg.optim.optimizer) == (True, True, "adafactor")
    check(cfg)
