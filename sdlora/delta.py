"""ΔW math for every adapter kind (torch only).

Formulas follow docs/formats.md; the section is cited at each function. All results are
float32 at strength 1 (the user's strength multiplies the result; DoRA is not linear in strength, so
callers interpolate `strength * (W' - W)` the way ComfyUI does, docs/formats.md §2.9).
"""

from __future__ import annotations

from math import prod
from typing import Protocol

import torch
from torch import Tensor

from sdlora.errors import CompatibilityError, FormatError


class Factors(Protocol):
    """What the ΔW math reads of one adapter module; `sdlora.weights.LoraModule` is one.

    A protocol rather than an import of LoraModule: the data class uses this math (LoraState.delta), so the
    math must not depend back on it.
    """

    kind: str
    tensors: dict[str, Tensor]
    dora_axis: str | None
    shape: tuple[int, ...] | None

    @property
    def scale(self) -> float: ...


def module_delta(
    module: Factors,
    base_weight: Tensor | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    name: str = "module",
) -> Tensor:
    """ΔW of one module, float32, shaped like `base_weight` (or `shape`, or the module's own shape).

    DoRA modules (tensors has "dora_scale") need `base_weight`: the result is W' - W with
    W' = m * (W + s*ΔW) / ||W + s*ΔW|| (docs/formats.md §2.9).
    """
    device = base_weight.device if base_weight is not None else None
    delta = _scaled_delta(module, device)
    target = tuple(base_weight.shape) if base_weight is not None else (shape or module.shape)
    if target is not None:
        delta = _fit_shape(delta, tuple(target), name)
    if "dora_scale" in module.tensors:
        if base_weight is None:
            raise CompatibilityError(
                f"{name}: DoRA module needs the base weight to compute its delta; pass base_weight="
            )
        delta = dora_delta(base_weight.float(), delta, module.tensors["dora_scale"], module.dora_axis)
    return delta


def _scaled_delta(module: Factors, device) -> Tensor:
    """scale * ΔW from the factors (before DoRA), float32, in its natural shape."""
    t = {k: v.to(device=device, dtype=torch.float32) for k, v in module.tensors.items() if k != "dora_scale"}
    builders = {"lora": lora_delta, "loha": loha_delta, "lokr": lokr_delta, "full": full_delta}
    builder = builders.get(module.kind)
    if builder is None:
        raise FormatError(f"unknown adapter kind {module.kind!r}; expected one of {sorted(builders)}")
    delta = builder(t)
    scale = module.scale
    if scale == 1.0:
        return delta
    # the factor products are fresh tensors: scale in place (ΔW can be hundreds of MB); `diff` is the input
    return delta * scale if module.kind == "full" else delta.mul_(scale)


def lora_delta(t: dict[str, Tensor]) -> Tensor:
    """LoRA / LoCon: up @ down, conv k x k flattened, Tucker via lora_mid (docs/formats.md §2.3, §2.5)."""
    down, up = t["down"], t["up"]
    rank = down.shape[0]
    up2 = up.reshape(up.shape[0], rank)
    if "mid" in t:
        # Tucker/CP: ΔW[i,j,k,l] = Σ up[i,n] mid[n,m,k,l] down[m,j]  (docs/formats.md §2.5)
        down2 = down.reshape(rank, -1)
        return torch.einsum("nmkl,in,mj->ijkl", t["mid"], up2, down2)
    delta = up2 @ down.reshape(rank, -1)
    return delta.reshape(up.shape[0], *down.shape[1:])


def _hada_factor(a: Tensor, b: Tensor, tucker: Tensor | None) -> Tensor:
    """One LoHa factor: a @ b, or Tucker: einsum('ijkl,jr,ip->prkl', t, b, a) (docs/formats.md §2.6)."""
    if tucker is None:
        return a @ b
    return torch.einsum("ijkl,jr,ip->prkl", tucker, b, a)


def loha_delta(t: dict[str, Tensor]) -> Tensor:
    """LoHa: (w1a @ w1b) ⊙ (w2a @ w2b), Tucker variant with t1/t2 (docs/formats.md §2.6)."""
    first = _hada_factor(t["w1a"], t["w1b"], t.get("t1"))
    second = _hada_factor(t["w2a"], t["w2b"], t.get("t2"))
    return first * second


def _lokr_factor(t: dict[str, Tensor], index: int) -> Tensor:
    """One LoKr factor: full `w<i>`, decomposed `w<i>a @ w<i>b`, or Tucker for w2 (docs/formats.md §2.7)."""
    full = t.get(f"w{index}")
    if full is not None:
        return full
    a, b = t[f"w{index}a"], t[f"w{index}b"]
    tucker = t.get(f"t{index}")
    if tucker is not None:
        return torch.einsum("ijkl,jr,ip->prkl", tucker, b, a)
    return a @ b


