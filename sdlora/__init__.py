"""sdlora: Stable Diffusion LoRA trainer, converter and stack manager.

The public API is re-exported here lazily, so that `import sdlora` stays cheap (no torch, no
diffusers) for quick commands such as `sdlora inspect`.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "SdloraError": "sdlora.errors",
    "FormatError": "sdlora.errors",
    "CompatibilityError": "sdlora.errors",
    "ConfigError": "sdlora.errors",
    "DatasetError": "sdlora.errors",
    "TrainingError": "sdlora.errors",
    "LoraModule": "sdlora.weights",
    "LoraState": "sdlora.weights",
    "load_lora": "sdlora.formats",
    "save_lora": "sdlora.formats",
    "LoraStack": "sdlora.stack",
    "parse_prompt": "sdlora.prompt",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 (a list, built from the export table)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sdlora' has no attribute {name!r}")
    return getattr(import_module(module), name)
