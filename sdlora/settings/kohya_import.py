"""Import kohya settings: a kohya_ss GUI JSON preset, an sd-scripts training TOML (`--config_file`) or an
sd-scripts dataset TOML (`[general]`, `[[datasets]]`, `[[datasets.subsets]]`), with tomllib and the config's own
checks (`sdlora.settings.config`).

Every key of the file ends up in exactly one of two lists: `mapped` (kohya key -> sdlora key and value)
or `ignored` (kohya key and the reason: not set, sdlora's behaviour already, or not supported). The
library returns both; the CLI prints one line per ignored key. The mapping is the table `_KEYS` below
(kohya key -> (sdlora key, converter)); a converter turns kohya's value into sdlora's or raises `_Skip`
with the reason. Keys with no sdlora counterpart sit in `_NOT_SUPPORTED` / `_NOT_NEEDED` with their reason.

kohya_ss GUI presets write most numbers as strings ("0.0001", "1234") and "" for "not set"; both are
accepted. GUI `lr_warmup` is a percentage of the steps; sd-scripts `lr_warmup_steps` is a step count (or,
below 1, a ratio). Epoch counts cannot become steps without the data set (kohya multiplies images x
repeats / batch size), so `epoch` / `max_train_epochs` are reported and `optim.steps` is left to the user.

The source of truth for a TOML is sd-scripts, for a GUI JSON the kohya_ss GUI (which builds sd-scripts'
command line from it); where the two read a key differently the importer has one table per source
(`_GUI_KEYS`, `_TOML_KEYS`): `text_encoder_lr = 0` in a TOML is a parameter group with lr 0, which sd-scripts
leaves out (the text encoder is not trained); in a GUI preset 0 means "not set" (`learning_rate`), and a 0
text-encoder lr beside a non-zero UNet lr selects UNet-only training (`network_train_unet_only`).

A file that is not an SD/SDXL LoRA recipe (no network module: a DreamBooth or full fine-tune; a FLUX.1, SD3 or
other model's config) is refused with a line saying what it is, unless `force=True`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlora.errors import ConfigError
from sdlora.settings.config import load_config


class _Skip(Exception):
    """Raised by a converter: the key is ignored for the reason given."""


@dataclass
class KohyaImport:
    """The result of reading kohya files: what maps onto sdlora's config, and what does not (and why)."""

    mapped: list[tuple[str, str, Any]] = field(default_factory=list)  # (kohya key, sdlora key, value)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (kohya key, reason)

    @property
    def values(self) -> dict[str, Any]:
        """sdlora key -> value (a later file's value wins)."""
        return {key: value for _, key, value in self.mapped}

    def overrides(self) -> list[str]:
        """The values as `section.key=value` overrides for `load_config` (JSON is valid YAML)."""
        return [f"{key}={json.dumps(value)}" for key, value in self.values.items()]

    def lines(self) -> list[str]:
        """One line per ignored key: `kohya key: reason`."""
        return [f"ignored {key}: {reason}" for key, reason in self.ignored]


# ---------------------------------------------------------------- value converters ---------

def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise _Skip(f"expected true or false, got {value!r}")


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise _Skip(f"expected a number, got {value!r}") from err


def _int(value: Any) -> int:
    number = _float(value)
    if number != int(number):
        raise _Skip(f"expected a whole number, got {value!r}")
    return int(number)


def _text(value: Any) -> str:
    return str(value)


def _lr_or_zero(data: dict, key: str) -> float:
    value = data.get(key)
    if value in (None, ""):
        return 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _gui_text_encoder_lr(value: Any, data: dict) -> Any:
    """kohya_ss GUI: 0 is "not set" (sd-scripts then uses learning_rate), except that a 0 text-encoder lr
    beside a non-zero UNet lr makes the GUI pass network_train_unet_only: the text encoder is not trained."""
    lr = _float(value)
    if lr != 0:
        return lr
    if _lr_or_zero(data, "unet_lr") != 0:
        return _NOT_TRAINED
    raise _Skip("0 with unet_lr 0: kohya_ss trains both parts at learning_rate")


def _gui_unet_lr(value: Any, data: dict) -> float:
    lr = _float(value)
    if lr != 0:
        return lr
    if _lr_or_zero(data, "text_encoder_lr") != 0:
        raise _Skip("0 beside a text_encoder_lr: kohya_ss trains the text encoder alone, which sdlora does not "
                    "(the UNet trains at learning_rate)")
    raise _Skip("0 means 'use learning_rate' in kohya_ss")


def _toml_text_encoder_lr(value: Any, data: dict) -> Any:
    """sd-scripts: a parameter group whose lr is 0 is left out of the optimizer: the text encoder is not
    trained (networks/lora.py prepare_optimizer_params)."""
    lr = _float(value[0] if isinstance(value, list) and value else value)
    return _NOT_TRAINED if lr == 0 else lr


def _toml_unet_lr(value: Any, data: dict) -> float:
    lr = _float(value)
    if lr == 0:
        raise _Skip("0: sd-scripts trains no UNet LoRA then (the text encoder alone), which sdlora does not")
    return lr


class _NotTrained:
    """A text-encoder lr that means "do not train the text encoder": maps onto lora.train_text_encoder."""


_NOT_TRAINED = _NotTrained()


