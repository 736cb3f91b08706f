"""The optimizer registry: every optimizer trains the tiny model (a fixed-noise loss goes down), resumes
bit-exactly from a checkpoint, and reports missing packages, bad arguments and bad combinations as
ConfigErrors before anything loads."""

import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tests_train_helpers import make_tiny_components, tiny_config, write_images

from sdlora.errors import ConfigError
from sdlora.settings.config import OptimConfig, load_config
from sdlora.train import optimizers, train
from sdlora.train.checkpoint import list_checkpoints
from sdlora.train.data import scan_dataset
from sdlora.train.loop import optimizer_step, setup_training, training_step
from sdlora.train.optimizers import eval_weights
from sdlora.train.session import make_accelerator

# (optimizer, lr, extra settings): lrs each optimizer trains the tiny LoRA with in 10 steps; Prodigy starts
# from d0=1e-4 instead of 1e-6 so that its step-size estimate grows within those steps
OPTIMIZERS = [
    ("adamw", "1e-2", []),
    ("prodigy", "1", ["optim.optimizer_args=[d0=1e-4]"]),
    ("lion", "3e-3", []),
    ("adamw_schedulefree", "1e-2", []),
    ("adafactor", "1e-2", []),
    ("adamw", "1e-2", ["optim.loraplus_ratio=16"]),
]
IDS = ["adamw", "prodigy", "lion", "adamw_schedulefree", "adafactor", "adamw-loraplus"]


class Killed(Exception):
    pass


@pytest.fixture
def data(tmp_path):
    return write_images(tmp_path / "data", count=3)


def _fixed_loss(state) -> float:
    """Mean loss over 12 micro-batches with fixed noise and timesteps (the generator is put back after)."""
    saved = state.generator.get_state()
    state.generator.manual_seed(1234)
    with torch.no_grad(), eval_weights(state.optimizer, state.params):
        loss = sum(float(training_step(state, micro)) for micro in range(12)) / 12
    state.generator.set_state(saved)
    return loss


@pytest.mark.parametrize(("name", "lr", "extra"), OPTIMIZERS, ids=IDS)
def test_each_optimizer_lowers_a_fixed_noise_loss(tmp_path, data, name, lr, extra):
    cfg = tiny_config(data, tmp_path / "out", "optim.steps=10", f"optim.optimizer={name}", f"optim.lr={lr}",
                      "lora.train_text_encoder=false", "lora.targets=attn", *extra)
    items, summary = scan_dataset(cfg.data)
    state = setup_training(cfg, make_tiny_components(tmp_path / "c"), make_accelerator(cfg), items, summary)
    try:
        assert type(state.optimizer.optimizer).__name__ == optimizers.REGISTRY[name].cls
        before = _fixed_loss(state)
        for _ in range(10):
            optimizer_step(state)
        after = _fixed_loss(state)
    finally:
        state.network.remove()
    assert after < before


def _resume_cfg(data, out, name, lr, extra):
    schedule = "constant" if name == "adamw_schedulefree" else "cosine"
    return tiny_config(data, out, "optim.steps=6", "output.save_every=3", f"optim.optimizer={name}",
                       f"optim.lr={lr}", f"optim.scheduler={schedule}", "optim.warmup_steps=2", "data.flip=true",
                       *extra)


@pytest.mark.parametrize(("name", "lr", "extra"), OPTIMIZERS, ids=IDS)
def test_each_optimizer_resumes_bit_exactly(tmp_path, data, name, lr, extra):
    full = train(_resume_cfg(data, tmp_path / "a", name, lr, extra), make_tiny_components(tmp_path / "ca"))
    cfg = _resume_cfg(data, tmp_path / "b", name, lr, extra)

    def kill_after_5(info):
        if info.step == 5:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, make_tiny_components(tmp_path / "cb"), on_step=kill_after_5)
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-000003"]
    resumed = train(cfg, make_tiny_components(tmp_path / "cc"), resume=True)
    a, b = load_file(full.files[0]), load_file(resumed.files[0])
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert any(a[k].abs().sum() > 0 for k in a if "lora_up" in k)  # it trained
    with safe_open(str(resumed.files[0]), "pt") as f:
        assert f.metadata()["ss_optimizer"] == optimizers.describe(cfg)
    # steps 4-6 ran after the resume (earlier rows come back from loss.csv, rounded)
    assert [row[1:] for row in resumed.history[3:]] == [row[1:] for row in full.history[3:]]


