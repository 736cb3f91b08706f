"""Importing kohya settings: real kohya_ss GUI presets and sd-scripts TOMLs map onto sdlora's config with
an exact list of mapped and ignored keys (see tests/fixtures/kohya/README.md for the files' origins)."""

import json
from pathlib import Path

import pytest
from PIL import Image

from sdlora.errors import ConfigError
from sdlora.settings.config import load_config
from sdlora.settings.kohya_import import read_kohya
from sdlora.train import optimizers

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kohya"

# keys every one of the three new-format GUI presets reports the same way
_GUI_IGNORED = {
    "additional_parameters", "block_alphas", "block_dims", "block_lr_zero_threshold", "bucket_no_upscale",
    "caption_dropout_every_n_epochs", "caption_extension", "clip_skip", "color_aug", "conv_alpha", "conv_dim",
    "down_lr_weight", "epoch", "full_fp16", "lora_network_weights", "lr_scheduler_power",
    "max_data_loader_n_workers", "max_train_epochs", "mem_eff_attn", "mid_lr_weight",
    "num_cpu_threads_per_process", "persistent_data_loader_workers", "save_every_n_epochs",
    "up_lr_weight", "v2", "v_parameterization", "vae_batch_size", "xformers",
}
_SDXL_IGNORED = _GUI_IGNORED | {
    "adaptive_noise_scale", "conv_block_alphas", "conv_block_dims", "decompose_both", "dim_from_weights",
    "factor", "full_bf16", "network_dropout", "no_token_padding", "noise_offset_type",
    "save_last_n_steps", "save_last_n_steps_state", "scale_v_pred_loss_like_noise_pred", "scale_weight_norms",
    "sdxl_cache_text_encoder_outputs", "sdxl_no_half_vae", "seed", "stop_text_encoder_training_pct",
    "train_on_input", "unit", "use_cp", "use_wandb", "weighted_captions",
}
_SDXL_MAPPED = {
    "LoRA_type": ("lora.targets", "sd-scripts"), "bucket_reso_steps": ("data.bucket_step", 32),
    "cache_latents": ("data.cache_latents", "disk"), "cache_latents_to_disk": ("data.cache_latents", "disk"),
    "caption_dropout_rate": ("data.caption_dropout", 0.0), "enable_bucket": ("data.buckets", True),
    "flip_aug": ("data.flip", False), "gradient_accumulation_steps": ("optim.grad_accum", 1),
    "gradient_checkpointing": ("optim.gradient_checkpointing", True), "lr_warmup": ("optim.warmup_steps", 0),
    "lr_scheduler_num_cycles": ("optim.lr_cycles", 1), "max_bucket_reso": ("data.max_bucket", 2048),
    "max_resolution": ("data.resolution", 1024), "mixed_precision": ("optim.mixed_precision", "bf16"),
    "random_crop": ("data.crop", "center"), "save_every_n_steps": ("output.save_every", 0),
    "save_precision": ("output.save_dtype", "bf16"), "sdxl": ("model.family", "sdxl"),
    "shuffle_caption": ("data.shuffle_captions", False), "min_timestep": ("optim.min_timestep", 0),
    "max_timestep": ("optim.max_timestep", 1000), "multires_noise_iterations": ("optim.multires_noise_iterations", 0),
    "multires_noise_discount": ("optim.multires_noise_discount", 0.0),
    "prior_loss_weight": ("optim.prior_loss_weight", 1.0),
    "rank_dropout": ("lora.rank_dropout", 0.0), "module_dropout": ("lora.module_dropout", 0.0),
    "max_token_length": ("data.max_token_length", 75),
}

