"""Training configuration: typed dataclasses, YAML presets and `key=value` overrides. Depends on PyYAML only.

Why YAML and not TOML: YAML is already a dependency (diffusers configs, accelerate configs), it keeps
comments (a preset explains *why* a value differs), `null` expresses "not set" which TOML cannot, and the
`--set key=value` values are parsed with the same `yaml.safe_load`, so `--set optim.lr=1e-4`,
`--set data.flip=true` and `--set output.sample_prompts=[a cat, a dog]` need no extra syntax.

Presets in `sdlora/configs/presets/*.yaml` (name them by stem: `--config style`; found by
`sdlora.settings.presets`) hold only what differs from the defaults here (nanoGPT style).
Every field carries `metadata={"help": ...}` (and `choices` where the values are a closed set); the CLI and
the web UI read them through `sdlora.settings.fields.field_spec` for help text, widgets and tooltips.

>>> cfg = load_config(None, ["optim.steps=10", "data.path=sample_data"])
>>> cfg.optim.steps
10
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sdlora.atomic import atomic_path
from sdlora.errors import ConfigError
from sdlora.settings.presets import preset_path


def _opt(default, help: str, choices: tuple | None = None):
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    base: str = _opt("embedded", "base model: a diffusers folder, a single-file .safetensors checkpoint "
                     "(SD1.x/SD2.x/SDXL), a Hugging Face hub id, or 'embedded' (sdlora's small shipped model)")
    family: str | None = _opt(None, "base family when it cannot be detected: sd1, sd2 or sdxl",
                              ("sd1", "sd2", "sdxl"))
    prediction_type: str | None = _opt(None, "override the scheduler's prediction type",
                                       ("epsilon", "v_prediction"))
    allow_pickle: bool = _opt(False, "allow .ckpt/.pt/.bin checkpoints (loaded with torch.load(weights_only=True))")


@dataclass
class DataConfig:
    path: str = _opt("", "image folder: images with same-stem .txt captions, or Kohya N_name subfolders")
    reg_path: str = _opt("", "regularization (class) image folder for prior preservation, laid out like `path`; "
                         "its images are repeated or cut so that an epoch has as many of them as training "
                         "samples (as kohya does); their loss counts x optim.prior_loss_weight. Empty = none")
    validation_path: str = _opt("", "validation image folder, laid out like `path`: its loss is measured every "
                                "output.validate_every steps, never trained on. Empty = none")
    validation_split: float = _opt(0.0, "fraction of the training images held out for the validation loss instead "
                                   "(chosen by optim.seed; at least one image). 0 = none")
    trigger: str = _opt("", "trigger word prepended to every caption (kept first when shuffling)")
    repeats: int = _opt(1, "repeats for images directly in the folder (N_name subfolders use N)")
    resolution: int | None = _opt(None, "training resolution; buckets keep about resolution x resolution pixels. "
                                  "Unset (null or 'auto'): the base's native size (UNet sample size x VAE "
                                  "scale factor: embedded 32, SD1 512, SD2-v 768, SDXL 1024)")
    buckets: bool = _opt(True, "aspect-ratio buckets; off = square crops at `resolution`")
    min_bucket: int | None = _opt(None, "smallest bucket side in pixels (unset: resolution / 2)")
    max_bucket: int | None = _opt(None, "largest bucket side in pixels (unset: resolution x 2)")
    bucket_step: int = _opt(64, "bucket sides are multiples of this (64 for SD1/SD2, 32 allowed for SDXL)")
    crop: str = _opt("center", "how an image is cropped to its bucket", ("center", "random"))
    flip: bool = _opt(False, "random horizontal flip")
    background: str = _opt("white", "colour that transparent pixels are composited on (name or #rrggbb)")
    max_image_pixels: int = _opt(80_000_000, "images with more pixels are skipped (decompression-bomb guard)")
    shuffle_captions: bool = _opt(False, "shuffle comma-separated tags (the first keep_tokens stay in place)")
    keep_tokens: int = _opt(0, "number of leading tags never shuffled or dropped (the trigger counts as one)")
    caption_dropout: float = _opt(0.0, "probability of training a sample with an empty caption")
    tag_dropout: float = _opt(0.0, "probability of dropping each tag (after keep_tokens)")
    alpha_mask: bool = _opt(False, "masked training: learn only where images are opaque (their alpha channel; "
                            "images without one train everywhere)")
    mask_path: str = _opt("", "masked training: a folder of grey masks named like the images (white = train, black "
                          "= ignore); images without a mask train everywhere. Empty = none")
    max_token_length: int = _opt(75, "caption tokens the text encoder sees: 75 (CLIP's window) or 150/225 (long "
                                 "captions as sd-scripts does: windows of 75 tokens, each with its own "
                                 "start/end token, concatenated); longer captions are cut and counted in the "
                                 "data set summary", (75, 150, 225))
    batch_size: int = _opt(1, "images per step per process")
    cache_latents: str = _opt("memory", "encode images with the VAE once: off, in memory, or on disk",
                              ("off", "memory", "disk"))
    cache_text: bool = _opt(True, "cache text-encoder outputs when the text encoder is frozen and captions fixed")


@dataclass
class LoraConfig:
    targets: str = _opt("qv", "modules that get LoRA: qv (UNet to_q/to_v + TE q_proj/v_proj), attn (all attention "
                        "projections), sd-scripts (all transformer linears + 1x1 convs, TE attention + MLP), "
                        "locon (sd-scripts + resnet convs), locon-io (locon + UNet conv_in/conv_out)",
                        ("qv", "attn", "sd-scripts", "locon", "locon-io"))
    rank: int = _opt(8, "LoRA rank (low-rank size)")
    alpha: float = _opt(8.0, "LoRA alpha; scale = alpha / rank")
    conv_rank: int = _opt(4, "rank of 3x3 conv LoRA (locon, locon-io presets)")
    conv_alpha: float = _opt(1.0, "alpha of 3x3 conv LoRA (locon, locon-io presets)")
    dropout: float = _opt(0.0, "dropout on the LoRA input")
    rank_stabilized: bool = _opt(False, "rank-stabilized LoRA (rsLoRA): scale = alpha / sqrt(rank) instead of "
                                 "alpha / rank, so larger ranks keep learning; the file stores alpha x sqrt(rank) "
                                 "per module, which every loader reads as the same scale")
    rank_dropout: float = _opt(0.0, "training only: probability of zeroing each rank channel of the LoRA's down "
                               "output per sample, the rest scaled up (sd-scripts' rank_dropout; 0 = off)")
    module_dropout: float = _opt(0.0, "training only: probability of skipping a module's LoRA for a whole step "
                                 "(sd-scripts' module_dropout; 0 = off)")
    dora: bool = _opt(False, "DoRA: learn a magnitude per input column (or per output row, lora.dora_axis) as well")
    dora_axis: str = _opt("auto", "DoRA magnitude layout: in (one per input column: A1111, ComfyUI and LyCORIS "
                          "apply it exactly; Kohya files), out (one per output row: PEFT's, the only one a "
                          "diffusers file holds), auto (out when output.format is diffusers, else in)",
                          ("auto", "in", "out"))
    block_dims: list[int] | None = _opt(None, "rank per UNet block in sd-scripts' order (SD1/SD2: 25 values IN00.."  # noqa: RUF009
                                        "IN11, MID, OUT00..OUT11; SDXL: 19); 0 = no LoRA in that block")
    block_alphas: list[float] | None = _opt(None, "alpha per UNet block, like block_dims (default: lora.alpha)")  # noqa: RUF009
    conv_block_dims: list[int] | None = _opt(None, "rank of the 3x3 convs per UNet block, like block_dims "  # noqa: RUF009
                                             "(locon presets; default: lora.conv_rank)")
    conv_block_alphas: list[float] | None = _opt(None, "alpha of the 3x3 convs per UNet block (default: "  # noqa: RUF009
                                                 "lora.conv_alpha)")
    train_text_encoder: bool = _opt(True, "train LoRA on the text encoder(s) too")


@dataclass
class OptimConfig:
    steps: int = _opt(1000, "optimizer steps")
    lr: float = _opt(1e-4, "learning rate (UNet and text encoder unless set separately)")
    unet_lr: float | None = _opt(None, "UNet learning rate (default: lr)")
    text_encoder_lr: float | None = _opt(None, "text-encoder learning rate (default: lr)")
    optimizer: str = _opt("adamw", "optimizer: adamw; adamw8bit (bitsandbytes, CUDA); prodigy (sdlora[prodigy]; "
                          "lr is a multiplier, use 1.0); lion (sdlora[lion]; use ~3-10x lower lr, higher "
                          "weight_decay); adamw_schedulefree (sdlora[schedulefree]; no schedule, warmup inside); "
                          "adafactor (explicit lr, no relative step)",
                          ("adamw", "adamw8bit", "prodigy", "lion", "adamw_schedulefree", "adafactor"))
    weight_decay: float = _opt(0.01, "AdamW weight decay")
    scheduler: str = _opt("constant", "learning-rate schedule after warmup (kohya's names; constant_with_warmup "
                          "= constant: warmup_steps applies to every schedule)",
                          ("constant", "constant_with_warmup", "cosine", "linear", "cosine_with_restarts",
                           "polynomial"))
    warmup_steps: int = _opt(0, "linear warmup steps")
    grad_accum: int = _opt(1, "gradient accumulation: micro-batches per optimizer step")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm (0 = off)")
    mixed_precision: str = _opt("no", "autocast precision; LoRA parameters stay float32", ("no", "fp16", "bf16"))
    gradient_checkpointing: bool = _opt(False, "trade compute for memory in the UNet and text encoder")
    compile: bool = _opt(False, "torch.compile the UNet for the training steps (inductor; needs a C++ compiler "
                         "on CPU, triton on CUDA): faster steps, but the first step compiles for minutes and "
                         "each new batch shape compiles again; pays off on long runs")
    noise_offset: float = _opt(0.0, "noise offset (adds offset * randn(B, C, 1, 1) to the noise)")
    min_snr_gamma: float = _opt(0.0, "min-SNR-gamma loss weighting (0 = off; 5 is the paper's value)")
    seed: int = _opt(0, "random seed (data order, noise, timesteps, LoRA init)")
    prior_loss_weight: float = _opt(1.0, "weight of the regularization images' loss (data.reg_path) against the "
                                    "training images' (kohya's prior_loss_weight)")
    # optimizer registry and schedules (sdlora.train.optimizers, sdlora.train.optim)
    optimizer_args: list[str] = _opt([], "extra optimizer arguments as key=value, like kohya's --optimizer_args: "  # noqa: RUF009
                                     "[d_coef=2, safeguard_warmup=True], 'betas=0.9,0.99' (a mapping works "
                                     "in YAML); values are Python literals")
    lr_cycles: int = _opt(1, "cosine_with_restarts: number of cosine cycles (each restarts at the full lr)")
    lr_power: float = _opt(1.0, "polynomial: power of the decay to 0 (1 = linear)")
    # loss and noise options (sdlora.train.loss_options); the defaults change nothing
    min_timestep: int = _opt(0, "smallest training timestep (timesteps are drawn uniformly from [min, max))")
    max_timestep: int | None = _opt(None, "largest training timestep + 1 (default: the scheduler's, 1000)")
    loss_type: str = _opt("l2", "loss: l2 (squared error), huber or smooth_l1 (pseudo-Huber: squared for small "
                          "errors, linear for large ones; threshold optim.huber_c by optim.huber_schedule)",
                          ("l2", "huber", "smooth_l1"))
    huber_schedule: str = _opt("snr", "Huber threshold over timesteps: constant (huber_c), exponential (1 at t=0 "
                               "down to huber_c), snr (large where the noise is small)",
                               ("constant", "exponential", "snr"))
    huber_c: float = _opt(0.1, "Huber threshold, in (0, 1] (kohya's default 0.1)")
    ip_noise_gamma: float = _opt(0.0, "input-perturbation noise: extra gamma x randn on the noised input, not the "
                                 "target (0 = off; 0.1 is the paper's value)")
    multires_noise_iterations: int = _opt(0, "multi-resolution (pyramid) noise levels added to the noise (0 = "
                                          "off; 6-10 are common)")
    multires_noise_discount: float = _opt(0.3, "weight decay per multi-resolution noise level (discount^i)")
    debiased_estimation: bool = _opt(False, "debiased estimation loss weighting 1/sqrt(SNR) (1/(SNR+1) for "
                                     "v-prediction); combines with min_snr_gamma")
    down_lr_weight: list[float] | None = _opt(None, "factor on the UNet lr per IN block (SD1/SD2: 12 values "  # noqa: RUF009
                                              "IN00..IN11, SDXL: 9); 0 = that block gets no LoRA")
    mid_lr_weight: float | None = _opt(None, "factor on the UNet lr of the MID block")
    up_lr_weight: list[float] | None = _opt(None, "factor on the UNet lr per OUT block, like down_lr_weight")  # noqa: RUF009
    zero_terminal_snr: bool = _opt(False, "rescale the noise schedule so the last timestep is pure noise (zero "
                                   "SNR, Lin et al. 2023); needs v-prediction (model.prediction_type)")
    # EMA of the LoRA weights (sdlora.train.ema)
    ema_decay: float = _opt(0.0, "EMA of the LoRA weights, exported beside it as <name>-ema.safetensors (0 = off; "
                            "0.999 is common; warmed up as min(decay, (1+n)/(10+n)))")
    ema_every: int = _opt(1, "update the EMA every N optimizer steps")
    loraplus_ratio: float = _opt(0.0, "LoRA+: the LoRA up matrices train at lr x this ratio (0 = off; the paper "
                                 "suggests 16; written to ss_network_args as loraplus_lr_ratio)")
    # fitting a small GPU (docs/training.md, "Fitting your GPU")
    fused_backward: bool = _opt(False, "fused backward pass: each LoRA parameter is updated as soon as its "
                                "gradient is ready and the gradient freed (adamw or adafactor; grad_accum 1; "
                                "max_grad_norm clips each tensor on its own, as sd-scripts does)")
    fp8_base: bool = _opt(False, "store the frozen UNet (and text encoders when not trained) in float8_e4m3fn, "
                          "upcast layer by layer in forward; LoRA stays in the training precision")
    threads: int | None = _opt(None, "CPU threads for torch (unset or 0: chosen from the CPUs this process may "
                               "use, its affinity and cgroup quota, leaving one free on small machines so "
                               "that a competing process does not stall every step)")


@dataclass
class OutputConfig:
    dir: str = _opt("output", "output folder")
    name: str = _opt("lora", "file name stem of the exported LoRA")
    format: str = _opt("kohya", "exported file format", ("kohya", "diffusers", "both"))
    save_dtype: str = _opt("fp16", "dtype of the exported tensors", ("fp16", "bf16", "fp32"))
    save_every: int = _opt(0, "save a checkpoint (LoRA + optimizer + RNG state) every N steps (0 = only at the end)")
    keep_last: int = _opt(3, "checkpoints kept (older ones are deleted)")
    validate_every: int = _opt(0, "measure the validation loss (data.validation_path or data.validation_split) "
                               "every N steps into val_loss.csv, loss.png and the trackers (0 = off)")
    sample_every: int = _opt(0, "render sample_prompts every N steps into a grid (0 = off, or see sample_points)")
    sample_points: int = _opt(0, "when sample_every is 0: render samples at this many evenly spaced points of the "
                              "run, the last one at its end (0 = off; the embedded base's recipe sets 4)")
    sample_prompts: list[str] = _opt([], "prompts for sample images; empty while sampling is on: two of the data "  # noqa: RUF009 - _opt returns a field
                                     "set's captions, with the trigger")
    sample_steps: int = _opt(20, "denoising steps per sample image")
    sample_size: int | None = _opt(None, "sample image side (default: data.resolution)")
    comment: str = _opt("", "free text stored as ss_training_comment")
    # experiment tracking (sdlora.train.tracking)
    log_with: str = _opt("auto", "experiment tracker for loss, lr and sample grids, written under <dir>/logs "
                         "(accelerate's trackers): auto = tensorboard when installed, else none; tensorboard "
                         "(pip install \"sdlora[tensorboard]\"); wandb (sdlora[wandb], needs WANDB_API_KEY or "
                         "wandb login); none", ("auto", "tensorboard", "wandb", "none"))


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "base model"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data set"})
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "LoRA shape and targets"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimisation"})
    output: OutputConfig = field(default_factory=OutputConfig, metadata={"help": "outputs"})


SECTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))
_SECTION_TYPES = {f.name: f.default_factory for f in dataclasses.fields(TrainConfig)}  # section -> its dataclass


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"


def _check_type(where: str, value: Any, tp: Any) -> Any:
    """Return `value` converted to `tp` (int -> float, bool/number -> str) or raise ConfigError naming `where`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(where, value, inner[0])
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_type(f"{where}[{i}]", v, args[0]) for i, v in enumerate(value)]
    return _check_scalar(where, value, tp)