def test_schedule_free_exports_the_averaged_weights_and_training_continues_unchanged():
    # eval_weights switches to x (what is exported and sampled) and restores y bit for bit afterwards
    from types import SimpleNamespace

    cfg = SimpleNamespace(optim=OptimConfig(optimizer="adamw_schedulefree", lr=0.1))
    params = [torch.randn(4, 3, requires_grad=True)]
    optimizer = optimizers.build([{"params": params, "lr": 0.1}], cfg, torch.device("cpu"))
    for step in range(3):
        params[0].grad = torch.sin(params[0].detach() + step)
        optimizer.step()
    y = params[0].detach().clone()
    with eval_weights(optimizer, params):
        x = params[0].detach().clone()
        assert optimizer.param_groups[0]["train_mode"] is False
    assert not torch.equal(x, y)
    assert torch.equal(params[0].detach(), y)
    assert optimizer.param_groups[0]["train_mode"] is True


@pytest.mark.parametrize(("value", "expected"), [
    (["d_coef=2", "safeguard_warmup=True"], {"d_coef": 2, "safeguard_warmup": True}),
    ("weight_decay=0.01 decouple=True", {"weight_decay": 0.01, "decouple": True}),
    ({"betas": "0.9,0.99", "use_bias_correction": "true"}, {"betas": (0.9, 0.99), "use_bias_correction": True}),
    (["growth_rate=inf", "name=fast"], {"growth_rate": float("inf"), "name": "fast"}),
])
def test_optimizer_args_accept_kohya_lists_strings_and_mappings(value, expected):
    cfg = load_config(None)
    from sdlora.settings.config import apply_dict

    apply_dict(cfg, {"optim": {"optimizer_args": value}}, "test")
    assert optimizers.parse_optimizer_args(cfg.optim.optimizer_args) == expected


def test_optimizer_args_from_the_command_line():
    cfg = load_config(None, ["optim.optimizer=prodigy", "optim.lr=1", "optim.optimizer_args=d_coef=2"])
    assert optimizers.optimizer_kwargs(cfg)["d_coef"] == 2
    assert optimizers.optimizer_kwargs(cfg)["safeguard_warmup"] is False  # no warmup
    cfg = load_config(None, ["optim.optimizer=prodigy", "optim.lr=1", "optim.warmup_steps=10"])
    assert optimizers.optimizer_kwargs(cfg)["safeguard_warmup"] is True


def test_unknown_optimizer_argument_names_the_nearest():
    cfg = load_config(None, ["optim.optimizer=prodigy", "optim.lr=1", "optim.optimizer_args=[d_cof=2]"])
    with pytest.raises(ConfigError, match="Prodigy has no argument 'd_cof'; did you mean 'd_coef'"):
        optimizers.check(cfg)
    with pytest.raises(ConfigError, match="not key=value"):
        optimizers.parse_optimizer_args(["d_coef"])
    with pytest.raises(ConfigError, match="optim.lr"):
        optimizers.check(load_config(None, ["optim.optimizer_args=[lr=1]"]))


def test_config_offers_exactly_the_registry():
    from dataclasses import fields

    choices = next(f.metadata["choices"] for f in fields(OptimConfig) if f.name == "optimizer")
    assert choices == optimizers.NAMES


def test_missing_package_is_a_config_error_naming_the_extra_before_anything_loads(tmp_path, monkeypatch):
    import sdlora.train.session as train_mod

    real = optimizers.importlib.util.find_spec
    monkeypatch.setattr(optimizers.importlib.util, "find_spec",
                        lambda name, *a: None if name == "prodigyopt" else real(name, *a))
    monkeypatch.setattr(train_mod, "_load_base", lambda cfg: pytest.fail("the model must not load"))
    cfg = load_config(None, ["optim.optimizer=prodigy", "optim.lr=1", f"data.path={tmp_path / 'none'}"])
    with pytest.raises(ConfigError, match=r'pip install "sdlora\[prodigy\]"'):
        train(cfg)


def test_prodigy_warns_when_lr_is_far_from_one(caplog):
    with caplog.at_level(logging.WARNING, logger="sdlora.train.optimizers"):
        optimizers.check(load_config(None, ["optim.optimizer=prodigy", "optim.lr=1e-4"]))
    assert "normally 1.0" in caplog.text and "10000x slower" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sdlora.train.optimizers"):
        optimizers.check(load_config(None, ["optim.optimizer=prodigy", "optim.lr=1"]))
    assert caplog.text == ""


