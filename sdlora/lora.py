"""Training-time LoRA layers and injection. Depends on torch, sdlora.arch (names, target presets) and sdlora.weights.

Decision 1, how LoRA attaches: a removable forward hook on the base ``nn.Linear``/``nn.Conv2d`` (kohya's
forward-patch idea, done with ``register_forward_hook``), not PEFT's wrapper module. The base model's
``state_dict`` keys never change and its weights are never written: the LoRA layers live in a separate
``LoraNetwork`` (an ``nn.Module`` you can save, load and hand to an optimizer), and ``remove()`` takes the
hooks off. Base parameters are frozen (``requires_grad_(False)``) by the trainer, not here.

Decision 2, name clash: ``sdlora.settings.config.LoraConfig`` is sdlora's; this module needs no peft.

Math (Hu et al. 2021, https://arxiv.org/abs/2106.09685 §4.1): ``y = W x + scale * up(down(dropout(x)))``,
``scale = alpha / rank``; ``down`` is Kaiming-uniform initialised and ``up`` zero, so a fresh LoRA changes
nothing. DoRA (Liu et al. 2024, https://arxiv.org/abs/2402.09353 §4.1, eq. 5):
``W_dora = m * W' / ||W'||`` with ``W' = W + scale * up @ down``, the norm detached as in the paper's §4.3 to save
memory; ``m`` starts at ``||W||``. The norm runs along one of two axes (docs/formats.md §2.9): ``"in"``, one
norm and magnitude per input column (the layout A1111, ComfyUI and LyCORIS all apply exactly; the default for
Kohya files), or ``"out"``, one per output row (PEFT's layout, the only one a diffusers/PEFT file holds).
Per output row, ``y = m / ||W'||_row * (W' x) + b`` reuses the base output; per input column ``m / ||W'||_col``
scales the input columns, and the base layer runs again on the scaled input (one extra base matmul).

>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 4))
>>> net = LoraNetwork()
>>> net.add("unet.0", model[0], rank=2, alpha=2.0)
>>> net.attach()
>>> net.remove()
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from sdlora.arch.blocks import block_of
from sdlora.arch.components import canonical_name
from sdlora.arch.targets import match_targets
from sdlora.errors import ConfigError
from sdlora.weights import LoraModule, LoraState


class LoraLayer(nn.Module):
    """The trainable part for one base layer: ``down`` (rank, in[, kh, kw]), ``up`` (out, rank[, 1, 1]).

    Args:
        base: the nn.Linear or nn.Conv2d it adds to (kept by reference, never modified).
        rank: low-rank size.
        alpha: scale = alpha / rank.
        dropout: dropout probability on the LoRA input.
        dora: also learn a magnitude ``magnitude`` (DoRA).
        dora_axis: ``"in"``: one magnitude per input column, (1, in[, 1, 1]); ``"out"``: one per output row,
            (out, 1[, 1, 1]) (docs/formats.md §2.9).
        rank_dropout: in training, the probability of zeroing each rank channel of the ``down`` output (one draw
            per sample and channel); the kept ones are scaled by 1 / (1 - p), as sd-scripts does.
        module_dropout: in training, the probability of skipping this layer's LoRA for a whole forward pass.

    Both dropouts draw from torch's global generators (as ``nn.Dropout`` does), whose state the training
    checkpoint saves and restores, so a resumed run draws what an uninterrupted one does.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0,  # noqa: PLR0913
                 dora: bool = False, *, rank_dropout: float = 0.0, module_dropout: float = 0.0,
                 dora_axis: str = "in"):
        super().__init__()
        if dora_axis not in DORA_AXES:
            raise ConfigError(f"lora.dora_axis: {dora_axis!r} is not a DoRA layout; use one of {', '.join(DORA_AXES)}")
        self.rank, self.alpha = rank, float(alpha)
        self.rank_dropout, self.module_dropout = float(rank_dropout), float(module_dropout)
        self.is_conv = isinstance(base, nn.Conv2d)
        if self.is_conv:
            self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,
                                  base.dilation, bias=False)
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            self.down = nn.Linear(base.in_features, rank, bias=False)
            self.up = nn.Linear(rank, base.out_features, bias=False)
        self.down.to(dtype=torch.float32, device=base.weight.device)
        self.up.to(dtype=torch.float32, device=base.weight.device)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dora_axis = dora_axis if dora else None
        self.magnitude = nn.Parameter(self._norm(base.weight.float())) if dora else None

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def _norm(self, weight: torch.Tensor) -> torch.Tensor:
        """L2 norm along the DoRA axis, keep-dim: per output row (out, 1[, 1, 1]) or per input column
        (1, in[, 1, 1]), a conv's column spanning its output channels and kernel positions."""
        ones = [1] * (weight.dim() - 2)
        if self.dora_axis == "out":
            return weight.flatten(1).norm(dim=1).reshape(-1, 1, *ones)
        return weight.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, -1, *ones)

    def delta_weight(self) -> torch.Tensor:
        """scale * up @ down, shaped like the base weight (float32)."""
        up = self.up.weight.flatten(1)      # (out, rank)
        down = self.down.weight.flatten(1)  # (rank, in*kh*kw)
        return (up @ down).reshape(up.shape[0], *self.down.weight.shape[1:]) * self.scale

    def lora_output(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.down.weight.dtype:
            x = x.to(self.down.weight.dtype)
        if self.has_dropout:
            x = self.dropout(x)
        h = self.down(x)
        if self.drops_ranks:
            h = self._drop_ranks(h)
        return self.up(h) * self.scale

    @property
    def drops_ranks(self) -> bool:
        return self.rank_dropout > 0 and self.training

    def _drop_ranks(self, h: torch.Tensor) -> torch.Tensor:
        """Zero each (sample, rank channel) of `h` with probability rank_dropout and scale the rest up so the
        expected output is unchanged (sd-scripts: "as if the rank is changed"). The rank axis is the last one
        for Linear (batch[, tokens], rank) and axis 1 for Conv2d (batch, rank, h, w)."""
        keep = torch.rand((h.shape[0], self.rank), device=h.device) >= self.rank_dropout
        ones = [1] * (h.dim() - 2)
        keep = keep.view(h.shape[0], self.rank, *ones) if self.is_conv else keep.view(h.shape[0], *ones, self.rank)
        return h * keep.to(h.dtype) / (1.0 - self.rank_dropout)

    def skips_step(self) -> bool:
        """Module dropout: one draw per forward pass, only in training. The draw is on the CPU generator so
        that deciding costs no device sync."""
        return self.module_dropout > 0 and self.training and torch.rand(1).item() < self.module_dropout

    @property
    def has_dropout(self) -> bool:
        return isinstance(self.dropout, nn.Dropout) and self.training

    def _linear_added(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """``output + scale * up(down(dropout(x)))`` for a Linear base, with the up projection, the scale and
        the sum in one ``addmm``: two kernels (and their backward) per layer instead of four, which is most
        of the LoRA's cost on small models, where the per-kernel overhead dominates."""
        h = F.linear(self.dropout(x) if self.has_dropout else x, self.down.weight)
        flat = torch.addmm(output.reshape(-1, output.shape[-1]), h.reshape(-1, self.rank), self.up.weight.t(),
                           alpha=self.scale)
        return flat.view(output.shape)

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the base layer: returns the LoRA-adjusted output."""
        x = args[0]
        if self.skips_step():
            return output
        if (self.magnitude is None and not self.is_conv and not self.drops_ranks
                and x.dtype == output.dtype == self.up.weight.dtype):
            return self._linear_added(x, output)
        if self.dora_axis == "in":
            return self._dora_in(module, x, output)
        delta = self.lora_output(x)
        if self.magnitude is None:
            return output + delta.to(output.dtype)
        bias = module.bias
        base_out = output if bias is None else output - _bias_shape(bias, output, self.is_conv)
        merged = module.weight.float() + self.delta_weight()
        factor = self.magnitude / self._norm(merged).detach()  # (out, 1[, 1, 1])
        factor = factor.reshape(-1) if not self.is_conv else factor.reshape(1, -1, 1, 1)
        result = (base_out.float() + delta.float()) * factor
        if bias is not None:
            result = result + _bias_shape(bias, output, self.is_conv).float()
        return result.to(output.dtype)

    def _dora_in(self, module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Per-input-column DoRA: W_dora = W' * f with f = m / ||W'||_col scales input columns, so
        W_dora x = W (f * x) + lora(f * x): the base layer (its own bias, stride, padding) and the LoRA path run
        on the column-scaled input (a conv's zero padding stays zero). The base output cannot be reused."""
        merged = module.weight.float() + self.delta_weight()
        factor = (self.magnitude / self._norm(merged).detach()).reshape(-1)  # (in,)
        scaled = x.float() * (factor.reshape(1, -1, 1, 1) if self.is_conv else factor)
        bias = None if module.bias is None else module.bias.float()
        weight = module.weight.float()
        if self.is_conv:
            base_out = F.conv2d(scaled, weight, bias, module.stride, module.padding, module.dilation, module.groups)
        else:
            base_out = F.linear(scaled, weight, bias)
        return (base_out + self.lora_output(scaled).float()).to(output.dtype)


DORA_AXES = ("in", "out")


def _bias_shape(bias: torch.Tensor, output: torch.Tensor, is_conv: bool) -> torch.Tensor:
    return bias.reshape(1, -1, 1, 1).to(output.dtype) if is_conv else bias.to(output.dtype)


def _key(name: str) -> str:
    """ModuleDict keys cannot hold dots; canonical names can."""
    return name.replace(".", "__")


class LoraNetwork(nn.Module):
    """All LoRA layers of one training run, keyed by canonical module name (``unet.down_blocks...``).

    ``state_dict()`` keys are ``layers.<canonical name with '.' -> '__'>.{down,up}.weight`` (+ ``.magnitude``).
    """

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleDict()
        self._bases: dict[str, nn.Module] = {}
        self._handles: list = []

    def add(self, name: str, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0,  # noqa: PLR0913
            dora: bool = False, *, rank_dropout: float = 0.0, module_dropout: float = 0.0,
            dora_axis: str = "in") -> None:
        """Create the LoRA layer for `base` under canonical `name` (not attached until `attach()`)."""
        self.layers[_key(name)] = LoraLayer(base, rank, alpha, dropout, dora, rank_dropout=rank_dropout,
                                              module_dropout=module_dropout, dora_axis=dora_axis)
        self._bases[name] = base

    @property
    def names(self) -> list[str]:
        return list(self._bases)

    def layer(self, name: str) -> LoraLayer:
        return self.layers[_key(name)]

    def attach(self) -> None:
        """Register the forward hooks (idempotent)."""
        if self._handles:
            return
        for name, base in self._bases.items():
            self._handles.append(base.register_forward_hook(partial(_call_hook, self.layer(name))))

    def remove(self) -> None:
        """Take every hook off; the base model behaves exactly as before injection."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def to_state(self, metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None,
                 family: str | None = None):
        """Export as a canonical `sdlora.weights.LoraState` (what `sdlora.save_lora` writes).

        `family` ("sd1" | "sd2" | "sdxl" | None) selects the Kohya spelling (SDXL: lora_te1/te2, SGM UNet names).
        """
        modules = {}
        for name, base in self._bases.items():
            layer = self.layer(name)
            tensors = {"down": _export(layer.down.weight, dtype), "up": _export(layer.up.weight, dtype)}
            if layer.magnitude is not None:
                tensors["dora_scale"] = _export(layer.magnitude, dtype)
            modules[name] = LoraModule(kind="lora", tensors=tensors, alpha=layer.alpha,
                                       dora_axis=layer.dora_axis,
                                       shape=tuple(base.weight.shape))
        return LoraState(modules=dict(sorted(modules.items())), metadata=dict(metadata or {}), family=family)


def _block_rank(name: str, table: dict[str, tuple[int, float]] | None,
                default: tuple[int, float]) -> tuple[int, float]:
    """(rank, alpha) of module `name`: its UNet block's entry in `table`, else `default`. Text encoders
    (block BASE) and modules in no block are never in a table."""
    if table is None or not name.startswith("unet."):
        return default
    return table.get(block_of(name), default)


def _call_hook(layer: LoraLayer, module: nn.Module, args: tuple, output):
    return layer.hook(module, args, output)


def _export(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    out = tensor.detach().to("cpu").contiguous()
    return out.to(dtype) if dtype is not None else out.clone()


def inject_lora(  # noqa: PLR0913 - keyword-only options, one per LoraConfig field
        components: dict[str, nn.Module], preset: str, *, rank: int, alpha: float,
                conv_rank: int | None = None, conv_alpha: float | None = None, dropout: float = 0.0,
                dora: bool = False, dora_axis: str = "in", rank_dropout: float = 0.0, module_dropout: float = 0.0,
                block_ranks: dict[str, tuple[int, float]] | None = None,
                conv_block_ranks: dict[str, tuple[int, float]] | None = None,
                rank_stabilized: bool = False) -> LoraNetwork:
    """Attach LoRA to the modules `preset` targets in each component and return the network.

    Args:
        components: {"unet": unet, "text_encoder": te, ...}; component names are canonical prefixes.
        preset: a `sdlora.arch.targets.PRESETS` key.
        rank, alpha: for Linear and 1x1 conv targets.
        conv_rank, conv_alpha: for larger conv kernels (default: rank, alpha).
        dropout, dora, dora_axis, rank_dropout, module_dropout: see LoraLayer.
        block_ranks, conv_block_ranks: {UNet block name (sdlora.arch.blocks): (rank, alpha)} overriding
            rank/alpha (conv_rank/conv_alpha) for the modules in that block; rank 0 leaves them without LoRA.
        rank_stabilized: scale alpha / sqrt(rank) (rsLoRA). Kept as the module's alpha x sqrt(rank), so the
            usual alpha / rank of every loader (and of the exported file) gives that scale.

    Returns:
        The attached LoraNetwork (float32 parameters on each base layer's device).

    >>> from torch import nn
    >>> unet = nn.Module(); unet.attn1 = nn.Module(); unet.attn1.to_q = nn.Linear(4, 4)
    >>> net = inject_lora({"unet": unet}, "qv", rank=2, alpha=2)
    >>> net.names
    ['unet.attn1.to_q']
    """
    network = LoraNetwork()
    for component, model in components.items():
        for path, module, kind in match_targets(model, component, preset):
            is_big_conv = kind == "conv"
            name = canonical_name(component, path)
            default = ((conv_rank or rank), conv_alpha if conv_alpha is not None else alpha) if is_big_conv \
                else (rank, alpha)
            module_rank, module_alpha = _block_rank(name, conv_block_ranks if is_big_conv else block_ranks, default)
            if module_rank == 0:
                continue
            if rank_stabilized:
                module_alpha *= math.sqrt(module_rank)
            network.add(name, module, rank=module_rank, alpha=module_alpha, dropout=dropout, dora=dora,
                        rank_dropout=rank_dropout, module_dropout=module_dropout, dora_axis=dora_axis)
    network.attach()
    return network