def _check_scalar(where: str, value: Any, tp: type) -> Any:
    if tp is float and not isinstance(value, bool) and (isinstance(value, int) or
                                                        isinstance(value, str) and _looks_float(value)):
        return float(value)  # PyYAML 1.1 reads "1e-4" (no dot) as a string; users mean a number
    if tp is str and isinstance(value, bool):
        return "no" if value is False else "yes"  # YAML 1.1 reads `no`/`off` as false (mixed_precision: no)
    if tp is str and isinstance(value, (int, float)):
        return str(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError, naming the key, for a value outside its choices or its range."""
    for section in SECTIONS:
        sub = getattr(cfg, section)
        for f in dataclasses.fields(sub):
            choices = f.metadata.get("choices")
            value = getattr(sub, f.name)
            if choices and value is not None and value not in choices:
                raise ConfigError(f"{section}.{f.name}: {value!r} is not one of {', '.join(map(str, choices))}")
    _check_ranges(cfg)


def _check_validation(cfg: TrainConfig) -> None:
    data = cfg.data
    if not 0.0 <= data.validation_split < 1.0:
        raise ConfigError(f"data.validation_split: must be in [0, 1), got {data.validation_split}")
    if data.validation_path and data.validation_split:
        raise ConfigError("data.validation_path and data.validation_split are both set; use one of them")
    if cfg.output.validate_every < 0:
        raise ConfigError(f"output.validate_every: must be 0 (off) or more, got {cfg.output.validate_every}")
    if data.alpha_mask and data.mask_path:
        raise ConfigError("data.alpha_mask and data.mask_path are both set; masks come from one of them")


def _check_lora_dropouts(cfg: TrainConfig) -> None:
    for key in ("dropout", "rank_dropout", "module_dropout"):
        value = getattr(cfg.lora, key)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"lora.{key}: must be in [0, 1), got {value}")


def _check_ranges(cfg: TrainConfig) -> None:
    positive = {"optim.steps": cfg.optim.steps, "lora.rank": cfg.lora.rank, "lora.conv_rank": cfg.lora.conv_rank,
                "data.batch_size": cfg.data.batch_size, "optim.grad_accum": cfg.optim.grad_accum,
                "data.resolution": cfg.data.resolution, "data.bucket_step": cfg.data.bucket_step,
                "data.min_bucket": cfg.data.min_bucket, "data.max_bucket": cfg.data.max_bucket,
                "optim.lr_cycles": cfg.optim.lr_cycles}
    for key, value in positive.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
    for key in ("caption_dropout", "tag_dropout"):
        value = getattr(cfg.data, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"data.{key}: must be between 0 and 1, got {value}")
    if cfg.optim.threads is not None and cfg.optim.threads < 0:
        raise ConfigError(f"optim.threads: must be 0 (auto) or more, got {cfg.optim.threads}")
    _check_validation(cfg)
    if cfg.optim.prior_loss_weight < 0:
        raise ConfigError(f"optim.prior_loss_weight: must be 0 or more, got {cfg.optim.prior_loss_weight}")
    _check_lora_dropouts(cfg)
    if cfg.data.resolution is not None and cfg.data.resolution % 8:
        raise ConfigError(f"data.resolution: {cfg.data.resolution} is not a multiple of 8 (the VAE needs that)")
    if cfg.data.min_bucket is not None and cfg.data.max_bucket is not None and cfg.data.min_bucket > cfg.data.max_bucket:
        raise ConfigError(f"data.min_bucket ({cfg.data.min_bucket}) is larger than data.max_bucket "
                          f"({cfg.data.max_bucket})")


AUTO_KEYS = ("data.resolution", "data.min_bucket", "data.max_bucket", "optim.threads")


def set_key(cfg: TrainConfig, key: str, value: Any, source: str = "") -> None:
    """Set `section.key` on `cfg` to `value`, type-checked against the field; errors name `source` and the key."""
    if key in AUTO_KEYS and isinstance(value, str) and value.strip().lower() == "auto":
        value = None  # `auto` reads better than `null` on a command line: --set data.resolution=auto
    _, hint = lookup_field(key, source)
    if key == "optim.optimizer_args":
        value = _key_value_list(value)
    section, _, name = key.partition(".")
    setattr(getattr(cfg, section), name, _check_type(f"{source}: {key}" if source else key, value, hint))


def lookup_field(key: str, source: str = "") -> tuple[dataclasses.Field, Any]:
    """The dataclass field of `section.key` and its type hint; ConfigError with the nearest valid key."""
    where = f"{source}: " if source else ""
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise ConfigError(f"{where}unknown section '{section}'{_suggest(section, list(SECTIONS))}")
    cls = _SECTION_TYPES[section]
    types_ = _field_types(cls)
    if name not in types_:
        valid = [f"{section}.{n}" for n in types_]
        raise ConfigError(f"{where}unknown key '{key}'{_suggest(key, valid)}")
    return next(f for f in dataclasses.fields(cls) if f.name == name), types_[name]


def _key_value_list(value: Any) -> Any:
    """optim.optimizer_args as a list of key=value strings: a mapping ({d_coef: 2}) or one kohya-style string
    ("d_coef=2 decouple=True") is accepted too."""
    if isinstance(value, dict):
        return [f"{k}={v}" for k, v in value.items()]
    if isinstance(value, str):
        return value.split()
    return value


def apply_dict(cfg: TrainConfig, data: dict, source: str) -> TrainConfig:
    """Apply a nested {section: {key: value}} mapping onto `cfg` (strict: unknown keys raise ConfigError)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping"
                              f"{_suggest(str(section), list(SECTIONS)) if section not in SECTIONS else ''}")
        for name, value in values.items():
            set_key(cfg, f"{section}.{str(name).replace('-', '_')}", value, source)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """Split `section.key=value`; the value is parsed as YAML (`1e-4`, `true`, `[a, b]`, `null`)."""
    key, sep, raw = text.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. optim.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({err})") from err
    return key.strip().replace("-", "_"), value


