"""LoraStack: several LoRAs patched exactly into a live pipeline's weights, with fast strength changes.

Depends on torch and sdlora (weights, naming, formats, report); never on diffusers at import time.

How it works (design notes, docs/formats.md §5):
* When the model was loaded from safetensors files (sdlora.weight_source), W is patched in place and W0
  is read back from the file (memory-mapped, one tensor at a time) when a layer is restored or recomputed:
  no copy is kept. Weights that diffusers left mapped from the file (it loads safetensors on the CPU that
  way) get their first patch in a new tensor instead, as in copy mode but without keeping W0: patching
  them in place would make the kernel copy every page on write, slower than fresh memory (0.94 s vs
  0.59 s for SD1.5's 1.41 GB on an idle 2-core VM). Otherwise ("copy" mode):
* Every touched weight keeps its pristine W0 in its own dtype (bit-exact restore). On the CPU that is
  the module's own tensor, untouched: the patched W is a new tensor swapped into the parameter, and a
  restore swaps W0 back (free). On other devices (or `in_place=True`) W0 is copied to the CPU and W is
  patched in place. Both cost one fresh weight-sized allocation and one pass over W0 on the first patch.
* Plain LoRA/LoCon factors are concatenated per layer along rank in float32 with alpha/rank folded
  into `up`, so W0 + Σ strength_i · scale_i · up_i @ down_i is ONE addmm (float32 weights) or one
  addmm into a float32 buffer and one cast (half precision). Other kinds (LoHa, LoKr, Tucker, full,
  DoRA) go through `LoraState.delta(name, W0)`, one layer at a time, so at most one layer's full ΔW
  exists at once.
* A strength change touches only the layers of that LoRA. On float32/float64 weights it adds the
  difference (s_new - s_old) · ΔW as one rank-r update (one rounding per change); after
  `MAX_SHIFTS` such updates a layer is recomputed from W0, which bounds the drift to a few ulps.
  `exact=True` (and every half-precision weight) recomputes from W0 on every change instead.
* Removing the last LoRA of a layer, or `clear()`, puts W0 back: bit for bit.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import accumulate
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import torch

from sdlora import formats
from sdlora.arch.blocks import block_names, parse_block_strengths
from sdlora.arch.components import canonical_name, components_of
from sdlora.arch.family import unet_config_family
from sdlora.arch.tables import table_for_model
from sdlora.delta import shape_fits
from sdlora.errors import CompatibilityError, ConfigError, SourceChangedError
from sdlora.progress import Progress, report
from sdlora.report import check_lora
from sdlora.strength import Strength
from sdlora.weight_source import file_mapped_ranges, is_file_mapped, release_mapped, source_of

log = logging.getLogger(__name__)

MAX_SHIFTS = 8  # incremental updates per layer before an exact recompute from W0
W0_MODES = ("auto", "copy")  # auto: file-backed where the weights' source file is known, else a copy
_UNSET = object()


@dataclass
class StackEntry:
    """One LoRA in the stack with its strength. Read it from `LoraStack.entries`; change it through
    the stack's methods (the stack must re-patch the weights)."""

    name: str
    lora: object  # LoraState
    strength: Strength = field(default_factory=Strength)  # its blocks named (a vector parsed by the stack)
    enabled: bool = True
    modules: list[str] = field(default_factory=list)  # canonical names applied to the model
    skipped: list[str] = field(default_factory=list)  # canonical names with no module in the model


def _multiplier(entry: StackEntry, canonical: str) -> float:
    """What entry's module `canonical` is scaled by: its strength's rule (`Strength.for_module`), 0 when off."""
    return entry.strength.for_module(canonical) if entry.enabled else 0.0


class _Factors(NamedTuple):
    """A layer's plain LoRAs, concatenated along rank in float32 (each LoRA's alpha/rank in `scales`)."""

    names: list[str]
    ranks: list[int]
    scales: list[float]
    up: torch.Tensor  # (out, Σr)
    down: torch.Tensor  # (Σr, in·k·k)
    views: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> its (up, down) columns/rows of the above


