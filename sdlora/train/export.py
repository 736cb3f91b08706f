"""Export of a trained LoRA: sd-scripts-compatible `ss_*` + `modelspec.*` metadata, the file(s), and the
resolved config beside them. `sdlora.save_lora` writes the names, the per-module alpha and the `sshs_*` hashes.

Metadata follows docs/formats.md §2.11: every `ss_*` key sd-scripts writes that has a meaning here. A1111 and
Civitai read `ss_tag_frequency` (tag cloud), `ss_output_name` (alias) and `ss_base_model_version`.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import torch

from sdlora.errors import ConfigError
from sdlora.formats import save_lora
from sdlora.settings.config import dump_config
from sdlora.train import block_options, optimizers
from sdlora.train.checkpoint import writing

_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
_ARCH = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512", "sdxl": "stable-diffusion-xl-v1-base"}
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _base_version(family: str | None, prediction_type: str) -> str:
    if family is None:
        return "unknown"  # a custom-sized base (e.g. the embedded model): no SD family applies
    version = _VERSION[family]
    return version + "_v" if prediction_type == "v_prediction" and family != "sdxl" else version


def dora_axis(cfg) -> str:
    """The DoRA magnitude layout to train and write (docs/formats.md §2.9): per input column for Kohya files,
    which A1111, ComfyUI and LyCORIS all apply exactly; per output row for diffusers/PEFT files, the only layout
    they hold. `lora.dora_axis` other than auto chooses."""
    if cfg.lora.dora_axis != "auto":
        return cfg.lora.dora_axis
    return "out" if cfg.output.format == "diffusers" else "in"


def check(cfg) -> None:
    """A DoRA layout the chosen output cannot hold fails before anything loads."""
    if cfg.lora.dora and dora_axis(cfg) == "in" and cfg.output.format in ("diffusers", "both"):
        raise ConfigError(
            f"lora.dora_axis: per-input-column DoRA cannot be written to a diffusers file (output.format="
            f"{cfg.output.format}); PEFT/diffusers hold per-output DoRA only, which A1111 mis-applies in a Kohya "
            "file: choose output.format=kohya, or lora.dora_axis=out")


def _network_args(cfg) -> dict[str, str]:
    args = {"targets": cfg.lora.targets}
    if cfg.lora.targets in ("locon", "locon-io"):
        args.update(conv_dim=str(cfg.lora.conv_rank), conv_alpha=str(cfg.lora.conv_alpha))
    if cfg.lora.dora:  # LyCORIS' names: dora_wd, and wd_on_output for the layout (docs/formats.md §2.9)
        args.update(dora_wd="True", wd_on_output=str(dora_axis(cfg) == "out"))
    if cfg.lora.dropout:
        args["dropout"] = str(cfg.lora.dropout)
    if cfg.lora.rank_stabilized:  # LyCORIS' network argument name; the per-module alphas carry the scale
        args["rs_lora"] = "True"
    for key in ("rank_dropout", "module_dropout"):  # sd-scripts' network_args names
        if getattr(cfg.lora, key):
            args[key] = str(getattr(cfg.lora, key))
    if cfg.optim.loraplus_ratio:
        args["loraplus_lr_ratio"] = str(cfg.optim.loraplus_ratio)  # sd-scripts' network argument
    args.update(block_options.network_args(cfg))
    return args


def _modelspec(run, cfg) -> dict[str, str]:
    arch = _ARCH.get(run.family, "sdlora-custom")
    if run.family == "sd2" and run.prediction_type == "v_prediction":
        arch = "stable-diffusion-v2-768-v"
    res = cfg.data.resolution
    meta = {"modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": f"{arch}/lora",
            "modelspec.implementation": ("https://github.com/Stability-AI/generative-models"
                                         if run.family == "sdxl" else "diffusers"),
            "modelspec.title": cfg.output.name, "modelspec.resolution": f"{res}x{res}",
            "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(run.finished_at)),
            "modelspec.prediction_type": "v" if run.prediction_type == "v_prediction" else "epsilon"}
    if cfg.data.trigger:
        meta["modelspec.trigger_phrase"] = cfg.data.trigger
    return meta


def _training_keys(run, cfg) -> dict:
    o, d = cfg.optim, cfg.data
    return {
        "ss_session_id": run.session_id, "ss_training_started_at": run.started_at,
        "ss_training_finished_at": run.finished_at, "ss_output_name": cfg.output.name,
        "ss_learning_rate": o.lr, "ss_unet_lr": o.unet_lr or o.lr,
        "ss_text_encoder_lr": (o.text_encoder_lr or o.lr) if cfg.lora.train_text_encoder else 0.0,
        "ss_max_train_steps": o.steps, "ss_steps": run.step, "ss_epoch": run.epoch,
        "ss_num_epochs": run.epochs, "ss_lr_warmup_steps": o.warmup_steps, "ss_lr_scheduler": o.scheduler,
        "ss_optimizer": optimizers.describe(cfg),
        "ss_mixed_precision": o.mixed_precision, "ss_full_fp16": False, "ss_seed": o.seed,
        "ss_noise_offset": o.noise_offset or None, "ss_min_snr_gamma": o.min_snr_gamma or None,
        "ss_gradient_checkpointing": o.gradient_checkpointing, "ss_gradient_accumulation_steps": o.grad_accum,
        "ss_max_grad_norm": o.max_grad_norm, "ss_cache_latents": d.cache_latents != "off",
        "ss_caption_dropout_rate": d.caption_dropout, "ss_caption_tag_dropout_rate": d.tag_dropout,
        "ss_shuffle_caption": d.shuffle_captions, "ss_keep_tokens": d.keep_tokens, "ss_flip_aug": d.flip,
        "ss_random_crop": d.crop == "random", "ss_color_aug": False, "ss_enable_bucket": d.buckets,
        "ss_min_bucket_reso": d.min_bucket, "ss_max_bucket_reso": d.max_bucket, "ss_bucket_no_upscale": False,
        "ss_resolution": f"({d.resolution}, {d.resolution})", "ss_batch_size_per_device": d.batch_size,
        "ss_total_batch_size": d.batch_size * o.grad_accum * run.num_processes, "ss_loss_type": o.loss_type,
        "ss_training_comment": cfg.output.comment or None, "ss_clip_skip": None, "ss_prior_loss_weight": o.prior_loss_weight,
    }


def _loss_keys(cfg) -> dict:
    """sd-scripts' keys for the loss and noise options (None: not written)."""
    o = cfg.optim
    huber = o.loss_type != "l2"
    return {"ss_huber_schedule": o.huber_schedule if huber else None, "ss_huber_c": o.huber_c if huber else None,
            "ss_ip_noise_gamma": o.ip_noise_gamma or None, "ss_debiased_estimation": o.debiased_estimation,
            "ss_zero_terminal_snr": o.zero_terminal_snr,
            "ss_multires_noise_iterations": o.multires_noise_iterations or None,
            "ss_multires_noise_discount": o.multires_noise_discount if o.multires_noise_iterations else None}


