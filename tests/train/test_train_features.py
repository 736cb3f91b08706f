"""Trainer features beyond the q/v acceptance run: samples, caches, DoRA/LoCon export, SDXL, bf16."""

import json
import warnings

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from tests_train_helpers import make_tiny_components, tiny_config, write_images

import sdlora
from sdlora.train import train
from sdlora.train.conditioning import LatentCache


def test_samples_grid_and_step_info(tmp_path):
    seen = []
    cfg = tiny_config(write_images(tmp_path / "data", count=2), tmp_path / "out", "optim.steps=2",
                      "output.sample_every=2", "output.sample_prompts=[red shape, blue shape]",
                      "output.sample_steps=2", "output.sample_size=16")
    result = train(cfg, make_tiny_components(tmp_path), on_step=seen.append)
    assert seen[0].samples == [] and len(seen[1].samples) == 3
    grid = Image.open(seen[1].samples[0])
    assert grid.width == 2 * 128 and grid.height > 128        # two images (16 px enlarged x8) + label strip
    assert result.samples[0].name == "step-000002-grid.png"
    labels = grid.crop((0, 128, 128, grid.height)).convert("L")
    assert min(labels.getdata()) < 128                         # the label is drawn (dark text on white)


def test_latent_cache_key_changes_with_image_and_settings(tmp_path):
    path = write_images(tmp_path / "d", count=1) / "img0.png"
    cache = LatentCache(tmp_path / "cache", "vae-a|white")
    key = cache.key(path, (32, 32), False)
    assert key != cache.key(path, (64, 32), False) and key != cache.key(path, (32, 32), True)
    assert key != LatentCache(None, "vae-b|white").key(path, (32, 32), False)
    cache.put(key, torch.ones(4, 4, 4), torch.zeros(4, 4, 4))
    assert torch.equal(LatentCache(tmp_path / "cache", "vae-a|white").get(key)[0], torch.ones(4, 4, 4))
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)           # the image is edited
    assert LatentCache(tmp_path / "cache", "vae-a|white").key(path, (32, 32), False) != key


def test_disk_cache_is_reused_by_the_next_run(tmp_path):
    data = write_images(tmp_path / "data", count=2)
    cfg = tiny_config(data, tmp_path / "out", "optim.steps=1", "data.cache_latents=disk")
    train(cfg, make_tiny_components(tmp_path / "a"))
    files = sorted((tmp_path / "out" / "cache" / "latents").glob("*.safetensors"))
    stamps = [f.stat().st_mtime_ns for f in files]
    assert len(files) == 2
    train(cfg, make_tiny_components(tmp_path / "b"))
    assert [f.stat().st_mtime_ns for f in sorted(files)] == stamps  # read, not rewritten


def test_frozen_text_encoder_runs_once_per_caption(tmp_path):
    components = make_tiny_components(tmp_path)
    calls = []
    components.text_encoder.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    cfg = tiny_config(write_images(tmp_path / "data", count=2), tmp_path / "out", "optim.steps=4",
                      "lora.train_text_encoder=false")
    train(cfg, components)
    assert sum(calls) == 2   # two captions, encoded once each over four steps


def test_dora_and_locon_export(tmp_path):
    cfg = tiny_config(write_images(tmp_path / "data", count=2), tmp_path / "out", "optim.steps=1",
                      "lora.targets=locon", "lora.dora=true", "lora.conv_rank=2", "lora.conv_alpha=1")
    result = train(cfg, make_tiny_components(tmp_path))
    with safe_open(str(result.files[0]), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        conv_down = f.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight")
    assert conv_down.shape == (2, 32, 3, 3)
    assert "lora_unet_down_blocks_0_resnets_0_conv1.dora_scale" in keys
    assert '"conv_dim": "2"' in meta["ss_network_args"] and '"dora_wd": "True"' in meta["ss_network_args"]
    lora = sdlora.load_lora(result.files[0])
    module = lora.modules["unet.down_blocks.0.resnets.0.conv1"]
    assert module.rank == 2 and module.alpha == 1.0 and module.dora_axis == "in"


def test_bf16_autocast_keeps_lora_float32(tmp_path):
    cfg = tiny_config(write_images(tmp_path / "data", count=2), tmp_path / "out", "optim.steps=2",
                      "optim.mixed_precision=bf16", "optim.gradient_checkpointing=true", "optim.grad_accum=2")
    steps = []
    result = train(cfg, make_tiny_components(tmp_path), on_step=steps.append)
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(s.loss)) for s in steps)
    with safe_open(str(result.files[0]), "pt") as f:
        assert f.metadata()["ss_mixed_precision"] == "bf16"


def _tiny_sdxl(tmp_path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    components = make_tiny_components(tmp_path)
    torch.manual_seed(0)
    components.unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=8)
    config = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
              "vocab_size": 1000, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "projection_dim": 32}
    components.text_encoder = CLIPTextModel(CLIPTextConfig(**config)).eval()
    components.text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config)).eval()
    components.tokenizer_2, components.family = components.tokenizer, "sdxl"
    return components