def _looks_float(raw: str) -> bool:
    try:
        float(raw)
    except ValueError:
        return False
    return True


def _is_str_field(key: str) -> bool:
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        return False
    tp = _field_types(type(getattr(TrainConfig(), section))).get(name)
    return tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp))


def resolve_config_path(path: str | Path) -> Path:
    """`path` itself, or the shipped preset of that name when `path` is a bare name that is no file
    (so `--config style` works from any folder and in an installed package)."""
    path = Path(path)
    if path.is_file() or path.suffix or len(path.parts) != 1:
        return path
    return preset_path(str(path))


def read_yaml(path: str | Path) -> dict:
    path = resolve_config_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror})") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({err})") from err
    return data or {}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Build a TrainConfig from defaults, then the YAML file at `path`, then `section.key=value` overrides.

    Args:
        path: a YAML file (a saved config.yaml), the name of a shipped preset (`style`), or None for defaults.
        overrides: strings like "optim.lr=1e-4"; values are type-checked against the field.

    Returns:
        The validated TrainConfig.

    Raises:
        ConfigError: unreadable file, unknown key (with the nearest valid key), wrong type or bad value.

    >>> load_config(None, ["lora.rank=4"]).lora.rank
    4
    """
    cfg = TrainConfig()
    if path is not None:
        apply_dict(cfg, read_yaml(path), str(path))
    for text in overrides:
        key, value = parse_override(text)
        if isinstance(value, (bool, int, float)) and _is_str_field(key):
            value = text.partition("=")[2].strip()  # --set data.trigger=1girl / optim.mixed_precision=no
        set_key(cfg, key, value, f"--set {text}")
    validate(cfg)
    return cfg


def config_to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: TrainConfig, path: str | Path | None = None) -> str:
    """Return the full resolved config as YAML; also write it atomically to `path` when given."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)
    if path is not None:
        with atomic_path(Path(path), fsync=False) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return text
