"""EMA of the LoRA weights: the update rule, the file exported beside the LoRA, exact resume, refusals."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tests_train_helpers import make_tiny_components, tiny_config, write_images

from sdlora.errors import ConfigError
from sdlora.settings.config import load_config
from sdlora.train import ema, train
from sdlora.train.checkpoint import list_checkpoints


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))


def test_update_rule_with_warm_up_and_every():
    net = _Net()
    average = ema.LoraEma(net, decay=0.9, every=2)
    expected = torch.zeros(3)
    for step in range(1, 7):
        with torch.no_grad():
            net.w.fill_(float(step))
        average.update(step)
        if step % 2 == 0:  # updates at steps 2, 4, 6 only
            n = step // 2 - 1
            d = min(0.9, (1 + n) / (10 + n))
            expected = d * expected + (1 - d) * step
    assert average.updates == 3
    assert torch.allclose(average.shadow["w"], expected)
    with average.swapped():
        assert torch.equal(net.w.detach(), average.shadow["w"])
    assert torch.equal(net.w.detach(), torch.full((3,), 6.0))  # the trained weights come back


@pytest.fixture
def data(tmp_path):
    return write_images(tmp_path / "data", count=3)


def _cfg(data, out):
    return tiny_config(data, out, "optim.steps=6", "output.save_every=3", "optim.lr=1e-2", "optim.ema_decay=0.8",
                       "data.flip=true")


def test_ema_file_beside_the_lora_and_exact_resume(tmp_path, data):
    full = train(_cfg(data, tmp_path / "a"), make_tiny_components(tmp_path / "ca"))
    names = sorted(p.name for p in (tmp_path / "a").glob("*.safetensors"))
    assert names == ["lora-ema.safetensors", "lora-step000003-ema.safetensors", "lora-step000003.safetensors",
                     "lora.safetensors"]
    assert [p.name for p in full.files] == ["lora.safetensors", "lora-ema.safetensors"]
    main, average = load_file(full.files[0]), load_file(full.files[1])
    assert main.keys() == average.keys()
    assert any(not torch.equal(main[k], average[k]) for k in main)  # an average, not a copy
    with safe_open(str(full.files[1]), "pt") as f:
        assert f.metadata()["sdlora_ema"] == "decay=0.8 every=1 updates=6"

    cfg = _cfg(data, tmp_path / "b")

    def kill_after_5(info):
        if info.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, make_tiny_components(tmp_path / "cb"), on_step=kill_after_5)
    assert (list_checkpoints(tmp_path / "b")[-1] / ema.FILE).is_file()
    resumed = train(cfg, make_tiny_components(tmp_path / "cc"), resume=True)
    again = load_file(resumed.files[1])
    assert all(torch.equal(average[k], again[k]) for k in average)


def test_no_ema_no_file(tmp_path, data):
    result = train(tiny_config(data, tmp_path / "out", "optim.steps=1"), make_tiny_components(tmp_path / "c"))
    assert [p.name for p in result.files] == ["lora.safetensors"]


@pytest.mark.parametrize(("settings", "match"), [
    (["optim.ema_decay=1"], "must be in"),
    (["optim.ema_decay=0.9", "optim.ema_every=0"], "ema_every"),
    (["optim.ema_decay=0.9", "optim.optimizer=adamw_schedulefree"], "already exports an average"),
])
def test_bad_settings_are_config_errors(settings, match):
    with pytest.raises(ConfigError, match=match):
        ema.check(load_config(None, settings))