def test_sdxl_trains_both_text_encoders(tmp_path):
    components = _tiny_sdxl(tmp_path)
    seen = []
    components.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].tolist()), with_kwargs=True)
    cfg = tiny_config(write_images(tmp_path / "data", count=2), tmp_path / "out", "optim.steps=2")
    result = train(cfg, components)
    # micro-conditioning: original 64x64 image, crop at (0, 0), trained at its 32x32 bucket
    assert seen[0] == [[64.0, 64.0, 0.0, 0.0, 32.0, 32.0]]
    with safe_open(str(result.files[0]), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert any(k.startswith("lora_te1_") for k in keys) and any(k.startswith("lora_te2_") for k in keys)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"


def test_v_prediction_min_snr_and_noise_offset_run(tmp_path):
    components = make_tiny_components(tmp_path, prediction_type="v_prediction")
    components.family = "sd2"  # v-prediction is SD2 768-v's setting
    cfg = tiny_config(write_images(tmp_path / "data", count=2), tmp_path / "out", "optim.steps=2",
                      "optim.min_snr_gamma=5", "optim.noise_offset=0.05", "optim.scheduler=linear")
    steps = []
    result = train(cfg, components, on_step=steps.append)
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in steps)
    assert steps[1].lr < steps[0].lr                     # linear decay
    with safe_open(str(result.files[0]), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.prediction_type"] == "v" and meta["ss_base_model_version"] == "sd_v2_v"
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora" and meta["ss_v2"] == "True"
    assert meta["ss_min_snr_gamma"] == "5.0"
    assert meta["ss_noise_offset"] == "0.05"


def test_random_crop_varies_and_disables_latent_cache(tmp_path, caplog):
    import random

    from sdlora.train.data import sample_crop, scan_dataset

    data = write_images(tmp_path / "data", count=2, size=(96, 32))
    cfg = tiny_config(data, tmp_path / "out", "optim.steps=1", "data.crop=random", "data.buckets=false")
    items, _ = scan_dataset(cfg.data)
    boxes = {sample_crop(items[0], cfg.data, random.Random(i)) for i in range(20)}
    assert len(boxes) > 3 and all(b[2] - b[0] == 32 and b[3] - b[1] == 32 for b in boxes)
    caplog.set_level("WARNING", logger="sdlora")
    result = train(cfg, make_tiny_components(tmp_path))
    assert result.steps == 1
    assert any("cache_latents is ignored with data.crop=random" in m for m in caplog.messages)


def test_loss_plot_draws_both_curves_where_the_loss_is(tmp_path):
    # the chart is drawn with Pillow: check the pixels, not only that a file exists
    from sdlora.train.monitor import _BOX, _RAW, _SMOOTH, plot_history

    # high loss for 20 steps, then low; the zigzag keeps the raw curve off its moving average
    rows = [(step, (1.0 if step <= 20 else 0.1) + 0.1 * (step % 2), 1e-4) for step in range(1, 41)]
    image = Image.open(plot_history(rows, tmp_path / "loss.png")).convert("RGB")
    assert image.size == (600, 350)
    left, top, right, bottom = _BOX

    def rows_of(colour, x0, x1):  # the pixel rows where `colour` appears in a vertical strip
        return {y for x in range(x0, x1) for y in range(top + 1, bottom) if image.getpixel((x, y)) == colour}

    for colour in (_RAW, _SMOOTH):
        early, late = rows_of(colour, left + 20, left + 40), rows_of(colour, right - 40, right - 20)
        assert early and late, colour
        assert max(early) < (top + bottom) / 2 < min(late), colour  # high loss is drawn high
    assert plot_history(rows[:1], tmp_path / "one.png").is_file()


def test_update_clips_steps_and_zeroes_without_accelerate_wrappers():
    # _apply_update calls torch directly (no GradScaler, no DDP): the gradient must still be clipped to
    # max_grad_norm before the step, the schedule must advance and the gradients must be cleared
    from types import SimpleNamespace

    from sdlora.settings.config import load_config
    from sdlora.train.loop import _apply_update
    from sdlora.train.session import make_accelerator

    cfg = load_config(None, ["optim.max_grad_norm=0.5"])
    acc = make_accelerator(cfg)
    params = [torch.zeros(3, requires_grad=True), torch.zeros(2, 2, requires_grad=True)]
    inner = torch.optim.SGD(params, lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(inner, lambda step: 1.0 / (step + 1))  # as setup_training
    optimizer = acc.prepare(inner)
    for p in params:
        p.grad = torch.full_like(p, 10.0)  # norm sqrt(7) * 10, far above 0.5
    state = SimpleNamespace(cfg=cfg, accelerator=acc, params=params, optimizer=optimizer, lr_scheduler=schedule)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "lr_scheduler.step() before optimizer.step()"
        _apply_update(state)
    moved = torch.cat([p.detach().flatten() for p in params])
    assert torch.linalg.vector_norm(moved).item() == pytest.approx(0.5, rel=1e-5)  # lr 1 x clipped gradient
    assert all(p.grad is None for p in params)
    assert schedule.get_last_lr()[0] == pytest.approx(0.5)


def test_rank_and_module_dropout_reach_training_and_metadata(tmp_path):
    data = write_images(tmp_path / "data", count=2)
    runs = {}
    for name, extra in (("off", ()), ("on", ("lora.rank_dropout=0.5", "lora.module_dropout=0.5"))):
        cfg = tiny_config(data, tmp_path / name, "optim.steps=3", "optim.lr=1e-2", *extra)
        result = train(cfg, make_tiny_components(tmp_path / f"c{name}"))
        with safe_open(str(result.files[0]), "pt") as f:
            runs[name] = ({k: f.get_tensor(k) for k in sorted(f.keys())}, json.loads(f.metadata()["ss_network_args"]))
    (off, off_args), (on, on_args) = runs["off"], runs["on"]
    assert any(not torch.equal(off[k], on[k]) for k in off)
    assert on_args["rank_dropout"] == "0.5" and on_args["module_dropout"] == "0.5"
    assert "rank_dropout" not in off_args and "module_dropout" not in off_args