EXPECTED = {
    "SDXL - LoRA AI_Now prodigy v1.0.json": ({
        **_SDXL_MAPPED, "keep_tokens": ("data.keep_tokens", 0), "learning_rate": ("optim.lr", 1.0),
        "lr_scheduler": ("optim.scheduler", "constant"), "min_bucket_reso": ("data.min_bucket", 256),
        "min_snr_gamma": ("optim.min_snr_gamma", 5.0), "network_alpha": ("lora.alpha", 16.0),
        "network_dim": ("lora.rank", 32), "noise_offset": ("optim.noise_offset", 0.0),
        "optimizer": ("optim.optimizer", "prodigy"),
        "optimizer_args": ("optim.optimizer_args", ["weight_decay=0.01", "decouple=True", "d0=0.0001",
                                                    "use_bias_correction=True"]),
        "text_encoder_lr": ("optim.text_encoder_lr", 1.0), "train_batch_size": ("data.batch_size", 8),
        "training_comment": ("output.comment", "trigger: the queen of heart 1a"),
        "unet_lr": ("optim.unet_lr", 1.0),
    }, _SDXL_IGNORED),
    "SDXL - LoRA adafactor v1.0.json": ({
        **_SDXL_MAPPED, "keep_tokens": ("data.keep_tokens", 1), "min_bucket_reso": ("data.min_bucket", 64),
        "min_snr_gamma": ("optim.min_snr_gamma", 0.0), "network_alpha": ("lora.alpha", 128.0),
        "network_dim": ("lora.rank", 128), "noise_offset": ("optim.noise_offset", 0.0357),
        "optimizer": ("optim.optimizer", "adafactor"), "train_batch_size": ("data.batch_size", 5),
        "training_comment": ("output.comment", "trigger: the white queen"),
    }, _SDXL_IGNORED | {"learning_rate", "lr_scheduler", "optimizer_args", "text_encoder_lr", "unet_lr",
                        "wandb_api_key"}),
    "sd15 - EDG_LoraOptiSettings.json": ({
        "LoRA_type": ("lora.targets", "sd-scripts"), "bucket_reso_steps": ("data.bucket_step", 64),
        "cache_latents": ("data.cache_latents", "memory"), "caption_dropout_rate": ("data.caption_dropout", 0.0),
        "enable_bucket": ("data.buckets", False), "flip_aug": ("data.flip", False),
        "gradient_accumulation_steps": ("optim.grad_accum", 1),
        "gradient_checkpointing": ("optim.gradient_checkpointing", False), "keep_tokens": ("data.keep_tokens", 0),
        "learning_rate": ("optim.lr", 1e-4), "lr_scheduler": ("optim.scheduler", "constant"),
        "lr_warmup": ("optim.warmup_steps", 0), "max_resolution": ("data.resolution", 576),
        "min_snr_gamma": ("optim.min_snr_gamma", 0.0), "mixed_precision": ("optim.mixed_precision", "bf16"),
        "network_alpha": ("lora.alpha", 64.0), "network_dim": ("lora.rank", 64),
        "noise_offset": ("optim.noise_offset", 0.05), "optimizer": ("optim.optimizer", "adamw8bit"),
        "random_crop": ("data.crop", "center"), "save_precision": ("output.save_dtype", "bf16"),
        "seed": ("optim.seed", 1234), "shuffle_caption": ("data.shuffle_captions", False),
        "text_encoder_lr": ("optim.text_encoder_lr", 5e-5), "train_batch_size": ("data.batch_size", 3),
        "unet_lr": ("optim.unet_lr", 1e-4), "prior_loss_weight": ("optim.prior_loss_weight", 1.0),
        "max_token_length": ("data.max_token_length", 75),
    }, _GUI_IGNORED | {"conv_alphas", "conv_dims", "lr_scheduler_num_cycles", "no_token_padding", "optimizer_args",
                       "stop_text_encoder_training", "training_comment"}),
    "lion_optimizer.json": ({
        "pretrained_model_name_or_path": ("model.base", "runwayml/stable-diffusion-v1-5"),
        "train_data_dir": ("data.path", "D:\\dataset\\marty_mcfly\\1985\\lora\\img_gan"),
        "output_dir": ("output.dir", "D:/lora/sd1.5/marty_mcfly"), "max_resolution": ("data.resolution", 512),
        "learning_rate": ("optim.lr", 3.333e-05), "lr_scheduler": ("optim.scheduler", "cosine"),
        "lr_warmup": ("optim.warmup_steps", 0), "train_batch_size": ("data.batch_size", 8),
        "mixed_precision": ("optim.mixed_precision", "bf16"), "save_precision": ("output.save_dtype", "fp16"),
        "seed": ("optim.seed", 1234), "cache_latents": ("data.cache_latents", "off"),
        "enable_bucket": ("data.buckets", True), "gradient_checkpointing": ("optim.gradient_checkpointing", False),
        "shuffle_caption": ("data.shuffle_captions", False), "text_encoder_lr": ("optim.text_encoder_lr", 1.6666e-05),
        "unet_lr": ("optim.unet_lr", 3.333e-05), "network_dim": ("lora.rank", 128),
        "flip_aug": ("data.flip", False), "gradient_accumulation_steps": ("optim.grad_accum", 1),
        "output_name": ("output.name", "mrtmcfl_v2.0"), "network_alpha": ("lora.alpha", 128.0),
        "max_token_length": ("data.max_token_length", 75),
        "keep_tokens": ("data.keep_tokens", 0), "random_crop": ("data.crop", "random"),
        "bucket_reso_steps": ("data.bucket_step", 64), "caption_dropout_rate": ("data.caption_dropout", 0.1),
        "prior_loss_weight": ("optim.prior_loss_weight", 1.0),
    }, {"v2", "v_parameterization", "logging_dir", "reg_data_dir", "epoch", "save_every_n_epochs",
        "num_cpu_threads_per_process", "caption_extension", "full_fp16", "no_token_padding",
        "stop_text_encoder_training", "use_8bit_adam", "xformers", "save_model_as", "save_state", "resume",
        "lora_network_weights", "color_aug", "clip_skip", "mem_eff_attn", "model_list",
        "max_train_epochs", "max_data_loader_n_workers", "training_comment",
        "lr_scheduler_num_cycles", "lr_scheduler_power", "persistent_data_loader_workers", "bucket_no_upscale",
        "caption_dropout_every_n_epochs"}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_kohya_ss_preset_maps_exactly(name):
    mapped, ignored = EXPECTED[name]
    result = read_kohya(FIXTURES / name)
    assert {key: (target, value) for key, target, value in result.mapped} == mapped
    assert {key for key, _ in result.ignored} == ignored
    assert len(result.mapped) + len(result.ignored) == len(json.loads((FIXTURES / name).read_text()))
    assert len(result.lines()) == len(ignored)
    cfg = load_config(None, result.overrides())  # the imported values are a valid sdlora config
    for key, value in result.values.items():
        section, _, field = key.partition(".")
        assert getattr(getattr(cfg, section), field) == value


def test_reasons_say_why():
    reasons = dict(read_kohya(FIXTURES / "SDXL - LoRA adafactor v1.0.json").ignored)
    assert "relative_step=True" in reasons["learning_rate"]  # kohya ignores its lr of 1.0 there; sdlora would not
    assert "relative step" in reasons["lr_scheduler"]
    assert reasons["epoch"].startswith("sdlora counts optimizer steps")
    assert reasons["adaptive_noise_scale"] == "adaptive noise scale is not supported by sdlora yet"
    assert reasons["bucket_no_upscale"] == "False is sdlora's behaviour"
    assert reasons["wandb_api_key"] == "not set (empty)"
    edg = dict(read_kohya(FIXTURES / "sd15 - EDG_LoraOptiSettings.json").ignored)
    assert edg["clip_skip"] == "clip skip is not supported by sdlora yet"
    assert edg["conv_dim"].startswith("only used by LoCon")


def test_imported_prodigy_preset_passes_the_optimizer_checks():
    result = read_kohya(FIXTURES / "SDXL - LoRA AI_Now prodigy v1.0.json")
    cfg = load_config(None, result.overrides())
    optimizers.check(cfg)
    kwargs = optimizers.optimizer_kwargs(cfg)
    assert kwargs["d0"] == 0.0001 and kwargs["decouple"] is True and kwargs["use_bias_correction"] is True


def test_sd_scripts_training_toml():
    result = read_kohya(FIXTURES / "sd-scripts-train.toml")
    assert result.values == {
        "model.base": "models/v1-5-pruned.safetensors", "lora.targets": "locon", "lora.rank": 16, "lora.alpha": 8.0,
        "lora.train_text_encoder": False, "optim.optimizer": "lion", "optim.lr": 3e-5,
        "optim.optimizer_args": ["betas=0.9,0.99", "weight_decay=0.1"], "optim.scheduler": "cosine_with_restarts",
        "optim.lr_cycles": 3, "optim.warmup_steps": 100, "optim.max_grad_norm": 1.0, "optim.steps": 2000,
        "optim.mixed_precision": "bf16", "output.save_dtype": "fp32", "optim.seed": 42,
        "optim.gradient_checkpointing": True, "optim.noise_offset": 0.05, "optim.min_snr_gamma": 5.0,
        "output.save_every": 500, "output.dir": "output/cat", "output.name": "cat", "output.sample_every": 250,
        "lora.conv_rank": 4, "lora.conv_alpha": 1.0, "output.log_with": "tensorboard", "optim.loraplus_ratio": 16.0,
        "lora.rank_dropout": 0.1,
    }
    assert [key for key, _ in result.ignored] == ["v2", "sdpa", "sample_prompts", "clip_skip", "logging_dir"]


def test_sd_scripts_dataset_toml_takes_the_first_subset():
    result = read_kohya(FIXTURES / "sd-scripts-dataset.toml")
    assert result.values == {
        "data.shuffle_captions": True, "data.keep_tokens": 1, "data.resolution": 512, "data.batch_size": 4,
        "data.buckets": True, "data.min_bucket": 256, "data.max_bucket": 1024, "data.path": "images/cat",
        "data.repeats": 10, "data.trigger": "zkw cat", "data.flip": True, "data.reg_path": "images/reg",
    }
    assert result.ignored == [
        ("general.caption_extension", "sdlora reads captions from same-stem .txt files"),
        ("datasets[0].subsets[1]", ("sdlora trains one folder (data.path); put the images in N_name subfolders "
                                    "of it instead of several subsets")),
        ("datasets[0].subsets[2].num_repeats", ("sdlora's regularization folder (data.reg_path) takes its repeats "
                                                "from N_name subfolders, balanced against the training images, "
                                                "and every other setting from the training data")),
    ]


def test_training_and_dataset_files_combine():
    result = read_kohya(FIXTURES / "sd-scripts-train.toml", FIXTURES / "sd-scripts-dataset.toml")
    cfg = load_config(None, result.overrides())
    assert (cfg.optim.optimizer, cfg.data.path, cfg.data.repeats, cfg.lora.rank) == ("lion", "images/cat", 10, 16)


def test_values_sdlora_rejects_are_reported_not_applied(tmp_path):
    path = tmp_path / "preset.json"
    path.write_text(json.dumps({"network_dim": "-4", "optimizer": "DAdaptAdam", "max_resolution": "wide",
                                "mixed_precision": "fp8", "keep_tokens": "1.5", "learning_rate": "fast"}))
    result = read_kohya(path)
    assert result.mapped == []
    reasons = dict(result.ignored)
    assert reasons["max_resolution"] == "expected a number, got 'wide'"
    assert "not available in sdlora" in reasons["optimizer"]
    assert "fp8" in reasons["mixed_precision"]
    assert "whole number" in reasons["keep_tokens"]
    assert "expected a number" in reasons["learning_rate"]
    assert "must be > 0" in reasons["network_dim"]


def test_sample_prompts_text_and_prompt_file(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\na cat --n blurry --s 20\n\na dog\n")
    path = tmp_path / "preset.json"
    path.write_text(json.dumps({"sample_prompts": str(prompts), "sample_every_n_steps": 50}))
    assert read_kohya(path).values == {"output.sample_prompts": ["a cat --n blurry --s 20", "a dog"],
                                       "output.sample_every": 50}
    path.write_text(json.dumps({"sample_prompts": "a cat\na dog --d 3"}))
    assert read_kohya(path).values == {"output.sample_prompts": ["a cat", "a dog --d 3"]}


@pytest.mark.parametrize(("name", "text", "match"), [
    ("a.yaml", "x: 1", "expected a kohya_ss GUI preset"),
    ("a.json", "{not json", "not valid JSON"),
    ("a.toml", "= broken", "not valid TOML"),
    ("a.json", "[1, 2]", "expected a mapping"),
])
def test_unreadable_files_are_config_errors(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        read_kohya(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_kohya(tmp_path / "missing.json")


def test_cli_prints_ignored_keys_and_applies_the_rest(capsys, tmp_path):
    from sdlora.cli import main

    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (64, 64), (200, 40, 90)).save(data / "img0.png")
    (data / "img0.txt").write_text("shape, red", encoding="utf-8")
    code = main(["train", "--from-kohya", str(FIXTURES / "SDXL - LoRA AI_Now prodigy v1.0.json"), "--data",
                 str(data), "--set", "data.batch_size=2", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "kohya import: 41 keys mapped, 51 ignored" in out
    assert "  ignored epoch: sdlora counts optimizer steps" in out
    assert "optimizer: prodigy" in out and "batch_size: 2" in out  # --set wins over the import


def test_zero_terminal_snr_and_lora_dropouts_map(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('zero_terminal_snr = true\nv_parameterization = true\n'
                    'network_args = ["rank_dropout=0.1", "module_dropout=0.2"]\n')
    result = read_kohya(path)
    assert result.values == {"optim.zero_terminal_snr": True, "model.prediction_type": "v_prediction",
                             "lora.rank_dropout": 0.1, "lora.module_dropout": 0.2}


def test_block_options_map_from_network_args_and_gui_keys(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('network_args = ["block_dims=0,2,4", "block_alphas=1,1,2", "conv_block_dims=0,1,1", '
                    '"down_lr_weight=sine"]\nmid_lr_weight = "0.5"\nup_lr_weight = "1,0.5"\n')
    result = read_kohya(path)
    assert result.values == {"lora.block_dims": [0, 2, 4], "lora.block_alphas": [1.0, 1.0, 2.0],
                             "lora.conv_block_dims": [0, 1, 1], "optim.mid_lr_weight": 0.5,
                             "optim.up_lr_weight": [1.0, 0.5]}
    (key, reason), = result.ignored
    assert key == "network_args.down_lr_weight" and "named lr-weight presets" in reason


# ---------------------------------------------------------------- faults found with real configs (issue 23) ---------

def _one_image(tmp_path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (64, 64), (200, 40, 90)).save(data / "img0.png")
    return data


def _file(tmp_path, name: str, content) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(content) if name.endswith(".json") else content, encoding="utf-8")
    return path


def test_gui_optimizer_args_lose_their_quotes_as_kohya_ss_strips_them(tmp_path):
    # kohya_ss: str(optimizer_args).replace('"', "").split() before the shell sees it
    gui = _file(tmp_path, "p.json", {"LoRA_type": "Standard", "optimizer": "Prodigy",
                                     "optimizer_args": '"d0=1e-5" "d_coef=1.0"'})
    result = read_kohya(gui)
    assert result.values["optim.optimizer_args"] == ["d0=1e-5", "d_coef=1.0"]
    cfg = load_config(None, result.overrides())
    optimizers.check(cfg)
    assert optimizers.optimizer_kwargs(cfg)["d0"] == 1e-5
    toml = _file(tmp_path, "t.toml", 'optimizer_args = ["d0=1e-5", "betas=0.9,0.99"]\n')  # a list: as it is
    assert read_kohya(toml).values["optim.optimizer_args"] == ["d0=1e-5", "betas=0.9,0.99"]


def test_a_refused_network_type_imports_no_network_size(tmp_path):
    gui = _file(tmp_path, "lokr.json", {"LoRA_type": "LyCORIS/LoKr", "network_dim": 100000, "network_alpha": 1,
                                        "conv_dim": 100000, "conv_alpha": 1, "learning_rate": "1e-4"})
    result = read_kohya(gui)
    assert result.values == {"optim.lr": 1e-4}
    reasons = dict(result.ignored)
    assert "LoRA type LyCORIS/LoKr" in reasons["network_dim"] and "LoRA type LyCORIS/LoKr" in reasons["conv_dim"]
    toml = _file(tmp_path, "lokr.toml", 'network_module = "lycoris.kohya"\nnetwork_dim = 100000\n'
                                        'network_args = ["algo=lokr", "conv_dim=100000"]\n')
    result = read_kohya(toml)
    assert result.values == {}
    assert "network module lycoris.kohya" in dict(result.ignored)["network_args.conv_dim"]


def test_cache_latents_to_disk_alone_caches_on_disk(tmp_path):
    # sd-scripts' verify_training_args: cache_latents_to_disk turns cache_latents on
    assert read_kohya(_file(tmp_path, "t.toml", "cache_latents_to_disk = true\n")).values == {
        "data.cache_latents": "disk"}
    assert read_kohya(_file(tmp_path, "t.toml", "cache_latents = true\ncache_latents_to_disk = false\n")
                      ).values == {"data.cache_latents": "memory"}


def test_text_encoder_lr_zero_is_read_by_each_tool_s_rule(tmp_path):
    # sd-scripts (TOML): a group with lr 0 is left out, so the text encoder is not trained
    toml = read_kohya(_file(tmp_path, "t.toml", "learning_rate = 1e-4\ntext_encoder_lr = 0\n"))
    assert toml.values == {"optim.lr": 1e-4, "lora.train_text_encoder": False}
    # kohya_ss GUI: 0 beside a UNet lr is UNet-only training; 0 with unet_lr 0 is "use learning_rate"
    unet_only = read_kohya(_file(tmp_path, "a.json", {"LoRA_type": "Standard", "text_encoder_lr": "0",
                                                      "unet_lr": "0.0001"}))
    assert unet_only.values == {"lora.targets": "sd-scripts", "optim.unet_lr": 1e-4,
                                "lora.train_text_encoder": False}
    both = read_kohya(_file(tmp_path, "b.json", {"text_encoder_lr": 0, "unet_lr": 0, "learning_rate": 1e-4}))
    assert both.values == {"optim.lr": 1e-4}
    assert "trains both parts at learning_rate" in dict(both.ignored)["text_encoder_lr"]
    te_only = read_kohya(_file(tmp_path, "c.json", {"text_encoder_lr": 5e-5, "unet_lr": 0}))
    assert "text encoder alone" in dict(te_only.ignored)["unet_lr"]


_FLUX_FINETUNE = ('[model]\npretrained_model_name_or_path = "flux1-dev.safetensors"\nclip_l = "clip_l.safetensors"\n'
                  't5xxl = "t5xxl_fp16.safetensors"\nae = "ae.safetensors"\n[training]\nlearning_rate = 3e-6\n'
                  'discrete_flow_shift = 3.1582\nmax_train_steps = 1000\n')


@pytest.mark.parametrize(("name", "content", "what"), [
    ("flux.toml", _FLUX_FINETUNE, "a FLUX.1 full fine-tune or DreamBooth config (ae, discrete_flow_shift)"),
    ("sd3.toml", ('pretrained_model_name_or_path = "sd3.safetensors"\nnetwork_module = "networks.lora_sd3"\n'
                 'network_dim = 16\n'), "a SD3 LoRA config (network_module networks.lora_sd3)"),
    ("db.toml", 'pretrained_model_name_or_path = "v1-5.safetensors"\nlearning_rate = 1e-6\n',
     "a full fine-tune or DreamBooth config (a model but no network_module, LoRA_type or network_dim)"),
    ("flux.json", {"LoRA_type": "Flux1", "flux1_checkbox": True, "network_dim": 16, "learning_rate": 1e-4},
     "a FLUX.1 LoRA config (flux1_checkbox)"),
])
def test_configs_that_are_not_sd_lora_recipes_are_refused_unless_forced(tmp_path, name, content, what):
    path = _file(tmp_path, name, content)
    with pytest.raises(ConfigError) as err:
        read_kohya(path)
    assert what in str(err.value) and "--force" in str(err.value) and "\n" not in str(err.value)
    assert read_kohya(path, force=True).mapped  # forced: its settings are imported as usual


def test_cli_refuses_a_flux_finetune_in_one_line_and_force_imports_it(capsys, tmp_path):
    from sdlora.cli import main

    path, data = _file(tmp_path, "flux.toml", _FLUX_FINETUNE), _one_image(tmp_path)
    assert main(["train", "--from-kohya", str(path), "--data", str(data), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "FLUX.1 full fine-tune" in err
    assert main(["train", "--from-kohya", str(path), "--data", str(data), "--base", "embedded", "--dry-run",
                 "--force"]) == 0
    out = capsys.readouterr().out
    assert "learning_rate -> optim.lr = 3e-06" in out and "ignored t5xxl: a FLUX.1/SD3 model file" in out


@pytest.mark.parametrize(("content", "ok"), [
    ("bucket_reso_steps = 1\n", False), ("bucket_reso_steps = 48\n", False), ("bucket_reso_steps = 32\n", True),
    ({"sdxl": False, "bucket_reso_steps": 32}, False), ({"sdxl": True, "bucket_reso_steps": 32}, True),
    ({"sdxl": False, "bucket_reso_steps": 128}, True),
])
def test_bucket_steps_sd_scripts_refuses_are_refused(tmp_path, content, ok):
    # sd-scripts: verify_bucket_reso_steps(64) in train_network.py, (32) in sdxl_train_network.py; a TOML
    # does not say which script reads it (a 32 is then left to the base check before training)
    path = _file(tmp_path, "t.toml" if isinstance(content, str) else "g.json", content)
    if ok:
        assert read_kohya(path).values["data.bucket_step"] in (32, 128)
    else:
        with pytest.raises(ConfigError, match="bucket_reso_steps .* sd-scripts refuses it"):
            read_kohya(path)


def test_cli_dry_run_fails_in_one_line_on_a_bucket_step_sd_scripts_refuses(capsys, tmp_path):
    from sdlora.cli import main

    path, data = _file(tmp_path, "t.toml", "bucket_reso_steps = 1\n"), _one_image(tmp_path)
    assert main(["train", "--from-kohya", str(path), "--data", str(data), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bucket_reso_steps = 1" in err


def test_cached_text_encoder_outputs_mean_a_frozen_text_encoder(tmp_path):
    # sd-scripts asserts network_train_unet_only when cache_text_encoder_outputs is set
    toml = read_kohya(_file(tmp_path, "t.toml", "cache_text_encoder_outputs = true\n"))
    assert toml.values == {"lora.train_text_encoder": False}
    gui = read_kohya(_file(tmp_path, "g.json", {"sdxl": True, "sdxl_cache_text_encoder_outputs": True}))
    assert gui.values == {"model.family": "sdxl", "lora.train_text_encoder": False}
    off = read_kohya(_file(tmp_path, "o.toml", "cache_text_encoder_outputs = false\n"))
    assert "sdlora caches text-encoder outputs itself" in dict(off.ignored)["cache_text_encoder_outputs"]


def test_sibling_keys_have_reasons_and_option_lines_are_not_prompts(tmp_path):
    path = _file(tmp_path, "g.json", {"sample_every_n_epochs": 1, "network_train_text_encoder_only": True,
                                      "sample_prompts": "a cat --w 512\n--n blurry, lowres\na dog"})
    result = read_kohya(path)
    reasons = dict(result.ignored)
    assert reasons["sample_every_n_epochs"] == "sdlora samples every N steps: output.sample_every"
    assert reasons["network_train_text_encoder_only"] == "training the text encoder alone is not supported by " \
                                                         "sdlora yet"
    assert result.values["output.sample_prompts"] == ["a cat --w 512", "a dog"]
    assert "options with no prompt before them" in reasons["sample_prompts line 2"]
    assert not any("unknown" in reason for reason in reasons.values())
