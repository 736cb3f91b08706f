"""Optional `torch.compile` of the UNet for the training steps (`optim.compile`). Depends on torch.

The compiled callable wraps the caller's UNet without changing it: parameters, buffers and state-dict keys
stay the UNet's own (nothing gets an `_orig_mod.` prefix; checkpoints hold the LoRA network, which is never
compiled), and sample rendering, export and the caller keep using the eager UNet. The LoRA forward hooks on
the UNet's layers are traced into the compiled graph, so the LoRA parameters get their gradients as usual.

Cost: the first step traces and compiles the forward and backward graphs (minutes on a small CPU; inductor
keeps the result in its on-disk cache, so a later run with the same model, LoRA and batch shapes compiles in
seconds), and every new batch shape (another bucket, a last smaller batch) compiles again.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys

import torch

from sdlora.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

BACKEND = "inductor"  # tests swap in "aot_eager" (same tracing and autograd, no C++/triton code generation)


def check_toolchain(device: torch.device) -> None:
    """Raise ConfigError when inductor cannot generate code here (no C++ compiler on CPU, no triton on CUDA),
    before any model work, instead of failing inside the first step."""
    if BACKEND != "inductor":
        return
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise ConfigError("optim.compile=true on CUDA needs the 'triton' package (pip install triton); "
                              "or set optim.compile=false")
        return
    cxx = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(cxx) is None:
        raise ConfigError(f"optim.compile=true on CPU needs a C++ compiler ({cxx!r} is not on PATH; set CXX to "
                          "another one, or install g++); or set optim.compile=false")


class CompiledUNet:
    """Calls the compiled UNet; a compiler failure becomes a TrainingError that says how to train without."""

    def __init__(self, unet: torch.nn.Module):
        self.eager = unet
        self._compiled = torch.compile(unet, backend=BACKEND)

    def __call__(self, *args, **kwargs):
        try:
            return self._compiled(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as err:
            reason = " ".join(str(err).split("\n\n")[0].split())  # torch's first paragraph, one line
            raise TrainingError(f"optim.compile=true: torch.compile failed ({reason}); set optim.compile=false "
                                "to train without compiling") from err


def compile_unet(unet: torch.nn.Module, device: torch.device) -> CompiledUNet:
    """The UNet compiled for training (after the LoRA hooks are attached). Checks the toolchain first."""
    check_toolchain(device)
    log.info("optim.compile: the first training step compiles the UNet (can take minutes)")
    return CompiledUNet(unet)
