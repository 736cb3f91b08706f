"""The optimizer registry: one entry per `optim.optimizer`, with its package, defaults and argument checks.

Depends on torch; each optional optimizer imports its own package (an extra of sdlora) only when chosen.

`optim.optimizer_args` holds extra keyword arguments the way kohya's `--optimizer_args` does
(`["d_coef=2", "safeguard_warmup=True"]`, or one string `"weight_decay=0.01 decouple=True"`): each value
is read as a Python literal (`0.01`, `True`, `0.9,0.99` -> a tuple), anything else stays a string. The keys
are checked against the optimizer's own signature before the model loads, so a typo is a ConfigError and
not a crash after minutes of loading.

What sdlora sets on top of each package's defaults, and why:
- every optimizer gets `optim.weight_decay` (one meaning across optimizers; `optimizer_args` overrides it);
- adamw uses torch's fused kernel when all parameters allow it (a speed choice, same updates);
- prodigy: `safeguard_warmup` is on when there is a warmup (Prodigy's authors recommend it: the small
  warmup learning rates would otherwise shrink its step-size estimate); its `lr` is a multiplier of the
  estimated step size, so a value far from 1 gets a warning;
- adafactor: `relative_step`, `scale_parameter` and `warmup_init` are off, so that `optim.lr` and the
  schedule drive it like the other optimizers (transformers' own default derives the step size instead);
- adamw_schedulefree: the warmup runs inside the optimizer (`warmup_steps`), so the schedule must be
  constant; its weights are switched to their averaged values ("eval mode") for samples and exports
  (`eval_weights`). Checkpoints keep the training-mode weights with the optimizer state (that pair is what
  resumes exactly), so a checkpoint's lora.safetensors is not the averaged LoRA: use the step exports.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib
import importlib.util
import inspect
import io
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sdlora.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimizerSpec:
    name: str                      # the value of optim.optimizer
    module: str                    # the module that holds the class
    cls: str                       # the class name
    extra: str | None              # the sdlora extra that installs the package (None: a core dependency)
    package: str                   # the pip package named in the error
    defaults: Callable[[Any], dict]  # cfg -> keyword arguments sdlora sets (optimizer_args override them)
    schedule_free: bool = False
    cuda_only: bool = False

    def load(self) -> type:
        try:
            return getattr(importlib.import_module(self.module), self.cls)
        except ImportError as err:
            raise ConfigError(missing_message(self)) from err


def _adam_like(cfg) -> dict:
    return {"weight_decay": cfg.optim.weight_decay, "betas": (0.9, 0.999), "eps": 1e-8}


def _prodigy(cfg) -> dict:
    return {"weight_decay": cfg.optim.weight_decay, "safeguard_warmup": cfg.optim.warmup_steps > 0}


def _decay_only(cfg) -> dict:
    return {"weight_decay": cfg.optim.weight_decay}


def _schedulefree(cfg) -> dict:
    return {**_adam_like(cfg), "warmup_steps": cfg.optim.warmup_steps}


def _adafactor(cfg) -> dict:
    return {"weight_decay": cfg.optim.weight_decay, "relative_step": False, "scale_parameter": False,
            "warmup_init": False}


REGISTRY: dict[str, OptimizerSpec] = {spec.name: spec for spec in (
    OptimizerSpec("adamw", "torch.optim", "AdamW", None, "torch", _adam_like),
    OptimizerSpec("adamw8bit", "bitsandbytes.optim", "AdamW8bit", None, "bitsandbytes", _adam_like,
                  cuda_only=True),
    OptimizerSpec("prodigy", "prodigyopt", "Prodigy", "prodigy", "prodigyopt", _prodigy),
    OptimizerSpec("lion", "lion_pytorch", "Lion", "lion", "lion-pytorch", _decay_only),
    OptimizerSpec("adamw_schedulefree", "schedulefree", "AdamWScheduleFree", "schedulefree", "schedulefree",
                  _schedulefree, schedule_free=True),
    OptimizerSpec("adafactor", "transformers.optimization", "Adafactor", None, "transformers", _adafactor),
)}

NAMES = tuple(REGISTRY)

# Prodigy's lr multiplies the step size it estimates; its authors use 1.0 (0.5-2 when tuning)
_PRODIGY_LR_RANGE = (0.1, 10.0)


def missing_message(spec: OptimizerSpec) -> str:
    if spec.extra is None:
        return f"optim.optimizer={spec.name} needs {spec.package} (pip install {spec.package}); or use adamw"
    return (f"optim.optimizer={spec.name} needs the {spec.package} package: pip install \"sdlora[{spec.extra}]\" "
            "(or choose another optim.optimizer)")


def spec_for(name: str) -> OptimizerSpec:
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"optim.optimizer: unknown optimizer {name!r}{hint} (one of {', '.join(NAMES)})")
    return REGISTRY[name]


def parse_value(raw: str) -> Any:
    """A kohya-style argument value: a Python literal (`0.01`, `True`, `(0.9, 0.99)`, `0.9,0.99`), else the text
    (`true`/`false` in any case are booleans, as YAML and the web UI write them; `inf` is a float, as
    Prodigy's growth_rate takes it)."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        pass
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if raw.lower().lstrip("+-") == "inf":
        return float(raw)
    return raw


def parse_optimizer_args(args: list[str] | str) -> dict[str, Any]:
    """`["d_coef=2", "decouple=True weight_decay=0.01"]` -> {"d_coef": 2, "decouple": True, "weight_decay": 0.01}."""
    entries = [args] if isinstance(args, str) else list(args)
    parsed: dict[str, Any] = {}
    for entry in entries:
        for item in str(entry).split():
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"optim.optimizer_args: {item!r} is not key=value (e.g. d_coef=2)")
            parsed[key.strip()] = parse_value(raw.strip())
    return parsed