def _resolution(value: Any) -> int:
    """"512,512" / "512" / [512, 768] -> one side: sdlora keeps about side x side pixels per bucket."""
    parts = value if isinstance(value, (list, tuple)) else str(value).replace("x", ",").split(",")
    sides = [_int(p) for p in parts if str(p).strip()]
    if not sides:
        raise _Skip(f"cannot read a resolution from {value!r}")
    side = round(math.sqrt(sides[0] * sides[-1]) / 8) * 8  # same area; the VAE needs multiples of 8
    return side


_OPTIMIZERS = {"adamw": "adamw", "adamw8bit": "adamw8bit", "prodigy": "prodigy", "lion": "lion",
               "adamwschedulefree": "adamw_schedulefree", "adamw_schedulefree": "adamw_schedulefree",
               "adafactor": "adafactor", "transformers.optimization.adafactor": "adafactor",
               "bitsandbytes.optim.adamw8bit": "adamw8bit", "torch.optim.adamw": "adamw",
               "prodigyopt.prodigy": "prodigy", "lion_pytorch.lion": "lion",
               "schedulefree.adamwschedulefree": "adamw_schedulefree"}


def _optimizer(value: Any) -> str:
    name = str(value).strip().lower()
    if name not in _OPTIMIZERS:
        raise _Skip(f"optimizer {value} is not available in sdlora (adamw, adamw8bit, prodigy, lion, "
                    "adamw_schedulefree, adafactor)")
    return _OPTIMIZERS[name]


def _optimizer_args(value: Any) -> list[str]:
    """GUI: one string "weight_decay=0.01 decouple=True", which kohya_ss strips of double quotes and splits
    on spaces before handing it to sd-scripts (so `"d0=1e-5" "d_coef=1.0"` is d0=1e-5, d_coef=1.0); sd-scripts:
    a list of "key=value" strings, used as they are."""
    items = value if isinstance(value, list) else str(value).replace('"', "").split()
    return [str(item) for item in items]


_SCHEDULES = {"constant", "constant_with_warmup", "cosine", "linear", "cosine_with_restarts", "polynomial"}


def _scheduler(value: Any) -> str:
    name = str(value).strip().lower()
    if name == "adafactor":
        raise _Skip("kohya's adafactor schedule is Adafactor's relative step (it derives its own step size); "
                    "sdlora drives Adafactor with optim.lr and a schedule (constant by default)")
    if name not in _SCHEDULES:
        raise _Skip(f"schedule {value} is not available in sdlora ({', '.join(sorted(_SCHEDULES))})")
    return name


def _precision(value: Any) -> str:
    name = str(value).strip().lower()
    if name in ("no", "fp16", "bf16"):
        return name
    raise _Skip(f"mixed precision {value} is not available (no, fp16, bf16)")


def _save_dtype(value: Any) -> str:
    names = {"fp16": "fp16", "bf16": "bf16", "float": "fp32", "fp32": "fp32"}
    name = str(value).strip().lower()
    if name not in names:
        raise _Skip(f"save precision {value} is not available (fp16, bf16, float)")
    return names[name]


def _prompts(value: Any) -> list[str]:
    """GUI: the prompts as text, one per line (kohya's `--n`, `--s`, ... options included); a .txt path is
    read when it exists."""
    if isinstance(value, list):
        lines = [str(v) for v in value]
    else:
        text = str(value)
        path = Path(text.strip())
        if "\n" not in text and path.suffix.lower() in (".txt", ".toml", ".json"):
            if path.suffix.lower() != ".txt" or not path.is_file():
                raise _Skip(f"a prompt file ({text.strip()}): sdlora reads prompts from output.sample_prompts; "
                            "copy them there")
            text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")
               and not _options_only(line)]
    if not prompts:
        raise _Skip("no prompts")
    return prompts


def _options_only(line: str) -> bool:
    """A line of kohya prompt options with no prompt before them (`--n lowres`): sd-scripts would render
    the text itself as a prompt; it is reported instead (see `_prompt_lines_left_out`)."""
    return line.strip().startswith("--")


def _prompt_lines_left_out(key: str, value: Any) -> list[tuple[str, str]]:
    if key != "sample_prompts" or not isinstance(value, str) or "\n" not in value:
        return []
    return [(f"{key} line {i}", _OPTIONS_LINE) for i, line in enumerate(value.splitlines(), 1) if _options_only(line)]


_OPTIONS_LINE = ("options with no prompt before them (kohya would render this text as a prompt of its own): put the "
                 "options after their prompt on one line")


# ----------------------------------------------------------- converters needing the whole file ---------

def _cache_latents(value: Any, data: dict) -> str:
    """sd-scripts: cache_latents_to_disk turns cache_latents on (train_util.verify_training_args)."""
    if _bool(data.get("cache_latents_to_disk") or False):
        return "disk"
    return "memory" if _bool(data.get("cache_latents") or False) else "off"


def _max_token_length(value: Any) -> int:
    length = _int(value)
    if length not in (75, 150, 225):
        raise _Skip(f"max_token_length {length}: sd-scripts takes 75, 150 or 225")
    return length