def lokr_delta(t: dict[str, Tensor]) -> Tensor:
    """LoKr: kron(w1, w2); w1 is unsqueezed to 4-D when w2 is a conv kernel (docs/formats.md §2.7).

    Early LyCORIS files store conv kernels flattened, so kron gives (out, in*kh*kw); the caller
    reshapes that to the base shape. Either factor may be the larger one (both orders occur in the
    wild); kron(w1, w2) is taken literally.
    """
    w1, w2 = _lokr_factor(t, 1), _lokr_factor(t, 2)
    while w1.dim() < w2.dim():
        w1 = w1.unsqueeze(-1)
    while w2.dim() < w1.dim():
        w2 = w2.unsqueeze(-1)
    return torch.kron(
        w1.contiguous(), w2.contiguous()
    )  # kron views its inputs; einsum results may be strided


def full_delta(t: dict[str, Tensor]) -> Tensor:
    """Full diff: ΔW = diff (docs/formats.md §2.8). The bias diff (diff_b) is not part of the delta."""
    return t["diff"]


def dora_delta(base: Tensor, delta: Tensor, magnitude: Tensor, axis: str | None) -> Tensor:
    """W' - W with W' = m ⊙ (W + ΔW) / ‖W + ΔW‖, the norm taken along `axis` (docs/formats.md §2.9).

    axis "out": one norm per output channel (PEFT, current LyCORIS); "in": one per input column
    (older LyCORIS). `delta` must already carry the alpha/rank scale.
    """
    merged = base + delta
    axis = axis or dora_axis_from_shape(tuple(magnitude.shape), tuple(base.shape))
    if axis == "out":
        norm = merged.reshape(merged.shape[0], -1).norm(dim=1)
        keep = (merged.shape[0],) + (1,) * (merged.dim() - 1)
    else:
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
        keep = (1, merged.shape[1]) + (1,) * (merged.dim() - 2)
    m = magnitude.to(device=base.device, dtype=torch.float32).reshape(keep)
    return m * merged / norm.reshape(keep) - base


def dora_axis_from_shape(magnitude_shape: tuple[int, ...], base_shape: tuple[int, ...]) -> str:
    """Which axis a DoRA magnitude normalises over, from its stored shape (docs/formats.md §2.9).

    Keep-dim (out,1[,1,1]) -> "out", (1,in[,1,1]) -> "in"; a flat PEFT vector (out,) -> "out".
    """
    if len(magnitude_shape) == 1:
        return "out"
    if magnitude_shape[0] == 1 and len(magnitude_shape) > 1 and magnitude_shape[1] > 1:
        return "in"
    if base_shape and magnitude_shape[0] == base_shape[0]:
        return "out"
    return "in"


def shape_fits(delta_shape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a ΔW of `delta_shape` can be a weight of `shape`: the same, or the same outputs and size (a
    flattened conv, a 1x1 conv stored 2-D). The one rule: `_fit_shape` reshapes by it, the stack checks by it."""
    delta_shape, shape = tuple(delta_shape), tuple(shape)
    return delta_shape == shape or (prod(delta_shape) == prod(shape) and delta_shape[0] == shape[0])


def _fit_shape(delta: Tensor, shape: tuple[int, ...], name: str) -> Tensor:
    """Reshape ΔW to the base shape (flattened convs, 1x1 convs stored 2-D); refuse a real mismatch."""
    if tuple(delta.shape) == shape:
        return delta
    if shape_fits(tuple(delta.shape), shape):
        return delta.reshape(shape)
    raise CompatibilityError(
        f"{name}: LoRA delta has shape {tuple(delta.shape)} but the base weight is {shape}; "
        "this LoRA was made for a different model"
    )


def raw_delta_shape(module: Factors) -> tuple[int, ...]:
    """The shape of ΔW from the factor shapes alone, without computing it."""
    t = module.tensors
    if module.kind == "lora":
        out = t["up"].shape[0]
        if "mid" in t:
            return (out, t["down"].shape[1], *t["mid"].shape[2:])
        return (out, *t["down"].shape[1:])
    if module.kind == "loha":
        if "t1" in t:
            return (t["w1a"].shape[1], t["w1b"].shape[1], *t["t1"].shape[2:])
        return (t["w1a"].shape[0], t["w1b"].shape[1])
    if module.kind == "lokr":
        s1, s2 = _lokr_factor_shape(t, 1), _lokr_factor_shape(t, 2)
        s1 = s1 + (1,) * (len(s2) - len(s1))
        s2 = s2 + (1,) * (len(s1) - len(s2))
        return tuple(a * b for a, b in zip(s1, s2, strict=True))
    return tuple(t["diff"].shape)


def _lokr_factor_shape(t: dict[str, Tensor], index: int) -> tuple[int, ...]:
    if f"w{index}" in t:
        return tuple(t[f"w{index}"].shape)
    a, b = t[f"w{index}a"], t[f"w{index}b"]
    if f"t{index}" in t:
        return (a.shape[1], b.shape[1], *t[f"t{index}"].shape[2:])
    return (a.shape[0], b.shape[1])