class _Layer:
    """One patched weight: where its pristine W0 is, and every stacked LoRA's factors for it.

    File-backed (`source` given): W is patched in place and W0 is read back from the model file whenever a
    restore or an exact recompute needs it; nothing is kept. Copy mode: on the CPU, W0 is the module's own
    tensor, kept untouched: the first patch computes
    W = W0 + Σ s·ΔW into a NEW tensor and swaps it into the parameter (`param.data`), and a restore swaps
    W0 back, which makes restores free and bit-exact and W0 impossible to overwrite. On other devices W0 is
    copied to the CPU (it must not hold GPU memory twice) and W is patched in place.
    """

    __slots__ = (
        "_cat",
        "applied",
        "bias_original",
        "dtype",
        "lowrank",
        "module",
        "original",
        "other",
        "patched",
        "shifts",
        "source",
        "swaps",
    )

    def __init__(self, module: torch.nn.Module, in_place: bool = False, source=None, mapped: bool = False):
        self.module = module  # the live Linear/Conv2d
        weight = module.weight.data
        self.dtype = weight.dtype
        self.source = source  # a ParamSource: W0 is read back from the model file, no copy kept
        # File-backed weights still mapped from the file (`mapped`) get the first patch in a new tensor too:
        # writing them in place would copy every page on write, slower than fresh memory; W0 is not kept.
        self.swaps = weight.device.type == "cpu" and not in_place and (source is None or mapped)
        if source is not None:
            self.original = None
        else:
            self.original = weight if self.swaps else weight.detach().to("cpu", copy=True)  # W0, same dtype
        self.patched = False  # whether the live weight holds a LoRA (in swap mode: is our own tensor)
        self.bias_original = None  # the module's own bias tensor, kept once a LoRA with a bias diff arrives
        self.lowrank: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}  # entry -> (up, down, scale)
        self.other: dict[str, tuple[object, str]] = {}  # entry -> (LoraState, module name)
        self.applied: dict[str, float] = {}  # entry -> strength currently in the weight
        self.shifts = 0
        self._cat: _Factors | None = None  # built lazily by _concatenated

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight.data

    @property
    def entries(self) -> list[str]:
        return [*self.lowrank, *self.other]

    def add_lowrank(self, name: str, up: torch.Tensor, down: torch.Tensor, scale: float) -> None:
        self.lowrank[name] = (up, down, scale)
        self._cat = None

    def drop(self, name: str) -> None:
        self.lowrank.pop(name, None)
        self.other.pop(name, None)
        self.applied.pop(name, None)
        self._cat = None

    def restore(self) -> None:
        """Put W0 back, bit for bit."""
        if self.source is not None:
            if self.patched:
                self.weight.copy_(self.w0())
                self.swaps = False  # the live tensor is our own now: later patches go in place
        elif self.swaps:
            self.module.weight.data = self.original
        else:
            self.weight.copy_(self.original)
        if self.bias_original is not None:
            self.module.bias.data = self.bias_original
        self.patched = False
        self.applied = {}

    def add_other(self, name: str, state, module_name: str) -> None:
        """A LoRA whose ΔW needs the general formula (LoHa, LoKr, Tucker, full, DoRA)."""
        self.other[name] = (state, module_name)
        if "diff_b" in state.modules[module_name].tensors and self.bias_original is None:
            self.bias_original = self.module.bias.data

    def _update_bias(self) -> None:
        """bias = b0 + Σ s·diff_b over the applied full-diff LoRAs (LyCORIS `diff_b`); always a new tensor
        (biases are tiny), so b0 itself is never changed."""
        if self.bias_original is None:
            return
        acc = self.bias_original.to(torch.float32).clone()
        for name, (state, module_name) in self.other.items():
            diff_b = state.modules[module_name].tensors.get("diff_b")
            if diff_b is not None and self.applied.get(name, 0.0) != 0.0:
                acc.add_(
                    diff_b.to(device=acc.device, dtype=torch.float32).reshape(acc.shape),
                    alpha=self.applied[name],
                )
        self.module.bias.data = acc.to(self.bias_original.dtype)

    def _concatenated(self):
        """Every plain LoRA's factors concatenated along rank in float32 (a single float32 LoRA's are
        used as they are, no copy).

        Built once per set of LoRAs with one cat per factor (instead of converting each LoRA's factors
        separately): the per-LoRA factors `shift` needs are views into these buffers. alpha/rank is not
        folded into `up` (a pass over the factors): it goes into the per-column strengths of
        `_scaled_factors` and the `alpha` of `shift`, so the buffers are never written after the cat.
        """
        if self._cat is None and self.lowrank:
            names = list(self.lowrank)
            device, out = self.weight.device, self.weight.shape[0]
            ups = [self.lowrank[n][0].reshape(out, -1) for n in names]
            downs = [d.reshape(d.shape[0], -1) for d in (self.lowrank[n][1] for n in names)]
            ranks = [d.shape[0] for d in downs]
            up = _concat(ups, 1, device)
            down = _concat(downs, 0, device)
            scales = [self.lowrank[n][2] for n in names]
            starts = accumulate([0, *ranks[:-1]])
            views = {
                n: (up[:, a : a + r], down[a : a + r]) for n, a, r in zip(names, starts, ranks, strict=True)
            }
            self._cat = _Factors(names, ranks, scales, up, down, views)
        return self._cat

    def _factors_of(self, name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(up, down, alpha/rank) of one plain LoRA: views into the concatenated buffers."""
        cat = self._concatenated()
        return (*cat.views[name], cat.scales[cat.names.index(name)])

    def base_f32(self) -> torch.Tensor:
        """W0 as float32 on the weight's device, 2-D (out, in·k·k); no copy when already float32 there.

        While no patch is in, the live weight IS W0 (swap mode: the same tensor; in place: a bit-exact
        copy), so it is read from there: on a GPU this spares uploading the CPU copy on the first patch."""
        base = self.w0().to(self.weight.device, torch.float32)
        return base.reshape(base.shape[0], -1)

    def w0(self) -> torch.Tensor:
        """W0 in its own dtype and shape: the live weight while unpatched, else the file's or the copy."""
        if not self.patched:
            return self.weight
        if self.source is not None:
            return self.source.read(self.dtype, self.weight.device).view(self.weight.shape)
        return self.original

    def copy_bytes(self) -> int:
        """Bytes this layer keeps beside the live weight to restore it (0 when file-backed)."""
        weight = 0 if self.original is None or (self.swaps and not self.patched) else self.original.nbytes
        bias = self.bias_original.nbytes if self.bias_original is not None else 0
        return weight + bias

    def rebuild(self, strengths: dict[str, float]) -> None:
        """W = W0 + Σ s·ΔW from scratch (exact: one float32 accumulation, one cast)."""
        active = {name: s for name, s in strengths.items() if s != 0.0}
        if not active:
            self.restore()
        else:
            others = [(n, v) for n, v in self.other.items() if n in active]
            base = self.base_f32()
            up_down = self._scaled_factors(active)
            if up_down is not None and self.dtype == torch.float32 and not others:
                self._store_f32(base, up_down)
            else:
                acc = torch.addmm(base, *up_down) if up_down is not None else base.clone()
                for n, (lora, module) in others:
                    acc.add_(self._other_delta(lora, module).reshape(acc.shape), alpha=active[n])
                self._store(acc)
        self.applied = dict(strengths)
        self.shifts = 0
        self._update_bias()

    def _store_f32(self, base: torch.Tensor, up_down) -> None:
        """W0 + up @ down in one pass, into our own tensor (swap mode) or straight into the weight."""
        if self.swaps and not self.patched:
            self._swap_in(torch.addmm(base, *up_down).view(self.weight.shape))
        else:
            target = self.weight.view(self.weight.shape[0], -1)
            if base.data_ptr() == target.data_ptr():  # the first in-place patch reads W0 from the weight itself
                target.addmm_(*up_down)
            else:
                torch.addmm(base, *up_down, out=target)
        self.patched = True

    def _swap_in(self, patched: torch.Tensor) -> None:
        """Make `patched` the live weight. A file-backed layer keeps nothing of the old one; its pages of the
        file mapping are released, so they don't stay resident beside the patch (W0 comes from the file)."""
        old, self.module.weight.data = self.module.weight.data, patched
        if self.source is not None:
            release_mapped(old)

    def _store(self, acc: torch.Tensor) -> None:
        """Cast a float32 W into the weight's dtype (a new tensor in swap mode on the first patch)."""
        if self.swaps and not self.patched:
            self._swap_in(acc.to(self.dtype).view(self.weight.shape))
        else:
            self.weight.view(self.weight.shape[0], -1).copy_(acc)
        self.patched = True

    def _scaled_factors(self, active: dict[str, float]):
        """(up_cat with each LoRA's strength folded into its columns, down_cat), or None without plain LoRAs."""
        cat = self._concatenated()
        if cat is None or not any(n in active for n in cat.names):
            return None
        strengths = [active.get(n, 0.0) * scale for n, scale in zip(cat.names, cat.scales, strict=True)]
        return cat.up * _per_column(strengths, cat.ranks, cat.up.device), cat.down

    def shift(self, name: str, delta_strength: float) -> None:
        """W += delta_strength · ΔW_name in place (float32/float64 weights that hold a patch only)."""
        weight = self.weight
        w2d = weight.view(weight.shape[0], -1)
        if name in self.lowrank:
            up, down, scale = self._factors_of(name)
            if up.dtype != w2d.dtype:
                up, down = up.to(w2d.dtype), down.to(w2d.dtype)
            w2d.addmm_(up, down, alpha=delta_strength * scale)
        else:
            lora, module = self.other[name]
            w2d.add_(self._other_delta(lora, module).reshape(w2d.shape).to(w2d.dtype), alpha=delta_strength)
        self.applied[name] = self.applied.get(name, 0.0) + delta_strength
        self.shifts += 1
        self._update_bias()

    def can_shift(self) -> bool:
        # A weight holding no patch may be W0 itself (swap mode): it must never be changed in place.
        return (
            self.patched
            and self.dtype in (torch.float32, torch.float64)
            and self.shifts < MAX_SHIFTS
        )

    def _other_delta(self, lora, module: str) -> torch.Tensor:
        base = self.w0().to(device=self.weight.device, dtype=torch.float32)
        return lora.delta(module, base_weight=base)


def _concat(parts: list[torch.Tensor], dim: int, device) -> torch.Tensor:
    """`torch.cat(parts, dim)` as float32 on `device`, converting each part while it is copied in.

    The result is only read: a single part that is float32 on `device` already is returned as it is, and
    parts that all are are joined by one `torch.cat` (one kernel, not one copy per part)."""
    if len(parts) == 1:
        return parts[0].to(device=device, dtype=torch.float32)
    if all(p.dtype == torch.float32 and p.device == torch.device(device) for p in parts):
        return torch.cat(parts, dim)
    shape = list(parts[0].shape)
    shape[dim] = sum(p.shape[dim] for p in parts)
    out = torch.empty(shape, dtype=torch.float32, device=device)
    start = 0
    for part in parts:
        out.narrow(dim, start, part.shape[dim]).copy_(part)
        start += part.shape[dim]
    return out


def _per_column(values: list[float], ranks: list[int], device) -> torch.Tensor:
    """A (Σr,) float32 vector repeating values[i] ranks[i] times (one small tensor, built in Python)."""
    return torch.tensor(
        [v for v, r in zip(values, ranks, strict=True) for _ in range(r)], dtype=torch.float32, device=device
    )


def _operation(method):
    """A public LoraStack method that may patch or restore weights (see LoraStack._reading)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._reading():
            return method(self, *args, **kwargs)

    return run


class KeptBytes(NamedTuple):
    """What a LoraStack holds in memory: W0 copies (for restores) and LoRA factors, in bytes."""

    weight_copies: int
    factors: int

    @property
    def total(self) -> int:
        return self.weight_copies + self.factors


class LoraStack:
    """Several LoRAs applied in place to a pipeline's UNet and text encoders.

    >>> stack = LoraStack(pipe)                       # diffusers pipeline or {"unet": ..., ...}
    >>> stack.add("style.safetensors", 0.8)           # patched now (a number or a sdlora.strength.Strength)
    >>> stack.set_strength("style", Strength(0.5, te=0.2))  # recomputes only that LoRA's layers
    >>> stack.clear()                                 # every weight bit-identical to before

    Args:
        model: a diffusers pipeline (attributes unet, text_encoder, text_encoder_2), an object with
            those attributes, or a dict of components.
        exact: recompute every changed layer from W0 instead of adding the strength difference.
        in_place: always write W into the existing weight tensors, keeping W0 as a CPU copy (the default on
            a GPU). On the CPU the default instead keeps the module's own tensor as W0 and puts a new W
            into the parameter, which skips the copy; pass True when other code holds the weight tensors
            themselves (not the Parameters) and must see the patch.
        w0: "auto" (default): where the weights were loaded from a safetensors file (sdlora's
            `load_components`, or a diffusers/transformers model whose `config._name_or_path` is a local
            folder), read W0 back from the file for restores and exact recomputes: no copy of any
            weight is kept (W is patched in place; weights still mapped from the file get their first
            patch in a new tensor and the mapped pages are released, unless `in_place=True`;
            `kept_bytes().weight_copies == 0`, `mode == "file"`). Layers with no such file (a model
            built in memory, weights the loader fused or converted), or whose file changed since the
            load, or whose weights differ from the file (changed after loading), keep a copy as with
            "copy" (logged once per reason; see `fallbacks`). "copy": always keep W0 in memory.
        on_progress: called with `Progress` while layers are patched.

    Source files are guarded: their identity (size, mtime, a hash of sampled blocks) is taken at load
    (or at the first patch) and checked when a layer first relies on the file and at the start of every
    operation that may restore from it. A layer whose file changed before its first patch keeps a copy.
    A file that changes while layers restored from it are patched makes every later change raise
    `SourceChangedError` (nothing is changed): those weights can no longer be restored exactly; put the
    file back or reload the model.
    """

    def __init__(
        self,
        model,
        *,
        exact: bool = False,
        in_place: bool = False,
        w0: str = "auto",
        on_progress: Callable[[Progress], None] | None = None,
    ):
        if w0 not in W0_MODES:
            raise ConfigError(f"w0={w0!r}: use one of {', '.join(W0_MODES)}")
        self.model = model
        self.components = components_of(model)
        self.exact = exact
        self.in_place = in_place
        self.w0 = w0
        self.on_progress = on_progress
        self._sources: dict[str, object] = {}  # component -> ComponentSource | None, found once
        self._fallbacks: dict[str, int] = {}  # why layers were kept as copies -> count (logged once per reason)
        self._depth = 0  # nesting of public operations (source handles are closed when the outermost ends)
        self._entries: dict[str, StackEntry] = {}
        self._layers: dict[str, _Layer] = {}
        self._live: dict[str, torch.nn.Module] | None = None
        self._family = _UNSET
        self._reports: dict[str, object] = {}
        self._batch_depth = 0
        self._pending: dict[str, dict[str, float | None]] = {}  # layer -> {entry: old strength}
        self._paths: dict[str, tuple[str, str]] = {}  # canonical -> (component, module path)
        self._checked: dict[int, bool] = {}  # source file -> unchanged, within the current operation
        self._mapped_ranges: list[tuple[int, int]] | None = None  # file mappings, within the operation

    # ----- public API -------------------------------------------------------------------------

    @property
    def family(self) -> str | None:
        """The model's base family ("sd1", "sd2", "sdxl"; None for other models), found once."""
        if self._family is _UNSET:
            self._family = model_family_of(self.components)
        return self._family

    @property
    def entries(self) -> list[StackEntry]:
        """The stacked LoRAs, in the order they were added."""
        return list(self._entries.values())

    @_operation
    def add(self, lora, strength: Strength | float = 1.0, name=None):
        """Add a LoRA (path or LoraState) at `strength` and patch its layers. Returns its name in the stack.

        Raises CompatibilityError (nothing changed) when the LoRA was made for another base family,
        when its shapes do not fit, or when none of its modules exist in the model; ConfigError for a
        strength out of range or a block this model does not have.
        """
        state = _load(lora, self._custom_table())
        name = self._new_name(name, state)
        entry = StackEntry(name, state, self._named_blocks(strength))
        plan = self._plan(state, entry)
        entry.modules = [canonical for canonical, _, _ in plan]
        self._entries[name] = entry
        for canonical, module, live in plan:
            self._attach(name, canonical, module, live, state)
        self._changed(name, entry.modules, added=True)
        return name

    @_operation
    def set_strength(self, name, strength: Strength | float) -> None:
        """Replace a LoRA's whole strength (a number: the same for text encoder and UNet, no blocks); only
        the layers that LoRA touches are recomputed."""
        entry = self._entry(name)
        entry.strength = self._named_blocks(strength)
        self._changed(name, entry.modules)

    @_operation
    def enable(self, name) -> None:
        """Put a disabled LoRA back into the weights."""
        self._entry(name).enabled = True
        self._changed(name, self._entries[name].modules)

    @_operation
    def disable(self, name) -> None:
        """Take a LoRA out of the weights but keep it in the stack (strengths kept)."""
        self._entry(name).enabled = False
        self._changed(name, self._entries[name].modules)

    @_operation
    def remove(self, name) -> None:
        """Take a LoRA out of the stack; layers no other LoRA touches get W0 back bit for bit."""
        entry = self._entry(name)
        entry.enabled = False
        self._changed(name, entry.modules)
        for canonical in entry.modules:
            layer = self._layers[canonical]
            layer.drop(name)
            if not layer.entries:
                layer.restore()
                del self._layers[canonical]
        del self._entries[name]
        self._reports.pop(name, None)

    @_operation
    def clear(self) -> None:
        """Remove every LoRA: every patched weight is restored bit for bit."""
        with torch.no_grad():
            for layer in self._layers.values():
                layer.restore()
        self._layers.clear()
        self._entries.clear()
        self._reports.clear()
        self._pending.clear()

    @_operation
    def refresh(self) -> None:
        """Recompute every patched layer exactly from W0 (drops any incremental rounding)."""
        self._apply({canonical: None for canonical in self._layers}, force_rebuild=True)

    @contextmanager
    def batch(self) -> Iterator[LoraStack]:
        """Defer patching until the block ends, then recompute each changed layer once.

        >>> with stack.batch():
        ...     for path in paths:
        ...         stack.add(path)
        """
        with self._reading():
            self._batch_depth += 1
            try:
                yield self
            finally:
                self._batch_depth -= 1
                if self._batch_depth == 0 and self._pending:
                    pending, self._pending = self._pending, {}
                    self._apply(pending, force_rebuild=True)

    def report(self, name):
        """The format layer's load report for LoRA `name` against the live model (sdlora.report)."""
        entry = self._entry(name)
        if name not in self._reports:
            self._reports[name] = check_lora(entry.lora, table_for_model(SimpleNamespace(**self.components)))
        return self._reports[name]

    def block_names(self) -> list[str]:
        """The block names this model's UNet accepts in `block_strengths` (A1111 order)."""
        unet = self.components.get("unet")
        n_down = len(getattr(unet, "down_blocks", [])) or 4
        n_up = len(getattr(unet, "up_blocks", [])) or 4
        return block_names(n_down, n_up)

    @property
    def mode(self) -> str:
        """Where W0 of the patched layers comes from: "file" (read back from the model file, no copy kept),
        "copy" (kept in memory), "mixed", or "none" while nothing is patched. `fallbacks` says why copies."""
        modes = {"file" if layer.source is not None else "copy" for layer in self._layers.values()}
        return modes.pop() if len(modes) == 1 else ("mixed" if modes else "none")

    @property
    def fallbacks(self) -> dict[str, int]:
        """{reason: number of layers} for the layers whose W0 is kept as a copy although w0="auto"."""
        return dict(self._fallbacks)

    def kept_bytes(self) -> KeptBytes:
        """The memory the stack holds: copies of W0 (0 when file-backed) and the LoRA factors (the loaded
        tensors and the per-layer concatenations), each tensor counted once."""
        copies = sum(layer.copy_bytes() for layer in self._layers.values())
        sizes: dict[int, int] = {}
        tensors = [t for e in self._entries.values() for m in e.lora.modules.values() for t in m.tensors.values()]
        tensors += [t for layer in self._layers.values() if layer._cat for t in (layer._cat.up, layer._cat.down)]
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                sizes[tensor.data_ptr()] = max(sizes.get(tensor.data_ptr(), 0), tensor.nbytes)
        return KeptBytes(copies, sum(sizes.values()))

    def strengths(self, canonical: str) -> dict[str, float]:
        """{entry: multiplier} for one patched layer (what the weight should hold)."""
        layer = self._layers[canonical]
        return {n: _multiplier(self._entries[n], canonical) for n in layer.entries}

    # ----- internals --------------------------------------------------------------------------

    def _entry(self, name) -> StackEntry:
        entry = self._entries.get(name)
        if entry is None:
            have = ", ".join(self._entries) or "none"
            raise ConfigError(f"no LoRA named {name!r} in the stack (stacked: {have})")
        return entry

    def _new_name(self, name, state) -> str:
        if name is None:
            name = Path(state.path).stem if getattr(state, "path", None) else f"lora{len(self._entries) + 1}"
        if name in self._entries:
            raise ConfigError(f"a LoRA named {name!r} is already in the stack; pass name= to add it again")
        return name

    def _named_blocks(self, strength: Strength | float) -> Strength:
        """`strength` as a Strength whose block factors are checked and named for this model (an A1111
        vector becomes (name, factor) pairs), so `Strength.for_module` applies it without the model."""
        value = Strength.of(strength)
        if value.blocks is None:
            return value
        blocks = dict(value.blocks) if isinstance(value.blocks, tuple) else value.blocks
        return replace(value, blocks=tuple(parse_block_strengths(blocks, self.block_names()).items()) or None)

    def _custom_table(self):
        """The live module table when the model is no SD family (so a file's names can be resolved
        against it); None for SD1/SD2/SDXL, whose files carry their own family for the mismatch check."""
        if self.family is not None:
            return None
        return table_for_model(SimpleNamespace(**self.components))

    def _live_modules(self) -> dict[str, torch.nn.Module]:
        """{canonical name: live Linear/Conv2d} for every component, built once."""
        if self._live is None:
            self._live, self._paths = {}, {}
            for component, model in self.components.items():
                for path, module in model.named_modules():
                    if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                        canonical = canonical_name(component, path)
                        self._live[canonical] = module
                        self._paths[canonical] = (component, path)
        return self._live

    def _plan(self, state, entry) -> list[tuple[str, object, torch.nn.Module]]:
        """Check the whole LoRA against the model before anything changes; return what to patch."""
        _check_family(state, self.family)
        live = self._live_modules()
        plan, mismatched = [], []
        for canonical, module in state.modules.items():
            target = live.get(canonical)
            if target is None:
                entry.skipped.append(canonical)
            elif not _fits(module, tuple(target.weight.shape)):
                mismatched.append(
                    f"{canonical} (LoRA {module.delta_shape()}, model {tuple(target.weight.shape)})"
                )
            elif not _bias_fits(module, target):
                mismatched.append(
                    f"{canonical} (LoRA has a bias diff of {module.tensors['diff_b'].numel()} values, "
                    f"model bias {None if target.bias is None else target.bias.numel()})"
                )
            else:
                plan.append((canonical, module, target))
        if mismatched:
            raise CompatibilityError(
                f"{entry_label(state)} does not fit this model: {len(mismatched)} module(s) have other shapes, "
                f"e.g. {'; '.join(mismatched[:3])}. It was made for a different base model."
            )
        if not plan:
            raise CompatibilityError(
                f"{entry_label(state)}: none of its {len(state.modules)} modules exist in this model "
                f"(first: {next(iter(state.modules), 'none')}); it was made for a different base model"
            )
        if entry.skipped:
            log.warning("%s: %d module(s) not in this model, skipped", entry_label(state), len(entry.skipped))
        return plan

    def _attach(self, name, canonical, module, live, state) -> None:
        layer = self._layers.get(canonical)
        if layer is None:
            source = self._file_source(canonical, live)
            layer = self._layers[canonical] = _Layer(live, self.in_place, source, source is not None and self._mapped(live.weight))
        if module.kind == "lora" and "mid" not in module.tensors and "dora_scale" not in module.tensors:
            layer.add_lowrank(name, module.tensors["up"], module.tensors["down"], module.scale)
        else:
            layer.add_other(name, state, canonical)

    # ----- W0 from the model file ---------------------------------------------------------------

    def _file_source(self, canonical: str, live: torch.nn.Module):
        """The ParamSource W0 of a layer about to be patched can be read back from, or None (keep a copy)."""
        if self.w0 == "copy":
            return None
        component, path = self._paths[canonical]
        if component not in self._sources:
            self._sources[component] = source_of(self.components[component])
        source = self._sources[component]
        param = source.params.get(f"{path}.weight") if source is not None else None
        if param is None:
            self._fallback("no model file known for these weights (built in memory, or converted by the loader)")
        elif not self._file_ok(param.file):
            self._fallback(f"{param.file.path} changed since the model was loaded from it")
        elif not param.matches(live.weight):
            self._fallback(f"the weights in memory differ from {param.file.path} (changed after loading)")
        else:
            return param
        return None

    def _mapped(self, weight: torch.Tensor) -> bool:
        """Whether a CPU weight is still a mapping of its file (its address ranges read once per operation)."""
        if weight.device.type != "cpu":
            return False
        if self._mapped_ranges is None:
            self._mapped_ranges = file_mapped_ranges()
        return is_file_mapped(weight, self._mapped_ranges)

    def _fallback(self, reason: str) -> None:
        if reason not in self._fallbacks:
            level = logging.INFO if reason.startswith("no model file") else logging.WARNING
            log.log(level, "LoraStack keeps a copy of W0 for layers whose %s", reason)
        self._fallbacks[reason] = self._fallbacks.get(reason, 0) + 1

    def _file_ok(self, file) -> bool:
        """Whether a source file is unchanged; checked once per public operation."""
        if id(file) not in self._checked:
            self._checked[id(file)] = file.unchanged()
        return self._checked[id(file)]

    @contextmanager
    def _reading(self):
        """One public operation: before it changes anything, every file patched layers are restored from is
        checked (SourceChangedError when one changed); its file handles are closed when it ends."""
        self._depth += 1
        try:
            if self._depth == 1:
                self._checked, self._mapped_ranges = {}, None
                self._check_sources()
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                for source in filter(None, self._sources.values()):
                    for file in source.files:
                        file.close()

    def _check_sources(self) -> None:
        files = {id(layer.source.file): layer.source.file for layer in self._layers.values()
                 if layer.source is not None and layer.patched}
        for file in files.values():
            if not self._file_ok(file):
                count = sum(1 for layer in self._layers.values() if layer.source and layer.source.file is file)
                raise SourceChangedError(
                    f"{file.path} changed since the model was loaded from it (size, modification time or "
                    f"content), and {count} patched weight(s) are restored from that file: they can't be "
                    "restored exactly. Put the original file back, or reload the model (its weights in "
                    "memory still hold the LoRA patches)."
                )

    def _changed(self, name: str, canonicals: list[str], added: bool = False) -> None:
        pending = {c: {name: None if added else self._layers[c].applied.get(name, 0.0)} for c in canonicals}
        if self._batch_depth:
            for canonical, olds in pending.items():
                self._pending.setdefault(canonical, {}).update(olds)
            return
        self._apply(pending, force_rebuild=False)

    def _apply(self, pending: dict[str, dict | None], force_rebuild: bool) -> None:
        """Bring every layer in `pending` to its wanted strengths (shift when one LoRA changed)."""
        total = len(pending)
        with torch.no_grad():
            for done, (canonical, olds) in enumerate(pending.items(), 1):
                layer = self._layers.get(canonical)
                if layer is None:
                    continue
                if force_rebuild or self.exact or len(olds) != 1 or not self._shifted(layer, canonical, *olds):
                    layer.rebuild(self.strengths(canonical))
                report(self.on_progress, done, total, canonical)

    def _shifted(self, layer: _Layer, canonical: str, entry: str) -> bool:
        """Move one LoRA's strength in `layer` by an in-place update; False when the layer must be rebuilt.

        Only `entry` changed, so the other LoRAs' strengths are the ones `layer.applied` holds (reading
        them there spares recomputing every entry's strength per layer on each slider move). When all
        strengths end at 0 the layer is rebuilt: that restores W0 bit for bit instead of leaving a
        shift's rounding."""
        if not layer.can_shift():
            return False
        target = _multiplier(self._entries[entry], canonical)
        if target == 0.0 and not any(v != 0.0 for n, v in layer.applied.items() if n != entry):
            return False
        step = target - layer.applied.get(entry, 0.0)
        if step != 0.0:
            layer.shift(entry, step)
        return True


def entry_label(state) -> str:
    return state.path or "LoRA"


def _load(lora, table=None):
    if isinstance(lora, str | Path):
        return formats.load_lora(lora, table=table)
    if not hasattr(lora, "modules") or not hasattr(lora, "delta"):
        raise ConfigError(f"expected a LoRA file path or a LoraState, got {type(lora).__name__}")
    return lora


def _fits(module, weight_shape: tuple[int, ...]) -> bool:
    """Whether a module's ΔW can be shaped like the weight (`sdlora.delta.shape_fits`, the delta math's rule)."""
    try:
        shape = module.raw_delta_shape()
    except (KeyError, IndexError, ValueError, RuntimeError):  # malformed factors: the delta math says why
        return True
    return shape_fits(shape, weight_shape)


def _bias_fits(module, target: torch.nn.Module) -> bool:
    """A bias diff (LyCORIS full `diff_b`) needs a bias of the same size in the model."""
    diff_b = module.tensors.get("diff_b")
    return diff_b is None or (target.bias is not None and diff_b.numel() == target.bias.numel())


def _check_family(state, model_family: str | None) -> None:
    """Refuse a LoRA made for another base family, naming both (before anything changes)."""
    lora_family = getattr(state, "family", None)
    if model_family and lora_family and model_family != lora_family:
        raise CompatibilityError(
            f"{entry_label(state)} is a {lora_family} LoRA but the model is {model_family}; "
            f"use a LoRA trained for {model_family}"
        )


def model_family_of(components) -> str | None:
    """The base family of live components ("sd1", "sd2", "sdxl") or None for other models.

    The module-table match (arch.tables) is exact; a model that differs from the shipped tables in some
    module (a fine-tune with an extra layer) still has the UNet's cross-attention width to go by.
    """
    family = table_for_model(SimpleNamespace(**components)).family
    if family is None:
        config = getattr(components.get("unet"), "config", None)
        family = unet_config_family(config) if config is not None else None
    return family