def _lora_type(value: Any, data: dict) -> str:
    kind = str(value).strip()
    if kind == "Standard":
        return "sd-scripts"  # networks.lora: transformer linears + 1x1 convs, text-encoder attention + MLP
    if kind in ("Kohya LoCon", "LoCon", "LyCORIS/LoCon"):
        return "locon"
    raise _Skip(f"LoRA type {kind} is not trained by sdlora (LoRA, LoCon)")


def _network_module(value: Any, data: dict) -> str:
    if str(value).strip() != "networks.lora":
        raise _Skip(f"network module {value} is not trained by sdlora (networks.lora)")
    has_conv = "network_args.conv_dim" in data or "conv_dim" in _network_args_dict(data.get("network_args") or [])
    return "locon" if has_conv else "sd-scripts"  # sd-scripts' conv_dim adds 3x3 convs: LoCon


def _network_args_dict(items: Any) -> dict[str, str]:
    """kohya's ["key=value", ...] (or one space-separated string) as a dict of strings."""
    items = items if isinstance(items, list) else str(items).split()
    return dict(str(item).partition("=")[::2] for item in items)


def _conv(value: Any, data: dict) -> Any:
    if str(data.get("LoRA_type", "")).strip() == "Standard":
        raise _Skip("only used by LoCon; LoRA_type Standard trains no 3x3 convolutions")
    return value


def _conv_rank(value: Any, data: dict) -> int:
    return _int(_conv(value, data))


def _conv_alpha(value: Any, data: dict) -> float:
    return _float(_conv(value, data))


def _steps_known(data: dict) -> int | None:
    steps = data.get("max_train_steps")
    return _int(steps) if steps not in (None, "", 0, "0") else None


def _warmup_percent(value: Any, data: dict) -> int:
    percent = _float(value)
    if percent == 0:
        return 0
    steps = _steps_known(data)
    if steps is None:
        raise _Skip(f"{percent}% of the steps, but the file gives no max_train_steps; set optim.warmup_steps")
    return round(steps * percent / 100)


def _warmup_steps(value: Any, data: dict) -> int:
    number = _float(value)
    if 0 < number < 1:  # sd-scripts: a ratio of the steps
        steps = _steps_known(data)
        if steps is None:
            raise _Skip(f"a ratio ({number}) of the steps, but the file gives no max_train_steps")
        return round(steps * number)
    return _int(number)


def _use_8bit_adam(value: Any, data: dict) -> str:
    if not _bool(value):
        raise _Skip("false: AdamW unless an optimizer key says otherwise")
    return "adamw8bit"


def _log_with(value: Any, data: dict) -> str:
    name = str(value).strip().lower()
    if name not in ("tensorboard", "wandb"):
        raise _Skip(f"tracker {value} is not available (tensorboard, wandb)")
    return name


def _use_wandb(value: Any, data: dict) -> str:
    if not _bool(value):
        raise _Skip("false: output.log_with decides (TensorBoard when it is installed)")
    return "wandb"


def _v2(value: Any, data: dict) -> str:
    if not _bool(value):
        raise _Skip("false: sdlora detects the family from the model (model.family when it cannot)")
    return "sd2"


def _sdxl(value: Any, data: dict) -> str:
    if not _bool(value):
        raise _Skip("false: sdlora detects the family from the model (model.family when it cannot)")
    return "sdxl"


def _v_prediction(value: Any, data: dict) -> str:
    if not _bool(value):
        raise _Skip("false: the model's own prediction type is used")
    return "v_prediction"


def _unet_only(value: Any, data: dict) -> bool:
    if not _bool(value):
        raise _Skip("false: sdlora trains the text encoder too (lora.train_text_encoder, the default)")
    return False


def _numbers(convert: Callable[[Any], Any]) -> Callable[[Any, dict], list]:
    """sd-scripts' comma-separated per-block values ("2,4,4,...") or a list, each converted."""
    def parse(value: Any, data: dict) -> list:
        parts = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
        try:
            return [convert(part.strip() if isinstance(part, str) else part) for part in parts]
        except _Skip:
            raise _Skip(f"expected comma-separated numbers, got {value!r} (kohya's named lr-weight presets such "
                        "as sine or cosine are not supported: give the numbers)") from None
    return parse


def _crop(value: Any, data: dict) -> str:
    return "random" if _bool(value) else "center"


def _cache_text_outputs(value: Any, data: dict) -> bool:
    """sd-scripts asserts network_train_unet_only when text-encoder outputs are cached (they are fixed only
    while the text encoder is frozen), so `true` means a frozen text encoder; sdlora then caches them itself
    (data.cache_text)."""
    if not _bool(value):
        raise _Skip("false: sdlora caches text-encoder outputs itself when they are fixed (data.cache_text)")
    return False


# sd-scripts' verify_bucket_reso_steps: SD1/SD2 (train_network.py) need multiples of 64, SDXL
# (sdxl_train_network.py) of 32; a TOML does not say which script runs it, the GUI's `sdxl` key does
_BUCKET_STEP = {"sdxl": 32, "sd": 64}


def _bucket_step(value: Any, data: dict) -> int:
    step = _int(value)
    gui_sd = "sdxl" in data and not _bool(data.get("sdxl") or False)
    need = _BUCKET_STEP["sd"] if gui_sd else _BUCKET_STEP["sdxl"]
    if step <= 0 or step % need:
        raise ConfigError(f"bucket_reso_steps = {value}: sd-scripts refuses it (it must be a multiple of 64 for "
                          "SD1/SD2, of 32 for SDXL); fix the kohya file or set data.bucket_step after importing")
    return step


