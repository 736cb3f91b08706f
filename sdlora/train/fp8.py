"""fp8 base weights (`optim.fp8_base`): the frozen UNet's (and untrained text encoders') Linear and Conv2d
weights stored in float8_e4m3fn, upcast to the run's compute dtype layer by layer. Depends on torch.

Each converted layer's `forward` is replaced (an instance attribute, so the module's forward hooks, and
with them the LoRA, still run around it) by an autograd function that upcasts the fp8 weight, applies the
layer, and keeps only the fp8 weight for backward, where it upcasts it again for the input's gradient.
So no full-precision copy of a frozen weight outlives its layer's forward or backward, with or without
gradient checkpointing (docs/training.md, "Fitting your GPU").

What stays in the compute dtype: biases, norms, embeddings (small), the VAE (it encodes in float32), the
LoRA parameters (float32, as always) and all activations. Conv2d layers with a padding mode other than zeros
are left as they are (their input gradient is not plain `conv2d_input`).

`float8_e4m3fn` keeps 3 mantissa bits: the base the LoRA trains against is the rounded one, as in
sd-scripts' `--fp8_base`; the exported LoRA has the same keys, shapes and dtypes as without it. When the run
ends, each weight is upcast back into its layer (the caller's model keeps working, now with the rounded
weights) and the original forward is restored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sdlora.errors import ConfigError

STORAGE = getattr(torch, "float8_e4m3fn", None)


def check(cfg) -> None:
    """Refuse optim.fp8_base where this torch build has no float8 dtype (before the model loads)."""
    if cfg.optim.fp8_base and STORAGE is None:
        raise ConfigError(f"optim.fp8_base: torch {torch.__version__} has no float8_e4m3fn (needs torch 2.1 or "
                          "newer); upgrade torch or turn it off")


def check_device(device: torch.device, compute: torch.dtype) -> None:
    """Refuse optim.fp8_base where the device cannot store and upcast float8 (e.g. Apple MPS)."""
    try:
        probe = torch.ones(4, device=device).to(STORAGE).to(compute)
    except (RuntimeError, TypeError, NotImplementedError) as err:
        raise ConfigError(f"optim.fp8_base: {device.type} cannot store float8_e4m3fn weights with torch "
                          f"{torch.__version__} ({str(err).splitlines()[0]}); turn it off") from err
    if not bool((probe == 1).all()):
        raise ConfigError(f"optim.fp8_base: float8 on {device.type} gives wrong values; turn it off")


class _Fp8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight8, bias, compute):
        ctx.save_for_backward(weight8)
        ctx.x_dtype = x.dtype
        return F.linear(x, weight8.to(compute), bias)

    @staticmethod
    def backward(ctx, grad):
        (weight8,) = ctx.saved_tensors
        return grad.matmul(weight8.to(grad.dtype)).to(ctx.x_dtype), None, None, None


class _Fp8Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight8, bias, compute, conv):
        ctx.save_for_backward(weight8)
        ctx.x_shape, ctx.x_dtype, ctx.conv = x.shape, x.dtype, conv
        return F.conv2d(x, weight8.to(compute), bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    @staticmethod
    def backward(ctx, grad):
        (weight8,) = ctx.saved_tensors
        c = ctx.conv
        gx = torch.nn.grad.conv2d_input(ctx.x_shape, weight8.to(grad.dtype), grad, c.stride, c.padding,
                                        c.dilation, c.groups)
        return gx.to(ctx.x_dtype), None, None, None, None


def _linear_forward(module: nn.Linear, compute: torch.dtype, x: torch.Tensor) -> torch.Tensor:
    return _Fp8Linear.apply(x, module.weight, module.bias, compute)


def _conv_forward(module: nn.Conv2d, compute: torch.dtype, x: torch.Tensor) -> torch.Tensor:
    return _Fp8Conv2d.apply(x, module.weight, module.bias, compute, module)


def convertible(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def store_fp8(model: nn.Module, compute: torch.dtype) -> list[nn.Module]:
    """Store the frozen Linear/Conv2d weights of `model` in float8 and upcast them to `compute` in forward.
    Returns the converted layers (for `restore`)."""
    converted = []
    for module in model.modules():
        if not convertible(module) or module.weight.requires_grad:
            continue
        module.weight.data = module.weight.data.to(STORAGE)
        if module.bias is not None and module.bias.dtype != compute:
            module.bias.data = module.bias.data.to(compute)
        step = _linear_forward if isinstance(module, nn.Linear) else _conv_forward
        module.forward = lambda x, _m=module, _step=step: _step(_m, compute, x)
        module.fp8_compute = compute
        converted.append(module)
    return converted


def restore(layers: list[nn.Module]) -> None:
    """Each layer's weight upcast back to its compute dtype and its class's forward in place again."""
    for module in layers:
        module.weight.data = module.weight.data.to(module.fp8_compute)
        del module.forward, module.fp8_compute


def apply(cfg, components, compute: torch.dtype, device: torch.device) -> list[nn.Module]:
    """optim.fp8_base on a run's components: the UNet, and the text encoders unless their LoRA is trained."""
    if not cfg.optim.fp8_base:
        return []
    check_device(device, compute)
    models = [components.unet]
    if not cfg.lora.train_text_encoder:
        models += list(components.text_encoders.values())
    return [layer for model in models for layer in store_fp8(model, compute)]