def test_prodigy_refuses_different_group_lrs():
    cfg = load_config(None, ["optim.optimizer=prodigy", "optim.lr=1", "optim.text_encoder_lr=0.5"])
    with pytest.raises(ConfigError, match="must be equal"):
        optimizers.check(cfg)


def test_schedule_free_refuses_a_schedule_and_adafactor_refuses_relative_step():
    with pytest.raises(ConfigError, match="optim.scheduler=constant"):
        optimizers.check(load_config(None, ["optim.optimizer=adamw_schedulefree", "optim.scheduler=cosine"]))
    with pytest.raises(ConfigError, match="relative_step"):
        optimizers.check(load_config(None, ["optim.optimizer=adafactor",
                                            "optim.optimizer_args=[relative_step=True]"]))


def test_adamw8bit_needs_cuda():
    cfg = load_config(None, ["optim.optimizer=adamw8bit"])
    with pytest.raises(ConfigError, match="CUDA"):
        optimizers.build([{"params": [torch.zeros(2, requires_grad=True)], "lr": 1.0}], cfg, torch.device("cpu"))


def test_ss_optimizer_names_the_class_and_its_arguments():
    assert optimizers.describe(load_config(None)) == "torch.optim.AdamW"
    cfg = load_config(None, ["optim.optimizer=prodigy", "optim.optimizer_args=[d_coef=2, decouple=True]"])
    assert optimizers.describe(cfg) == "prodigyopt.Prodigy(d_coef=2,decouple=True)"
    assert optimizers.describe(load_config(None, ["optim.optimizer=lion"])) == "lion_pytorch.Lion"


def test_deepspeed_runs_adamw_only():
    from sdlora.train.deepspeed_run import check_optimizer

    check_optimizer(load_config(None))
    with pytest.raises(ConfigError, match="optim.optimizer=lion under DeepSpeed"):
        check_optimizer(load_config(None, ["optim.optimizer=lion"]))


def test_loraplus_trains_the_up_matrices_at_lr_times_ratio(tmp_path, data):
    # AdamW's first update is lr x g / |g| per element: the up matrices (zero at init) move by exactly lr,
    # so after one step their largest entry is lr without LoRA+ and lr x 16 with it
    largest = {}
    for ratio in (0, 16):
        cfg = tiny_config(data, tmp_path / f"out{ratio}", "optim.lr=1e-3", "optim.weight_decay=0",
                          f"optim.loraplus_ratio={ratio}", "optim.max_grad_norm=0")
        items, summary = scan_dataset(cfg.data)
        state = setup_training(cfg, make_tiny_components(tmp_path / f"c{ratio}"), make_accelerator(cfg), items,
                               summary)
        try:
            groups = {g["name"]: g["lr"] for g in state.optimizer.param_groups}
            optimizer_step(state)
            ups = [state.network.layer(n).up.weight for n in state.network.names]
            downs = [state.network.layer(n).down.weight for n in state.network.names]
            largest[ratio] = (max(u.abs().max().item() for u in ups), groups, len(downs))
        finally:
            state.network.remove()
    assert largest[0][1] == {"unet": 1e-3, "text_encoder": 1e-3}
    assert largest[16][1] == pytest.approx({"unet": 1e-3, "unet_up": 1.6e-2, "text_encoder": 1e-3,
                                            "text_encoder_up": 1.6e-2})
    assert largest[0][0] == pytest.approx(1e-3, rel=1e-3)
    assert largest[16][0] == pytest.approx(1.6e-2, rel=1e-3)


def test_loraplus_is_written_and_refused_with_prodigy():
    from sdlora.train.export import _network_args

    assert _network_args(load_config(None, ["optim.loraplus_ratio=16"]))["loraplus_lr_ratio"] == "16.0"
    assert "loraplus_lr_ratio" not in _network_args(load_config(None))
    with pytest.raises(ConfigError, match="loraplus_ratio=0"):
        optimizers.check(load_config(None, ["optim.optimizer=prodigy", "optim.lr=1", "optim.loraplus_ratio=16"]))
    with pytest.raises(ConfigError, match="must be >= 0"):
        optimizers.check(load_config(None, ["optim.loraplus_ratio=-1"]))
