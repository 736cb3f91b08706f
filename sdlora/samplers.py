"""Sampler names as A1111 writes them ("DPM++ 2M SDE", "Euler a", ...) <-> diffusers schedulers.

A1111, ComfyUI's infotext and Civitai name a sampler by one string; diffusers names a scheduler class
plus options (`algorithm_type`, `use_karras_sigmas`). This table maps both ways, so that
`sdlora generate --sampler "DPM++ 2M SDE"` picks the scheduler and the PNG's parameters name it back.
A new scheduler is always built from the pipeline's own scheduler config, so the model's training
schedule (betas, prediction type, timestep spacing) is kept and only the sampling method changes.

Depends on diffusers only inside `make_scheduler` (imported there). LMS is left out: diffusers needs
scipy for it, which sdlora does not otherwise need.
"""

from __future__ import annotations

import difflib

from sdlora.errors import ConfigError

_DPM = "DPMSolverMultistepScheduler"

# A1111 name -> (diffusers class, the options that make it that sampler)
SAMPLERS: dict[str, tuple[str, dict]] = {
    "DPM++ 2M": (_DPM, {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "DPM++ 2M Karras": (_DPM, {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "DPM++ 2M SDE": (_DPM, {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": False}),
    "DPM++ 2M SDE Karras": (_DPM, {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
    "DDIM": ("DDIMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),  # as SD 1.x ships it
    "Heun": ("HeunDiscreteScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}

# schedulers sdlora names in a PNG's parameters but does not offer (diffusers needs scipy for LMS)
_NAMED_ONLY = {"LMSDiscreteScheduler": "LMS"}

# what diffusers assumes for an option a config does not carry
_DEFAULTS = {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False, "skip_prk_steps": False}


def resolve_sampler(name: str) -> str:
    """The table's spelling of `name` (case and spaces ignored); ConfigError with close matches otherwise."""
    if name in SAMPLERS:
        return name
    key = _folded(name)
    for known in SAMPLERS:
        if _folded(known) == key:
            return known
    close = difflib.get_close_matches(name, list(SAMPLERS), n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise ConfigError(f"unknown sampler {name!r}: {hint}known samplers: {', '.join(SAMPLERS)}")


def sampler_name(scheduler) -> str:
    """The A1111 name of a diffusers scheduler (its class name when the table has no such sampler)."""
    cls = type(scheduler).__name__
    config = dict(getattr(scheduler, "config", {}) or {})
    for name, (known_cls, options) in SAMPLERS.items():
        if known_cls == cls and all(config.get(k, _DEFAULTS.get(k)) == v for k, v in options.items()):
            return name
    return _NAMED_ONLY.get(cls, cls)


def make_scheduler(name: str, config):
    """A new scheduler for sampler `name`, built from `config` (the pipeline scheduler's config)."""
    import diffusers

    cls_name, options = SAMPLERS[resolve_sampler(name)]
    return getattr(diffusers, cls_name).from_config(config, **options)


def _folded(name: str) -> str:
    return "".join(name.lower().split())