def _plain(convert: Callable[[Any], Any]) -> Callable[[Any, dict], Any]:
    return lambda value, data: convert(value)


# kohya key (GUI JSON and sd-scripts TOML) -> (sdlora key, converter(value, whole file))
_KEYS: dict[str, tuple[str, Callable[[Any, dict], Any]]] = {
    "pretrained_model_name_or_path": ("model.base", _plain(_text)),
    "v2": ("model.family", _v2),
    "sdxl": ("model.family", _sdxl),
    "v_parameterization": ("model.prediction_type", _v_prediction),
    "train_data_dir": ("data.path", _plain(_text)),
    "reg_data_dir": ("data.reg_path", _plain(_text)),
    "prior_loss_weight": ("optim.prior_loss_weight", _plain(_float)),
    "max_resolution": ("data.resolution", _plain(_resolution)),
    "resolution": ("data.resolution", _plain(_resolution)),
    "enable_bucket": ("data.buckets", _plain(_bool)),
    "min_bucket_reso": ("data.min_bucket", _plain(_int)),
    "max_bucket_reso": ("data.max_bucket", _plain(_int)),
    "bucket_reso_steps": ("data.bucket_step", _bucket_step),
    "random_crop": ("data.crop", _crop),
    "flip_aug": ("data.flip", _plain(_bool)),
    "shuffle_caption": ("data.shuffle_captions", _plain(_bool)),
    "keep_tokens": ("data.keep_tokens", _plain(_int)),
    "caption_dropout_rate": ("data.caption_dropout", _plain(_float)),
    "max_token_length": ("data.max_token_length", _plain(_max_token_length)),
    "alpha_mask": ("data.alpha_mask", _plain(_bool)),
    "conditioning_data_dir": ("data.mask_path", _plain(_text)),
    "caption_tag_dropout_rate": ("data.tag_dropout", _plain(_float)),
    "train_batch_size": ("data.batch_size", _plain(_int)),
    "batch_size": ("data.batch_size", _plain(_int)),
    "cache_latents": ("data.cache_latents", _cache_latents),
    "cache_latents_to_disk": ("data.cache_latents", _cache_latents),
    "LoRA_type": ("lora.targets", _lora_type),
    "network_module": ("lora.targets", _network_module),
    "network_dim": ("lora.rank", _plain(_int)),
    "network_alpha": ("lora.alpha", _plain(_float)),
    "conv_dim": ("lora.conv_rank", _conv_rank),
    "conv_alpha": ("lora.conv_alpha", _conv_alpha),
    "network_train_unet_only": ("lora.train_text_encoder", _unet_only),
    "max_train_steps": ("optim.steps", _plain(_int)),
    "learning_rate": ("optim.lr", _plain(_float)),
    "cache_text_encoder_outputs": ("lora.train_text_encoder", _cache_text_outputs),
    "optimizer": ("optim.optimizer", _plain(_optimizer)),
    "optimizer_type": ("optim.optimizer", _plain(_optimizer)),
    "use_8bit_adam": ("optim.optimizer", _use_8bit_adam),
    "optimizer_args": ("optim.optimizer_args", _plain(_optimizer_args)),
    "lr_scheduler": ("optim.scheduler", _plain(_scheduler)),
    "lr_scheduler_num_cycles": ("optim.lr_cycles", _plain(_int)),
    "lr_scheduler_power": ("optim.lr_power", _plain(_float)),
    "lr_warmup": ("optim.warmup_steps", _warmup_percent),
    "lr_warmup_steps": ("optim.warmup_steps", _warmup_steps),
    "gradient_accumulation_steps": ("optim.grad_accum", _plain(_int)),
    "max_grad_norm": ("optim.max_grad_norm", _plain(_float)),
    "mixed_precision": ("optim.mixed_precision", _plain(_precision)),
    "gradient_checkpointing": ("optim.gradient_checkpointing", _plain(_bool)),
    "fp8_base": ("optim.fp8_base", _plain(_bool)),
    "fused_backward_pass": ("optim.fused_backward", _plain(_bool)),
    "noise_offset": ("optim.noise_offset", _plain(_float)),
    "min_snr_gamma": ("optim.min_snr_gamma", _plain(_float)),
    "min_timestep": ("optim.min_timestep", _plain(_int)),
    "max_timestep": ("optim.max_timestep", _plain(_int)),
    "loss_type": ("optim.loss_type", _plain(_text)),
    "huber_schedule": ("optim.huber_schedule", _plain(_text)),
    "huber_c": ("optim.huber_c", _plain(_float)),
    "ip_noise_gamma": ("optim.ip_noise_gamma", _plain(_float)),
    "multires_noise_iterations": ("optim.multires_noise_iterations", _plain(_int)),
    "multires_noise_discount": ("optim.multires_noise_discount", _plain(_float)),
    "debiased_estimation_loss": ("optim.debiased_estimation", _plain(_bool)),
    "seed": ("optim.seed", _plain(_int)),
    "output_dir": ("output.dir", _plain(_text)),
    "output_name": ("output.name", _plain(_text)),
    "save_precision": ("output.save_dtype", _plain(_save_dtype)),
    "save_every_n_steps": ("output.save_every", _plain(_int)),
    "sample_every_n_steps": ("output.sample_every", _plain(_int)),
    "sample_prompts": ("output.sample_prompts", _plain(_prompts)),
    "training_comment": ("output.comment", _plain(_text)),
    "log_with": ("output.log_with", _log_with),
    "use_wandb": ("output.log_with", _use_wandb),
    # sd-scripts' network_args, one entry per argument (see _expand_network_args)
    "network_args.conv_dim": ("lora.conv_rank", _plain(_int)),
    "network_args.conv_alpha": ("lora.conv_alpha", _plain(_float)),
    "network_args.loraplus_lr_ratio": ("optim.loraplus_ratio", _plain(_float)),
    "loraplus_lr_ratio": ("optim.loraplus_ratio", _plain(_float)),
    "zero_terminal_snr": ("optim.zero_terminal_snr", _plain(_bool)),
    **{f"{prefix}{key}": (target, convert) for prefix in ("", "network_args.") for key, (target, convert) in {
        "block_dims": ("lora.block_dims", _numbers(_int)), "block_alphas": ("lora.block_alphas", _numbers(_float)),
        "conv_block_dims": ("lora.conv_block_dims", _numbers(_int)),
        "conv_block_alphas": ("lora.conv_block_alphas", _numbers(_float)),
        "down_lr_weight": ("optim.down_lr_weight", _numbers(_float)),
        "mid_lr_weight": ("optim.mid_lr_weight", _plain(_float)),
        "up_lr_weight": ("optim.up_lr_weight", _numbers(_float))}.items()},
    "network_args.rank_dropout": ("lora.rank_dropout", _plain(_float)),
    "network_args.module_dropout": ("lora.module_dropout", _plain(_float)),
    "rank_dropout": ("lora.rank_dropout", _plain(_float)),  # the kohya_ss GUI's spelling
    "module_dropout": ("lora.module_dropout", _plain(_float)),
}

