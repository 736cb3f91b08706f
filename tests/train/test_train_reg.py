"""Regularization images (prior preservation): kohya's balancing, the prior loss changes what is learned,
resume stays exact, metadata, and a clear error for a missing folder."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from tests_train_helpers import make_tiny_components, tiny_config, write_images

from sdlora.errors import DatasetError
from sdlora.train import train
from sdlora.train.data import ImageItem, balance_reg, scan_dataset
from sdlora.train.loop import optimizer_step, setup_training, training_step


def _item(name: str, repeats: int, is_reg: bool = False) -> ImageItem:
    return ImageItem(Path(name), "x", "f", repeats, (32, 32), is_reg=is_reg)


def test_balance_repeats_short_reg_set_to_the_training_count():
    train_items = [_item("a", 2), _item("b", 2), _item("c", 2)]        # 6 samples an epoch
    reg = [_item(f"r{i}", 1, True) for i in range(4)]
    used = balance_reg(train_items, reg)
    assert [r.repeats for r in used] == [2, 2, 1, 1]                   # one more repeat each, in turn


def test_balance_cuts_a_long_reg_set():
    reg = [_item(f"r{i}", 2, True) for i in range(10)]
    used = balance_reg([_item("a", 5)], reg)
    assert [r.path.name for r in used] == ["r0", "r1", "r2"]           # 2 + 2 + 2 >= 5, the rest left out
    assert [r.repeats for r in used] == [2, 2, 2]


def _reg_folder(root: Path, count: int = 2) -> Path:
    """Regularization images unlike the training ones (dark, striped), captioned with the class only."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = Image.new("RGB", (64, 64), (10, 20 + 30 * i, 200))
        for y in range(0, 64, 4):
            for x in range(64):
                img.putpixel((x, y), (250, 250, 0))
        img.save(root / f"reg{i}.png")
        (root / f"reg{i}.txt").write_text("a shape", encoding="utf-8")
    return root


def test_scan_adds_balanced_reg_items_without_trigger(tmp_path):
    data = write_images(tmp_path / "data", count=3)
    cfg = tiny_config(data, tmp_path / "out", f"data.reg_path={_reg_folder(tmp_path / 'reg', 2)}",
                      "data.trigger=zqx", "data.repeats=2").data
    items, summary = scan_dataset(cfg)
    reg = [i for i in items if i.is_reg]
    assert sum(i.repeats for i in reg) == sum(i.repeats for i in items if not i.is_reg) == 6
    assert all(not i.caption.startswith("zqx") for i in reg)
    assert summary.image_count == 3 and summary.reg_folders == {"reg": {"n_repeats": 1, "img_count": 2}}


def test_missing_reg_folder_is_a_dataset_error(tmp_path):
    data = write_images(tmp_path / "data", count=1)
    cfg = tiny_config(data, tmp_path / "out", f"data.reg_path={tmp_path / 'nope'}").data
    with pytest.raises(DatasetError, match=r"data\.reg_path: .*nope.* is not a folder"):
        scan_dataset(cfg)


def test_empty_reg_folder_is_a_dataset_error(tmp_path):
    data = write_images(tmp_path / "data", count=1)
    (tmp_path / "reg").mkdir()
    cfg = tiny_config(data, tmp_path / "out", f"data.reg_path={tmp_path / 'reg'}").data
    with pytest.raises(DatasetError, match=r"data\.reg_path: no usable images"):
        scan_dataset(cfg)


def _reg_loss(state) -> float:
    """Mean loss over the epoch's reg samples with fixed noise and timesteps (the generator reseeded)."""
    state.cfg.optim.prior_loss_weight = 1.0  # the reg samples' plain loss, whatever the run trained with
    losses = []
    for micro in range(state.batches_per_epoch):
        if state.items[state.batch(micro)[2][0]].is_reg:
            for seed in range(4):
                state.generator.manual_seed(1000 + seed)
                with torch.no_grad():
                    losses.append(float(training_step(state, micro)))
    return sum(losses) / len(losses)


def _train_and_measure(tmp_path: Path, name: str, weight: float) -> tuple[dict, float]:
    from accelerate import Accelerator

    components = make_tiny_components(tmp_path / f"c{name}")
    cfg = tiny_config(write_images(tmp_path / "data", count=2), tmp_path / name, "optim.lr=3e-2",
                      "optim.max_grad_norm=0", "lora.targets=locon", "lora.rank=8", "lora.train_text_encoder=false",
                      f"data.reg_path={_reg_folder(tmp_path / 'reg')}", f"optim.prior_loss_weight={weight}")
    items, summary = scan_dataset(cfg.data)
    state = setup_training(cfg, components, Accelerator(), items, summary)
    for _ in range(24):
        optimizer_step(state)
    lora = {k: v.detach().clone() for k, v in state.network.state_dict().items()}
    loss = _reg_loss(state)
    state.network.remove()
    return lora, loss


def test_prior_loss_teaches_the_reg_images(tmp_path):
    without, loss_without = _train_and_measure(tmp_path, "w0", 0.0)
    with_prior, loss_with = _train_and_measure(tmp_path, "w1", 1.0)
    assert any(not torch.equal(without[k], with_prior[k]) for k in without)
    # the reg images were only seen through the prior loss, so only it can lower their loss
    assert loss_with < 0.9 * loss_without, (loss_with, loss_without)


def _resume_cfg(data, reg, out):
    return tiny_config(data, out, "optim.steps=6", "output.save_every=3", "optim.lr=1e-3", "data.flip=true",
                       "data.shuffle_captions=true", "optim.scheduler=cosine", f"data.reg_path={reg}",
                       "optim.prior_loss_weight=0.5")


class Killed(Exception):
    pass


def _kill_at(step):
    def on_step(info):
        if info.step == step:
            raise Killed(f"simulated kill after step {step}")
    return on_step


@pytest.mark.slow
def test_resume_with_reg_images_equals_uninterrupted_and_metadata(tmp_path):
    data, reg = write_images(tmp_path / "data", count=3), _reg_folder(tmp_path / "reg", 2)
    full = train(_resume_cfg(data, reg, tmp_path / "a"), make_tiny_components(tmp_path / "ca"))
    cfg = _resume_cfg(data, reg, tmp_path / "b")
    with pytest.raises(Killed):
        train(cfg, make_tiny_components(tmp_path / "cb"), on_step=_kill_at(5))
    resumed = train(cfg, make_tiny_components(tmp_path / "cc"), resume=True)
    a, b = load_file(full.files[0]), load_file(resumed.files[0])
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    with safe_open(full.files[0], "pt") as f:
        meta = f.metadata()
    assert meta["ss_num_reg_images"] == "2" and meta["ss_prior_loss_weight"] == "0.5"
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"reg": {"n_repeats": 1, "img_count": 2}}
    assert meta["ss_num_train_images"] == "3"


def test_reg_images_are_cached_like_the_training_images(tmp_path):
    from accelerate import Accelerator

    from sdlora.train.parking import precompute_text

    data = write_images(tmp_path / "data", count=2)
    cfg = tiny_config(data, tmp_path / "out", f"data.reg_path={_reg_folder(tmp_path / 'reg')}",
                      "lora.train_text_encoder=false")
    items, summary = scan_dataset(cfg.data)
    state = setup_training(cfg, make_tiny_components(tmp_path / "c"), Accelerator(), items, summary)
    from sdlora.train.loop import precompute_latents

    precompute_latents(state)
    precompute_text(state)
    assert len(state.latent_cache) == 4                                # 2 training + 2 reg images
    assert "a shape" in state.text_cache._memory
    state.network.remove()
