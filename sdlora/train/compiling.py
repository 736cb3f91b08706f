"""Optional `torch.compile` of the UNet for the training steps (`optim.compile`). Depends on torch.

The compiled callable wraps the caller's UNet without changing it: parameters, buffers and state-dict keys
stay the UNet's own (nothing gets an `_orig_mod.` prefix; checkpoints hold the LoRA network, which is never
compiled), and sample rendering, export and the caller keep using the eager UNet. The LoRA forward hooks on
the UNet's layers are traced into the compiled graph, so the LoRA parameters get their gradients as usual.

Cost: the first step traces and compiles the forward and backward graphs (minutes on a small CPU; inductor
keeps the result in its on-disk cache, so a later run with the same model, LoRA and batch shapes compiles in
seconds). A second batch shape (another bucket, a last smaller batch) compiles once more, a graph for any
size that later shapes reuse. Measured figures: README, "### Trainer".
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
    before the first step, instead of failing inside it."""
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
    """Calls the compiled UNet. When the first compile fails, a TrainingError says how to train without it;
    when a later one fails (a new batch shape), the rest of the run goes on uncompiled, with a warning, rather
    than losing the steps already done."""

    def __init__(self, unet: torch.nn.Module):
        self.eager = unet
        self._compiled = torch.compile(unet, backend=BACKEND)
        self._ran = False

    def __call__(self, *args, **kwargs):
        if self._compiled is None:
            return self.eager(*args, **kwargs)
        try:
            result = self._compiled(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as err:  # InductorError is one too
            reason = " ".join(str(err).split("\n\n")[0].split())  # torch's first paragraph, one line
            if not self._ran:
                raise TrainingError(f"optim.compile=true: torch.compile failed ({reason}); set "
                                    "optim.compile=false to train without compiling") from err
            log.warning("optim.compile: compiling the UNet for a new batch shape failed (%s); the rest of this "
                        "run is not compiled", reason)
            self._compiled = None
            return self.eager(*args, **kwargs)  # nothing ran: the failure is at compile time
        self._ran = True
        return result

    @property
    def compiled(self) -> bool:
        """False once a failed recompile switched this run to the eager UNet."""
        return self._compiled is not None


def compile_unet(unet: torch.nn.Module, device: torch.device) -> CompiledUNet:
    """The UNet compiled for training (after the LoRA hooks are attached). Checks the toolchain first."""
    check_toolchain(device)
    log.info("optim.compile: the first training step compiles the UNet (can take minutes)")
    return CompiledUNet(unet)