def _gui_cache_text(value: Any, data: dict) -> bool:
    """kohya_ss passes cache_text_encoder_outputs to sd-scripts only for an SDXL preset."""
    if not _bool(data.get("sdxl") or False):
        raise _Skip("only used for SDXL; this preset is not SDXL")
    return _cache_text_outputs(value, data)


# where sd-scripts and the kohya_ss GUI read a key differently (see the module docstring)
_TOML_KEYS = {**_KEYS, "text_encoder_lr": ("optim.text_encoder_lr", _toml_text_encoder_lr),
              "unet_lr": ("optim.unet_lr", _toml_unet_lr)}
_GUI_KEYS = {**_KEYS, "text_encoder_lr": ("optim.text_encoder_lr", _gui_text_encoder_lr),
             "unet_lr": ("optim.unet_lr", _gui_unet_lr),
             "sdxl_cache_text_encoder_outputs": ("lora.train_text_encoder", _gui_cache_text)}
_SOURCES = {"toml": _TOML_KEYS, "gui": _GUI_KEYS}

_LATER = "not supported by sdlora yet"
# options sdlora does not have: kohya key -> (values that mean "off", what the option does)
_NOT_SUPPORTED: dict[str, tuple[tuple, str]] = {
    "clip_skip": ((1, "1", 0, "0"), "clip skip is " + _LATER),
    "color_aug": ((False,), "colour augmentation is " + _LATER),
    "bucket_no_upscale": ((False,), "sdlora scales every image to cover its bucket (no upscale option)"),
    "caption_dropout_every_n_epochs": ((0, 0.0, "0"), "caption dropout every N epochs is " + _LATER),
    "network_dropout": ((0, 0.0, "0"), ("kohya drops the LoRA's hidden units; sdlora's lora.dropout drops its "
                                        "input (not the same), so it is not set from this")),
    "scale_weight_norms": ((0, 0.0, "0"), "max-norm regularization (scale_weight_norms) is " + _LATER),
    "adaptive_noise_scale": ((0, 0.0, "0"), "adaptive noise scale is " + _LATER),
    "noise_offset_type": (("Original",), "only kohya's Original noise offset exists in sdlora"),
    "scale_v_pred_loss_like_noise_pred": ((False,), "v-prediction loss scaling is " + _LATER),
    "stop_text_encoder_training": ((0, "0"), "stopping text-encoder training early is " + _LATER),
    "stop_text_encoder_training_pct": ((0, "0"), "stopping text-encoder training early is " + _LATER),
    "weighted_captions": ((False,), "weighted captions are " + _LATER),
    "no_token_padding": ((False,), "unpadded tokens are " + _LATER),
    "full_fp16": ((False,), "sdlora keeps LoRA parameters in float32 (optim.mixed_precision autocasts)"),
    "full_bf16": ((False,), "sdlora keeps LoRA parameters in float32 (optim.mixed_precision autocasts)"),
    "lora_network_weights": (("",), "starting from an existing LoRA file is " + _LATER),
    "loraplus_unet_lr_ratio": ((0, 0.0, "0"), "separate LoRA+ ratios are " + _LATER + " (optim.loraplus_ratio "
                               "applies to both parts)"),
    "loraplus_text_encoder_lr_ratio": ((0, 0.0, "0"), "separate LoRA+ ratios are " + _LATER + " (optim."
                                       "loraplus_ratio applies to both parts)"),
    "dim_from_weights": ((False,), "starting from an existing LoRA file is " + _LATER),
    "network_train_text_encoder_only": ((False,), "training the text encoder alone is " + _LATER),
}