def build_metadata(run, cfg, summary) -> dict[str, str]:
    """All metadata strings for the exported file. `run` is a TrainRun (family, step, times, ...)."""
    meta = {
        "ss_v2": run.family == "sd2", "ss_base_model_version": _base_version(run.family, run.prediction_type),
        "ss_network_module": "networks.lora", "ss_network_dim": cfg.lora.rank, "ss_network_alpha": cfg.lora.alpha,
        "ss_network_args": json.dumps(_network_args(cfg)), "ss_network_dropout": cfg.lora.dropout or None,
        "ss_sd_model_name": run.base_name, "ss_num_train_images": sum(f["img_count"] * f["n_repeats"] for f in summary.folders.values()),
        "ss_num_reg_images": sum(f["img_count"] * f["n_repeats"] for f in summary.reg_folders.values()),
        "ss_reg_dataset_dirs": json.dumps(summary.reg_folders), "ss_num_batches_per_epoch": run.batches_per_epoch,
        "ss_dataset_dirs": json.dumps(summary.folders), "ss_tag_frequency": json.dumps(summary.tag_frequency),
        "ss_bucket_info": json.dumps({"buckets": summary.buckets}),
        "sdlora_version": run.version,
        **_training_keys(run, cfg), **_loss_keys(cfg),
    }
    out = {k: str(v) for k, v in meta.items() if v is not None}
    out.update(_modelspec(run, cfg))
    return out


def new_session_id() -> str:
    return str(uuid.uuid4().int % 2**31)


def output_paths(cfg, stem: str | None = None) -> dict[str, Path]:
    """{format: path} of the LoRA files to write (`<name>.safetensors`, diffusers as `<name>.diffusers...`)."""
    out, stem = Path(cfg.output.dir), stem or cfg.output.name
    if cfg.output.format == "kohya":
        return {"kohya": out / f"{stem}.safetensors"}
    if cfg.output.format == "diffusers":
        return {"diffusers": out / f"{stem}.safetensors"}
    return {"kohya": out / f"{stem}.safetensors", "diffusers": out / f"{stem}.diffusers.safetensors"}


def export_lora(network, metadata: dict[str, str], cfg, stem: str | None = None, family: str | None = None
                ) -> list[Path]:
    """Write the LoRA in the configured format(s) and `<stem>.yaml` (the resolved config) beside it.

    Raises:
        TrainingError: a write failed (disk full, permissions); an existing file of that name is kept.
    """
    state = network.to_state(metadata, family=family)
    written = []
    for fmt, path in output_paths(cfg, stem).items():
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            save_lora(state, path, format=fmt, dtype=_DTYPES[cfg.output.save_dtype])
        written.append(path)
    with writing(written[0].with_suffix(".yaml")):
        dump_config(cfg, written[0].with_suffix(".yaml"))
    return written