def _accepted(cls: type) -> set[str] | None:
    """Keyword names the optimizer's constructor takes (None when it takes **kwargs: anything goes)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n in params if n not in ("self", "params")}


def optimizer_kwargs(cfg, cls: type | None = None) -> dict[str, Any]:
    """The keyword arguments for the optimizer: sdlora's defaults, then `optim.optimizer_args`."""
    spec = spec_for(cfg.optim.optimizer)
    user = parse_optimizer_args(cfg.optim.optimizer_args)
    if "lr" in user:
        raise ConfigError("optim.optimizer_args: set the learning rate with optim.lr (or unet_lr / "
                          "text_encoder_lr), not lr=")
    kwargs = {**spec.defaults(cfg), **user}
    cls = cls or spec.load()
    accepted = _accepted(cls)
    if accepted is not None:
        for key in user:
            if key not in accepted:
                close = difflib.get_close_matches(key, sorted(accepted), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; it takes {', '.join(sorted(accepted))}"
                raise ConfigError(f"optim.optimizer_args: {spec.cls} has no argument {key!r}{hint}")
    return kwargs


def check(cfg) -> None:
    """Everything about the optimizer that can be checked before the model loads: the package is installed,
    the arguments exist, and the settings it cannot combine with. Raises ConfigError; warns on odd lrs."""
    spec = spec_for(cfg.optim.optimizer)
    if importlib.util.find_spec(spec.module.partition(".")[0]) is None:
        raise ConfigError(missing_message(spec))
    kwargs = optimizer_kwargs(cfg)
    if cfg.optim.loraplus_ratio < 0:
        raise ConfigError(f"optim.loraplus_ratio: must be >= 0 (0 = off), got {cfg.optim.loraplus_ratio}")
    lrs = _group_lrs(cfg)
    if spec.name == "prodigy":
        _check_prodigy(lrs)
        if cfg.optim.loraplus_ratio:
            raise ConfigError("optim.loraplus_ratio: Prodigy estimates one step size for all parameters and "
                              "cannot give the up matrices their own lr; set optim.loraplus_ratio=0")
    if spec.schedule_free and cfg.optim.scheduler not in ("constant", "constant_with_warmup"):
        raise ConfigError(f"optim.scheduler={cfg.optim.scheduler}: adamw_schedulefree replaces the schedule "
                          "(that is what schedule-free means); set optim.scheduler=constant (optim.warmup_steps "
                          "still applies, inside the optimizer)")
    if spec.name == "adafactor" and kwargs.get("relative_step"):
        raise ConfigError("optim.optimizer_args: relative_step=True makes Adafactor ignore optim.lr and the "
                          "schedule; sdlora drives Adafactor with an explicit lr: remove relative_step")


def _group_lrs(cfg) -> list[float]:
    o = cfg.optim
    lrs = [o.unet_lr or o.lr]
    if cfg.lora.train_text_encoder:
        lrs.append(o.text_encoder_lr or o.lr)
    return lrs


def _check_prodigy(lrs: list[float]) -> None:
    if len({lr for lr in lrs if lr}) > 1:
        raise ConfigError(f"optim.unet_lr / optim.text_encoder_lr: Prodigy estimates one step size for all "
                          f"parameters, so their learning rates must be equal (got {lrs}); set only optim.lr "
                          "(or 0 to freeze one part)")
    low, high = _PRODIGY_LR_RANGE
    for lr in lrs:
        if lr and not low <= lr <= high:
            log.warning("optim.lr=%g with Prodigy: Prodigy's lr multiplies the step size it estimates itself "
                        "and is normally 1.0; %g trains about %gx %s. Use optim.lr=1 (tune with "
                        "optimizer_args d_coef=0.5..2)", lr, lr, max(lr, 1 / lr),
                        "faster" if lr > 1 else "slower")


def build(groups: list[dict], cfg, device) -> Any:
    """The optimizer over `groups` (each group keeps its own lr)."""
    spec = spec_for(cfg.optim.optimizer)
    if spec.cuda_only and device.type != "cuda":
        raise ConfigError(f"optim.optimizer: {spec.name} needs a CUDA GPU; use adamw on this machine")
    cls = spec.load()
    kwargs = optimizer_kwargs(cfg, cls)
    if spec.name == "adamw" and "fused" not in kwargs:
        kwargs["fused"] = _can_fuse(groups, device) or None
    with contextlib.redirect_stdout(io.StringIO()) as printed:  # prodigyopt prints its settings
        optimizer = cls(groups, **kwargs)
    if printed.getvalue().strip():
        log.info("%s: %s", spec.cls, printed.getvalue().strip())
    if spec.schedule_free:
        optimizer.train()  # schedule-free optimizers start in eval mode and refuse to step there
    return optimizer


def _can_fuse(groups: list[dict], device) -> bool:
    """Whether torch's fused AdamW kernel applies: one kernel over all LoRA tensors instead of about ten
    small ops per tensor (the same update, https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html).
    LoRA parameters are always floating point; the kernel exists for CPU and CUDA."""
    params = [p for group in groups for p in group["params"]]
    return device.type in ("cpu", "cuda") and all(p.is_floating_point() and p.device.type == device.type
                                                  for p in params)


def describe(cfg) -> str:
    """sd-scripts' `ss_optimizer` value: the class's qualified name, then the arguments given, e.g.
    `prodigyopt.prodigy.Prodigy(d_coef=2,safeguard_warmup=True)`."""
    spec = spec_for(cfg.optim.optimizer)
    name = "torch.optim.AdamW" if spec.name == "adamw" else f"{spec.module}.{spec.cls}"
    args = parse_optimizer_args(cfg.optim.optimizer_args)
    return f"{name}({','.join(f'{k}={v}' for k, v in args.items())})" if args else name


def _inner(optimizer):
    """The optimizer itself under accelerate's AcceleratedOptimizer wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


@contextmanager
def eval_weights(optimizer, params: list) -> Iterator[None]:
    """Inside: the weights a schedule-free optimizer evaluates at (its averaged x) instead of the point it
    takes gradients at (y). On exit the training point comes back bit for bit: the y values are copied and
    restored rather than recomputed (eval() then train() interpolates twice and rounds), so that sampling or
    exporting mid-run never changes the training trajectory and resumed runs stay exact.
    A no-op for every other optimizer."""
    inner = _inner(optimizer)
    if not (hasattr(inner, "eval") and hasattr(inner, "train") and "train_mode" in inner.param_groups[0]):
        yield
        return
    saved = [p.detach().clone() for p in params]
    inner.eval()
    try:
        yield
    finally:
        inner.train()
        with _no_grad():
            for p, y in zip(params, saved, strict=True):
                p.copy_(y)


def _no_grad():
    import torch

    return torch.no_grad()


def is_schedule_free(cfg) -> bool:
    return spec_for(cfg.optim.optimizer).schedule_free