# kohya options with no counterpart because sdlora decides them itself: kohya key -> reason
_NOT_NEEDED: dict[str, str] = {
    "epoch": "sdlora counts optimizer steps: set optim.steps (epochs x images x repeats / batch size)",
    "max_train_epochs": "sdlora counts optimizer steps: set optim.steps (epochs x images x repeats / batch size)",
    "save_every_n_epochs": "sdlora saves every N steps: output.save_every",
    "save_last_n_steps": "sdlora keeps the newest output.keep_last checkpoints",
    "save_last_n_steps_state": "sdlora keeps the newest output.keep_last checkpoints",
    "save_state": "sdlora's checkpoints (output.save_every) always hold the optimizer state",
    "resume": "resume with sdlora train --resume",
    "save_model_as": "sdlora writes .safetensors (output.format chooses the key layout)",
    "caption_extension": "sdlora reads captions from same-stem .txt files",
    "logging_dir": "sdlora's trackers write into <output.dir>/logs",
    "log_prefix": "sdlora's trackers name the run output.name",
    "log_tracker_name": "sdlora's trackers name the run output.name",
    "wandb_api_key": "never imported: a secret does not belong in a config (set WANDB_API_KEY instead)",
    "xformers": "sdlora uses PyTorch's scaled-dot-product attention",
    "mem_eff_attn": "sdlora uses PyTorch's scaled-dot-product attention",
    "sdpa": "sdlora uses PyTorch's scaled-dot-product attention",
    "num_cpu_threads_per_process": "accelerate launch option, not a training setting",
    "max_data_loader_n_workers": "sdlora loads images in the training process",
    "persistent_data_loader_workers": "sdlora loads images in the training process",
    "vae_batch_size": "sdlora encodes latents one image at a time",
    "sample_every_n_epochs": "sdlora samples every N steps: output.sample_every",
    "sdxl_no_half_vae": "sdlora always runs the VAE in float32",
    "model_list": "kohya_ss GUI's model menu",
    "additional_parameters": "free-form command-line text is not parsed; set its options with --set",
    "sample_sampler": "sdlora samples with DDIM",
    "masked_loss": "sdlora trains masked whenever masks are given: data.alpha_mask (mapped from alpha_mask) or "
                   "data.mask_path (mapped from a subset's conditioning_data_dir)",
    "unit": "LyCORIS option", "factor": "LyCORIS option", "decompose_both": "LyCORIS option",
    "use_cp": "LyCORIS option", "train_on_input": "LyCORIS option",
}
# block_dims, down_lr_weight, ... map (see _KEYS); these do not
_BLOCK_KEYS = ("block_lr_zero_threshold", "conv_alphas", "conv_dims")


def _classify(key: str, value: Any, data: dict, keys: dict) -> tuple[str, Any] | str:
    """(sdlora key, value) for a mapped key, or the reason it is ignored."""
    if value is None or (isinstance(value, str) and not value.strip()) or value == []:
        return "not set (empty)"
    if key in keys:
        target, convert = keys[key]
        try:
            converted = convert(value, data)
        except _Skip as skip:
            return str(skip)
        return ("lora.train_text_encoder", False) if converted is _NOT_TRAINED else (target, converted)
    return _ignore_reason(key, value)


def _ignore_reason(key: str, value: Any) -> str:
    if key in _NOT_SUPPORTED:
        off, what = _NOT_SUPPORTED[key]
        return f"{value!r} is sdlora's behaviour" if value in off else what
    if key in _BLOCK_KEYS:
        return "this per-block option is " + _LATER
    if key.startswith("network_args."):
        return "this network argument is " + _LATER
    return _NOT_NEEDED.get(key, "unknown to sdlora's kohya importer")


def _lr_meaningless(data: dict) -> str | None:
    """Why the file's learning rates must not be imported, or None. kohya runs Adafactor with
    relative_step=True unless its optimizer_args say otherwise: the lr (often 1.0) is then ignored, while
    sdlora's Adafactor would take it literally."""
    name = data.get("optimizer") or data.get("optimizer_type") or ""
    if str(name).strip().lower() not in ("adafactor", "transformers.optimization.adafactor"):
        return None
    args = {k.strip(): v.strip().lower() for k, v in _network_args_dict(data.get("optimizer_args") or []).items()}
    if args.get("relative_step") == "false":
        return None
    return ("kohya runs Adafactor with relative_step=True here (it derives its own step size and ignores "
            "this lr); sdlora's Adafactor uses optim.lr literally: set one yourself (e.g. 1e-4)")


_LR_KEYS = ("learning_rate", "unet_lr", "text_encoder_lr")


def _check_value(target: str, value: Any) -> str | None:
    """The ConfigError sdlora's config would raise for this value, or None."""
    try:
        load_config(None, [f"{target}={json.dumps(value)}"])
    except ConfigError as err:
        return str(err).split(": ", 2)[-1]
    return None


