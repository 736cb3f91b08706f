"""Parking the frozen encoders off the accelerator once latents and captions are cached
(sdlora.train.parking). CPU-only here: the moves themselves are checked with stand-in modules, and a real
run with parking forced checks the property that makes it safe (no encoder call after the pre-pass)."""

from types import SimpleNamespace

import pytest
import torch
from tests_train_helpers import make_tiny_components, tiny_config, write_images

from sdlora.train import parking, train

CACHED = ("data.cache_latents=memory", "data.cache_text=true", "lora.train_text_encoder=false")


class Mover:
    """Stands in for a model: records where `.to` sent it."""

    def __init__(self):
        self.moves = []

    def to(self, device):
        self.moves.append(torch.device(device).type)
        return self


def fake_state(device="cuda", latent=True, text=True, train_text=False):
    components = SimpleNamespace(vae=Mover(), text_encoders={"text_encoder": Mover(), "text_encoder_2": Mover()})
    return SimpleNamespace(device=torch.device(device), latent_cache=object() if latent else None,
                           text_cache=object() if text else None, train_text=train_text, parked=False,
                           components=components)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, True),
    ({"device": "cpu"}, False),
    ({"latent": False}, False),
    ({"text": False}, False),
    ({"train_text": True}, False),
])
def test_can_park_only_when_the_steps_never_need_the_encoders(kwargs, expected):
    assert parking.can_park(fake_state(**kwargs)) is expected


def test_park_moves_every_encoder_to_the_cpu_and_unpark_brings_them_back():
    state = fake_state()
    movers = [state.components.vae, *state.components.text_encoders.values()]
    assert parking.park(state) and state.parked
    assert not parking.park(state)                        # already parked: nothing moves twice
    parking.unpark(state)
    assert not state.parked
    assert all(m.moves == ["cpu", "cuda"] for m in movers)


def test_encoders_on_device_returns_them_for_the_block_and_parks_again():
    state = fake_state()
    parking.park(state)
    with parking.encoders_on_device(state):
        assert not state.parked
    assert state.parked and state.components.vae.moves == ["cpu", "cuda", "cpu"]


def test_nothing_moves_on_the_cpu():
    state = fake_state(device="cpu")
    assert not parking.park(state) and state.components.vae.moves == []


def test_training_never_calls_the_encoders_after_the_pre_pass(tmp_path, monkeypatch):
    """With parking forced on the CPU (where the moves are no-ops), count VAE and text-encoder calls: all
    happen before the first step (the pre-pass), none during steps, except for the sample render."""
    monkeypatch.setattr(parking, "can_park", lambda state: True)
    components = make_tiny_components(tmp_path)
    calls = []
    for model in (components.vae.encoder, components.text_encoder):
        model.register_forward_hook(lambda *_: calls.append(1))
    seen = []
    cfg = tiny_config(write_images(tmp_path / "data", count=3), tmp_path / "out", *CACHED, "optim.steps=4",
                      "data.trigger=zqx", "data.keep_tokens=1",
                      "data.batch_size=2", "output.sample_every=3", "output.sample_prompts=[red shape]",
                      "output.sample_steps=1", "output.sample_size=16")
    train(cfg, components, on_step=lambda info: seen.append((info.step, len(calls))))
    after_pre_pass = seen[0][1]
    assert after_pre_pass > 0                               # latents and captions were encoded up front
    assert [n for step, n in seen if step < 3] == [after_pre_pass] * 2
    assert seen[2][1] > after_pre_pass                      # the step-3 sample encoded its prompt
    assert seen[3][1] == seen[2][1]                         # and the steps after it called nothing again


def test_text_cache_holds_every_caption_before_the_first_step(tmp_path):
    components = make_tiny_components(tmp_path)
    from sdlora.train.conditioning import TextCache

    state = SimpleNamespace(text_cache=TextCache(), components=components, device=torch.device("cpu"),
                            cfg=tiny_config(tmp_path, tmp_path / "out", "data.trigger=zqx", "data.batch_size=2"),
                            items=[SimpleNamespace(caption=f"zqx, shape {i}") for i in range(3)])
    parking.precompute_text(state)
    hidden, _ = state.text_cache.encode(components, ["zqx, shape 2"], torch.device("cpu"))
    assert len(state.text_cache._memory) == 3 and hidden.shape[0] == 1
