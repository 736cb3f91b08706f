"""Masked training: the loss counts only where the mask says, normalised by the mask's area; the mask follows
its image through scale, crop and flip; a white mask trains exactly as no mask; resume stays exact."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tests_train_helpers import make_tiny_components, tiny_config, write_images

from sdlora.errors import ConfigError, DatasetError
from sdlora.train import train
from sdlora.train.data import ImageItem, scan_dataset
from sdlora.train.loss import diffusion_loss, masked_loss
from sdlora.train.masks import load_mask


def test_masked_loss_ignores_the_masked_out_part_and_averages_over_the_rest():
    pred = torch.randn(2, 4, 4, 4, requires_grad=True)
    target = torch.randn(2, 4, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :, :2] = 1.0  # left half
    loss = masked_loss(pred, target, mask)
    loss.backward()
    assert (pred.grad[..., 2:] == 0).all() and (pred.grad[..., :2] != 0).all()
    assert loss.item() == pytest.approx(diffusion_loss(pred[..., :2].detach(), target[..., :2]).item(), rel=1e-6)


def test_a_sample_masked_out_entirely_adds_nothing():
    pred, target = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    mask = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    assert masked_loss(pred, target, mask).item() == pytest.approx(
        diffusion_loss(pred[:1], target[:1]).item() / 2, rel=1e-6)


def _half_mask(folder, name, size, black_left=True):
    mask = Image.new("L", size, 255)
    mask.paste(0, (0, 0, size[0] // 2, size[1]) if black_left else (size[0] // 2, 0, size[0], size[1]))
    folder.mkdir(parents=True, exist_ok=True)
    mask.save(folder / name)


def test_mask_follows_scale_crop_and_flip(tmp_path):
    image = tmp_path / "data" / "wide.png"
    image.parent.mkdir()
    Image.new("RGB", (64, 32), "red").save(image)
    _half_mask(tmp_path / "masks", "wide.png", (64, 32))
    cfg = tiny_config(tmp_path / "data", tmp_path / "out", f"data.mask_path={tmp_path / 'masks'}").data
    item = ImageItem(image, "x", "data", 1, (64, 32), bucket=(32, 32))
    box = (16, 0, 48, 32)  # the centre crop of the 64x32 image in a 32x32 bucket
    mask = load_mask(item, cfg, box, flip=False, latent_size=(4, 4))
    assert mask.shape == (1, 4, 4)
    assert torch.equal(mask[0, :, :2], torch.zeros(4, 2)) and torch.equal(mask[0, :, 2:], torch.ones(4, 2))
    flipped = load_mask(item, cfg, box, flip=True, latent_size=(4, 4))
    assert torch.equal(flipped, mask.flip(-1))


def test_alpha_mask_reads_the_images_alpha(tmp_path):
    image = tmp_path / "data" / "a.png"
    image.parent.mkdir()
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 32, 16))  # top half transparent
    rgba.save(image)
    cfg = tiny_config(tmp_path / "data", tmp_path / "out", "data.alpha_mask=true").data
    item = ImageItem(image, "x", "data", 1, (32, 32), bucket=(32, 32))
    mask = load_mask(item, cfg, (0, 0, 32, 32), flip=False, latent_size=(4, 4))
    assert torch.equal(mask[0, :2], torch.zeros(2, 4)) and torch.equal(mask[0, 2:], torch.ones(2, 4))
    Image.new("RGB", (32, 32)).save(image)  # no alpha: trains everywhere
    assert load_mask(item, cfg, (0, 0, 32, 32), flip=False, latent_size=(4, 4)) is None


def _lora(result):
    return load_file(result.files[0])


def _masked_run(tmp_path, name, data, *extra):
    cfg = tiny_config(data, tmp_path / name, "optim.steps=3", "optim.lr=1e-3", "data.flip=true", *extra)
    return train(cfg, make_tiny_components(tmp_path / f"c-{name}"))


def test_white_masks_train_exactly_as_no_masks_and_half_masks_do_not(tmp_path):
    data = write_images(tmp_path / "data", count=3, size=(32, 32))
    (tmp_path / "white").mkdir()
    for i in range(3):
        Image.new("L", (32, 32), 255).save(tmp_path / "white" / f"img{i}.png")
        _half_mask(tmp_path / "half", f"img{i}.png", (32, 32))
    plain = _lora(_masked_run(tmp_path, "plain", data))
    white = _lora(_masked_run(tmp_path, "white", data, f"data.mask_path={tmp_path / 'white'}"))
    half = _lora(_masked_run(tmp_path, "half", data, f"data.mask_path={tmp_path / 'half'}"))
    assert plain.keys() == white.keys() and all(torch.equal(plain[k], white[k]) for k in plain)
    assert any(not torch.equal(plain[k], half[k]) for k in plain)


def test_black_masks_leave_the_lora_untrained(tmp_path):
    data = write_images(tmp_path / "data", count=2, size=(32, 32))
    (tmp_path / "black").mkdir()
    for i in range(2):
        Image.new("L", (32, 32), 0).save(tmp_path / "black" / f"img{i}.png")
    lora = _lora(_masked_run(tmp_path, "black", data, f"data.mask_path={tmp_path / 'black'}", "optim.weight_decay=0"))
    ups = [key for key in lora if key.endswith("lora_up.weight")]
    assert ups and all(torch.count_nonzero(lora[key]) == 0 for key in ups)  # up starts at 0: no gradient ever


def test_masked_run_resumes_exactly(tmp_path):
    data = write_images(tmp_path / "data", count=3, size=(32, 32))
    for i in range(3):
        _half_mask(tmp_path / "masks", f"img{i}.png", (32, 32), black_left=bool(i % 2))
    extra = (f"data.mask_path={tmp_path / 'masks'}", "optim.steps=4", "output.save_every=2", "optim.lr=1e-3")
    full = train(tiny_config(data, tmp_path / "a", *extra), make_tiny_components(tmp_path / "ca"))

    class Killed(Exception):
        pass

    def kill(info):
        if info.step == 3:
            raise Killed

    cfg = tiny_config(data, tmp_path / "b", *extra)
    with pytest.raises(Killed):
        train(cfg, make_tiny_components(tmp_path / "cb"), on_step=kill)
    resumed = train(cfg, make_tiny_components(tmp_path / "cc"), resume=True)
    a, b = load_file(full.files[0]), load_file(resumed.files[0])
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


def test_mask_settings_are_checked(tmp_path):
    data = write_images(tmp_path / "data", count=1)
    with pytest.raises(ConfigError, match="both set"):
        tiny_config(data, tmp_path / "out", "data.alpha_mask=true", f"data.mask_path={tmp_path}")
    with pytest.raises(DatasetError, match="data.mask_path"):
        scan_dataset(tiny_config(data, tmp_path / "out", f"data.mask_path={tmp_path / 'nope'}").data)
    _, summary = scan_dataset(tiny_config(data, tmp_path / "out", f"data.mask_path={tmp_path}").data)
    assert any("no mask in" in line and "img0.png" in line for line in summary.checks)