def _expand_network_args(data: dict) -> dict:
    """sd-scripts' `network_args = ["conv_dim=4", "conv_alpha=1"]` as keys `network_args.conv_dim`, ... so that
    each argument is mapped or ignored on its own."""
    if not data.get("network_args"):
        return data
    expanded = {k: v for k, v in data.items() if k != "network_args"}
    for name, value in _network_args_dict(data["network_args"]).items():
        expanded[f"network_args.{name}"] = value
    return expanded


# the size of the network: meaningless for a network type sdlora does not train (LoKr's "do not decompose"
# network_dim of 100000 would become a LoRA rank)
_NETWORK_SIZE_KEYS = ("network_dim", "network_alpha", "conv_dim", "conv_alpha")
_TRAINED_TYPES = ("Standard", "Kohya LoCon", "LoCon", "LyCORIS/LoCon")


def _refused_network(data: dict) -> str | None:
    """The network type the file trains when sdlora does not train it (LoHa, LoKr, DyLoRA, ...), or None."""
    kind = str(data.get("LoRA_type") or "").strip()
    if kind and kind not in _TRAINED_TYPES:
        return f"LoRA type {kind}"
    module = str(data.get("network_module") or "").strip()
    if module and module != "networks.lora":
        return f"network module {module}"
    return None


def _override(key: str, outcome: tuple[str, Any] | str, no_lr: str | None, refused: str | None):
    """A mapped outcome that the rest of the file voids: an lr Adafactor ignores, or the size of a network
    type sdlora does not train."""
    if not isinstance(outcome, tuple):
        return outcome
    if no_lr and key in _LR_KEYS and outcome[0] != "lora.train_text_encoder":
        return no_lr
    if refused and (key in _NETWORK_SIZE_KEYS or key.startswith("network_args.")):
        return f"belongs to the {refused}, which sdlora does not train (LoRA, LoCon): set lora.rank yourself"
    return outcome


def map_settings(data: dict, result: KohyaImport | None = None, prefix: str = "",
                 source: str = "toml") -> KohyaImport:
    """Sort the flat kohya `data` (key -> value) into `result.mapped` / `result.ignored`.

    `source` is "toml" (sd-scripts reads the file) or "gui" (a kohya_ss GUI preset): see `_SOURCES`."""
    result = result if result is not None else KohyaImport()
    data = _expand_network_args(data)
    no_lr, refused, keys = _lr_meaningless(data), _refused_network(data), _SOURCES[source]
    for key, value in data.items():
        result.ignored.extend((prefix + k, reason) for k, reason in _prompt_lines_left_out(key, value))
        outcome = _override(key, _classify(key, value, data, keys), no_lr, refused)
        if isinstance(outcome, tuple):
            error = _check_value(*outcome)
            if error is None:
                result.mapped.append((prefix + key, *outcome))
                continue
            outcome = error
        result.ignored.append((prefix + key, outcome))
    return result


# ------------------------------------------------------------------ dataset TOML ---------

def _map_subset(subset: dict, where: str, result: KohyaImport) -> None:
    """The first subset: its folder, repeats and class tokens become data.path, data.repeats, data.trigger."""
    for key, value in subset.items():
        name = f"{where}.{key}"
        if key == "image_dir":
            result.mapped.append((name, "data.path", str(value)))
        elif key == "num_repeats":
            result.mapped.append((name, "data.repeats", _int(value)))
        elif key == "class_tokens":
            result.mapped.append((name, "data.trigger", str(value)))
        elif key == "is_reg" and value:
            result.ignored.append((name, _FIRST_IS_REG))
        else:
            map_settings({key: value}, result, f"{where}.")


_FIRST_IS_REG = ("the first subset is trained as the data set (data.path); sdlora takes regularization images "
                 "from a later is_reg subset")
_REG_SETTING = ("sdlora's regularization folder (data.reg_path) takes its repeats from N_name subfolders, "
                "balanced against the training images, and every other setting from the training data")
_ONE_REG_FOLDER = ("sdlora reads one regularization folder (data.reg_path); put the images in N_name subfolders "
                   "of it instead of several subsets")


def _map_reg_subset(subset: dict, where: str, result: KohyaImport) -> None:
    """The first is_reg subset: its folder becomes data.reg_path."""
    for key, value in subset.items():
        if key == "image_dir":
            result.mapped.append((f"{where}.{key}", "data.reg_path", str(value)))
        elif key != "is_reg":
            result.ignored.append((f"{where}.{key}", _REG_SETTING))


_ONE_FOLDER = ("sdlora trains one folder (data.path); put the images in N_name subfolders of it instead of "
               "several subsets")


def _map_datasets(doc: dict, result: KohyaImport) -> None:
    map_settings(doc.get("general", {}), result, "general.")
    for i, dataset in enumerate(doc.get("datasets", [])):
        for key, value in dataset.items():
            if key != "subsets":
                map_settings({key: value}, result, f"datasets[{i}].")
        for j, subset in enumerate(dataset.get("subsets", [])):
            where = f"datasets[{i}].subsets[{j}]"
            if i == 0 and j == 0:
                _map_subset(subset, where, result)
            elif subset.get("is_reg") and not any(target == "data.reg_path" for _, target, _ in result.mapped):
                _map_reg_subset(subset, where, result)
            else:
                result.ignored.append((where, _ONE_REG_FOLDER if subset.get("is_reg") else _ONE_FOLDER))


def _flatten_training(doc: dict) -> dict:
    """sd-scripts reads a training TOML with its tables flattened ([model_arguments] etc. are only groups)."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


# ------------------------------------------------------------------ what the file trains ---------

# keys that only another model family's scripts read (sd-scripts' flux_train*.py, sd3_train*.py, ...) and the
# kohya_ss GUI's model switches; a network module of another family says the same
_FAMILY_SIGNS = (
    ("FLUX.1", ("ae", "discrete_flow_shift", "flux1_checkbox", "t5xxl_max_token_length", "guidance_scale",
                "apply_t5_attn_mask"), "lora_flux"),
    ("SD3", ("sd3_checkbox", "clip_g", "weighting_scheme"), "lora_sd3"),
    ("Lumina", ("lumina_checkbox", "gemma2"), "lora_lumina"),
    ("HunyuanImage", ("hunyuan_image_checkbox",), "lora_hunyuan"),
    ("Anima", ("anima_checkbox",), "lora_anima"),
)
_FORCE = "sdlora imports SD1/SD2/SDXL LoRA recipes only; pass --force (force=True) to import its settings anyway"
# other model families' settings (read only with --force: see _FAMILY_SIGNS)
_NOT_NEEDED.update({key: f"a {family} setting; sdlora trains SD1/SD2/SDXL" for family, keys, _ in _FAMILY_SIGNS
                    for key in keys})
_NOT_NEEDED.update({"clip_l": "a FLUX.1/SD3 model file; sdlora trains SD1/SD2/SDXL",
                    "t5xxl": "a FLUX.1/SD3 model file; sdlora trains SD1/SD2/SDXL"})


def _set(value: Any) -> bool:
    """A key that is given and not off ("", false, 0, [])."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0")
    return bool(value)


def _other_family(data: dict) -> tuple[str, list[str]] | None:
    module = str(data.get("network_module") or "")
    for family, keys, module_name in _FAMILY_SIGNS:
        found = [key for key in keys if _set(data.get(key))]
        if module.endswith(module_name):
            found.insert(0, f"network_module {module}")
        if found:
            return family, found
    return None


_NETWORK_KEYS = ("network_module", "LoRA_type", "network_dim", "network_alpha", "network_args")


def _is_full_training(data: dict) -> bool:
    """A training config that names its model but no network: sd-scripts trains a network only with
    network_module (train_network.py) and a kohya_ss LoRA preset has LoRA_type (early ones network_dim), so this
    is a DreamBooth or full fine-tune (train_db.py, fine_tune.py). A file of settings without a model (a partial
    config) is not judged."""
    return _set(data.get("pretrained_model_name_or_path")) and not any(key in data for key in _NETWORK_KEYS)


def _recipe_problem(data: dict) -> str | None:
    """What the file is, when it is not an SD/SDXL LoRA recipe; None when it is."""
    other = _other_family(data)
    kind = "full fine-tune or DreamBooth" if _is_full_training(data) else "LoRA"
    if other is not None:
        family, signs = other
        return f"a {family} {kind} config ({', '.join(signs)})"
    if kind != "LoRA":
        return f"a {kind} config (a model but no network_module, LoRA_type or network_dim)"
    return None


# ------------------------------------------------------------------ files ---------

def _read(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read kohya file ({err.strerror})") from err
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err}); expected a kohya_ss GUI preset") from err
    elif path.suffix.lower() == ".toml":
        doc = _read_toml(path, text)
    else:
        raise ConfigError(f"{path}: expected a kohya_ss GUI preset (.json) or an sd-scripts config (.toml)")
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(doc).__name__}")
    return doc


def _read_toml(path: Path, text: str) -> dict:
    try:
        import tomllib
    except ImportError as err:  # Python 3.10
        raise ConfigError(f"{path}: reading TOML needs Python 3.11 or newer; convert it to JSON") from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err


def read_kohya(*paths: str | Path, force: bool = False) -> KohyaImport:
    """Map kohya files (later ones win) onto sdlora's config keys.

    Args:
        paths: kohya_ss GUI presets (.json), sd-scripts training configs and dataset configs (.toml).
        force: import a training file that is not an SD/SDXL LoRA recipe (a FLUX.1 or SD3 config, a full
            fine-tune) instead of refusing it.

    Returns:
        A KohyaImport: `mapped` and `ignored` (with reasons); `overrides()` feeds `load_config`.

    Raises:
        ConfigError: a file that cannot be read or parsed; a file that is not an SD/SDXL LoRA recipe (unless
            `force`); a value sd-scripts itself refuses (a bucket_reso_steps that is no multiple of 32/64).

    >>> result = read_kohya("tests/fixtures/kohya/lion_optimizer.json")  # doctest: +SKIP
    >>> cfg = load_config(None, result.overrides())                       # doctest: +SKIP
    """
    result = KohyaImport()
    for path in paths:
        doc = _read(Path(path))
        if "datasets" in doc or "general" in doc:
            _map_datasets(doc, result)
            continue
        source = "gui" if Path(path).suffix.lower() == ".json" else "toml"
        data = _flatten_training(doc)
        problem = _recipe_problem(data)
        if problem and not force:
            raise ConfigError(f"{path}: {problem}; {_FORCE}")
        map_settings(data, result, source=source)
    return result
