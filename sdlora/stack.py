"""LoraStack: several LoRAs patched exactly into a live pipeline's weights, with fast strength changes.

Depends on torch and sdlora (weights, naming, formats, report); never on diffusers at import time.

How it works (design notes, FORMATS §5):
* Every touched weight keeps a pristine copy W0 on the CPU, in its own dtype (bit-exact restore).
* Plain LoRA/LoCon factors are cached per layer in float32 with alpha/rank folded into `up`, so
  W0 + Σ strength_i · scale_i · up_i @ down_i is ONE addmm over the factors concatenated along rank,
  written straight into the existing parameter (float32) or through one float32 buffer (half
  precision). Other kinds (LoHa, LoKr, Tucker, full, DoRA) go through `LoraState.delta(name, W0)`,
  one layer at a time, so at most one layer's full ΔW exists at once.
* A strength change touches only the layers of that LoRA. On float32/float64 weights it adds the
  difference (s_new - s_old) · ΔW as one rank-r update (one rounding per change); after
  `MAX_SHIFTS` such updates a layer is recomputed from W0, which bounds the drift to a few ulps.
  `exact=True` (and every half-precision weight) recomputes from W0 on every change instead.
* Removing the last LoRA of a layer, or `clear()`, copies W0 back: bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from types import SimpleNamespace

import torch

from sdlora.blocks import block_names, block_of, check_strength, parse_block_strengths
from sdlora.errors import CompatibilityError, ConfigError
from sdlora.progress import Progress, report

log = logging.getLogger(__name__)

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
MAX_SHIFTS = 8  # incremental updates per layer before an exact recompute from W0
_UNSET = object()


@dataclass
class StackEntry:
    """One LoRA in the stack with its strengths. Read it from `LoraStack.entries`; change it through
    the stack's methods (the stack must re-patch the weights)."""

    name: str
    lora: object  # LoraState
    strength: float = 1.0
    te_strength: float | None = None  # None: follow `strength`
    unet_strength: float | None = None  # None: follow `strength`
    block_strengths: dict[str, float] = field(default_factory=dict)
    enabled: bool = True
    modules: list[str] = field(default_factory=list)  # canonical names applied to the model
    skipped: list[str] = field(default_factory=list)  # canonical names with no module in the model

    def module_strength(self, canonical: str) -> float:
        """The multiplier this LoRA's module `canonical` gets (0 when disabled)."""
        if not self.enabled:
            return 0.0
        if canonical.startswith("unet."):
            base = self.strength if self.unet_strength is None else self.unet_strength
        else:
            base = self.strength if self.te_strength is None else self.te_strength
        block = block_of(canonical)
        return base * self.block_strengths.get(block, 1.0) if block else base


class _Layer:
    """One patched weight: its pristine copy and every stacked LoRA's factors for it."""

    __slots__ = ("_cat", "applied", "lowrank", "original", "other", "shifts", "weight")

    def __init__(self, weight: torch.Tensor):
        self.weight = weight  # the live parameter's tensor, patched in place
        self.original = weight.detach().to("cpu", copy=True)  # W0, same dtype
        self.lowrank: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # entry -> (up·scale, down) f32
        self.other: dict[str, tuple[object, str]] = {}  # entry -> (LoraState, module name)
        self.applied: dict[str, float] = {}  # entry -> strength currently in the weight
        self.shifts = 0
        self._cat = None  # (names, ranks, up_cat (out, Σr), down_cat (Σr, in)), built on first rebuild

    @property
    def entries(self) -> list[str]:
        return [*self.lowrank, *self.other]

    def add_lowrank(self, name: str, up: torch.Tensor, down: torch.Tensor) -> None:
        self.lowrank[name] = (up, down)
        self._cat = None

    def drop(self, name: str) -> None:
        self.lowrank.pop(name, None)
        self.other.pop(name, None)
        self.applied.pop(name, None)
        self._cat = None

    def _concatenated(self):
        """The cached factors of every plain LoRA concatenated along rank (rebuilt when the set changes)."""
        if self._cat is None and self.lowrank:
            names = list(self.lowrank)
            ranks = [self.lowrank[n][1].shape[0] for n in names]
            up = torch.cat([self.lowrank[n][0] for n in names], 1)
            down = torch.cat([self.lowrank[n][1] for n in names], 0)
            self._cat = (names, ranks, up, down)
            start = 0
            for n, r in zip(names, ranks, strict=True):  # per-LoRA factors become views: no second copy
                self.lowrank[n] = (up[:, start : start + r], down[start : start + r])
                start += r
        return self._cat

    def base_f32(self) -> torch.Tensor:
        """W0 as float32 on the weight's device, 2-D (out, in·k·k); no copy when already float32 there."""
        base = self.original.to(device=self.weight.device, dtype=torch.float32)
        return base.reshape(base.shape[0], -1)

    def rebuild(self, strengths: dict[str, float]) -> None:
        """W = W0 + Σ s·ΔW from scratch (exact: one float32 accumulation, one cast)."""
        active = {name: s for name, s in strengths.items() if s != 0.0}
        w2d = self.weight.view(self.weight.shape[0], -1)
        if not active:
            self.weight.copy_(self.original)  # bit-exact restore
        else:
            others = [(n, v) for n, v in self.other.items() if n in active]
            base = self.base_f32()
            up_down = self._scaled_factors(active)
            if up_down is not None and self.weight.dtype == torch.float32 and not others:
                torch.addmm(base, *up_down, out=w2d)  # one pass: W0 + up_cat @ down_cat straight into W
            else:
                acc = torch.addmm(base, *up_down) if up_down is not None else base.clone()
                for n, (lora, module) in others:
                    acc.add_(self._other_delta(lora, module).reshape(acc.shape), alpha=active[n])
                w2d.copy_(acc)
        self.applied = dict(strengths)
        self.shifts = 0

    def _scaled_factors(self, active: dict[str, float]):
        """(up_cat with each LoRA's strength folded into its columns, down_cat), or None without plain LoRAs."""
        cat = self._concatenated()
        if cat is None or not any(n in active for n in cat[0]):
            return None
        names, ranks, up, down = cat
        column = torch.repeat_interleave(
            torch.tensor([active.get(n, 0.0) for n in names], dtype=up.dtype, device=up.device),
            torch.tensor(ranks, device=up.device),
        )
        return up * column, down

    def shift(self, name: str, delta_strength: float) -> None:
        """W += delta_strength · ΔW_name in place (float32/float64 weights only)."""
        w2d = self.weight.view(self.weight.shape[0], -1)
        if name in self.lowrank:
            up, down = self.lowrank[name]
            if up.dtype != w2d.dtype:
                up, down = up.to(w2d.dtype), down.to(w2d.dtype)
            w2d.addmm_(up, down, alpha=delta_strength)
        else:
            lora, module = self.other[name]
            w2d.add_(self._other_delta(lora, module).reshape(w2d.shape).to(w2d.dtype), alpha=delta_strength)
        self.applied[name] = self.applied.get(name, 0.0) + delta_strength
        self.shifts += 1

    def can_shift(self) -> bool:
        return self.weight.dtype in (torch.float32, torch.float64) and self.shifts < MAX_SHIFTS

    def _other_delta(self, lora, module: str) -> torch.Tensor:
        base = self.original.to(device=self.weight.device, dtype=torch.float32)
        return lora.delta(module, base_weight=base)


class LoraStack:
    """Several LoRAs applied in place to a pipeline's UNet and text encoders.

    >>> stack = LoraStack(pipe)                       # diffusers pipeline or {"unet": ..., ...}
    >>> stack.add("style.safetensors", strength=0.8)  # patched now
    >>> stack.set_strength("style", 0.5)              # recomputes only that LoRA's layers
    >>> stack.clear()                                 # every weight bit-identical to before

    Args:
        model: a diffusers pipeline (attributes unet, text_encoder, text_encoder_2), an object with
            those attributes, or a dict of components.
        exact: recompute every changed layer from W0 instead of adding the strength difference.
        on_progress: called with `Progress` while layers are patched.
    """

    def __init__(self, model, *, exact: bool = False, on_progress: Callable[[Progress], None] | None = None):
        self.model = model
        self.components = _components_of(model)
        self.exact = exact
        self.on_progress = on_progress
        self._entries: dict[str, StackEntry] = {}
        self._layers: dict[str, _Layer] = {}
        self._live: dict[str, torch.nn.Module] | None = None
        self._family = _UNSET
        self._reports: dict[str, object] = {}
        self._batch_depth = 0
        self._pending: dict[str, dict[str, float | None]] = {}  # layer -> {entry: old strength}

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

    def add(self, lora, strength=1.0, te_strength=None, unet_strength=None, block_strengths=None, name=None):
        """Add a LoRA (path or LoraState) and patch its layers. Returns its name in the stack.

        Raises CompatibilityError (nothing changed) when the LoRA was made for another base family,
        when its shapes do not fit, or when none of its modules exist in the model.
        """
        state = _load(lora, self._custom_table())
        name = self._new_name(name, state)
        entry = StackEntry(name, state, check_strength(strength))
        self._set_fields(entry, te_strength, unet_strength, block_strengths)
        plan = self._plan(state, entry)
        entry.modules = [canonical for canonical, _, _ in plan]
        self._entries[name] = entry
        for canonical, module, live in plan:
            self._attach(name, canonical, module, live, state)
        self._changed(name, entry.modules, added=True)
        return name

    def set_strength(self, name, strength=_UNSET, te_strength=_UNSET, unet_strength=_UNSET, block_strengths=_UNSET):
        """Change any of a LoRA's strengths; only the layers that LoRA touches are recomputed.

        Pass `te_strength=None` / `unet_strength=None` to make them follow `strength` again.
        """
        entry = self._entry(name)
        if strength is not _UNSET:
            entry.strength = check_strength(strength)
        self._set_fields(entry, te_strength, unet_strength, block_strengths)
        self._changed(name, entry.modules)

    def enable(self, name) -> None:
        """Put a disabled LoRA back into the weights."""
        self._entry(name).enabled = True
        self._changed(name, self._entries[name].modules)

    def disable(self, name) -> None:
        """Take a LoRA out of the weights but keep it in the stack (strengths kept)."""
        self._entry(name).enabled = False
        self._changed(name, self._entries[name].modules)

    def remove(self, name) -> None:
        """Take a LoRA out of the stack; layers no other LoRA touches get W0 back bit for bit."""
        entry = self._entry(name)
        entry.enabled = False
        self._changed(name, entry.modules)
        for canonical in entry.modules:
            layer = self._layers[canonical]
            layer.drop(name)
            if not layer.entries:
                layer.weight.copy_(layer.original)
                del self._layers[canonical]
        del self._entries[name]
        self._reports.pop(name, None)

    def clear(self) -> None:
        """Remove every LoRA: every patched weight is restored bit for bit."""
        with torch.inference_mode():
            for layer in self._layers.values():
                layer.weight.copy_(layer.original)
        self._layers.clear()
        self._entries.clear()
        self._reports.clear()
        self._pending.clear()

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
            from sdlora.arch import table_for_model
            from sdlora.report import check_lora

            self._reports[name] = check_lora(entry.lora, table_for_model(SimpleNamespace(**self.components)))
        return self._reports[name]

    def block_names(self) -> list[str]:
        """The block names this model's UNet accepts in `block_strengths` (A1111 order)."""
        unet = self.components.get("unet")
        n_down = len(getattr(unet, "down_blocks", [])) or 4
        n_up = len(getattr(unet, "up_blocks", [])) or 4
        return block_names(n_down, n_up)

    def strengths(self, canonical: str) -> dict[str, float]:
        """{entry: multiplier} for one patched layer (what the weight should hold)."""
        layer = self._layers[canonical]
        return {n: self._entries[n].module_strength(canonical) for n in layer.entries}

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

    def _set_fields(self, entry, te_strength, unet_strength, block_strengths) -> None:
        if te_strength is not _UNSET:
            entry.te_strength = None if te_strength is None else check_strength(te_strength, "te_strength")
        if unet_strength is not _UNSET:
            entry.unet_strength = None if unet_strength is None else check_strength(unet_strength, "unet_strength")
        if block_strengths is not _UNSET:
            entry.block_strengths = parse_block_strengths(block_strengths, self.block_names())

    def _custom_table(self):
        """The live module table when the model is no SD family (so a file's names can be resolved
        against it); None for SD1/SD2/SDXL, whose files carry their own family for the mismatch check."""
        if self.family is not None:
            return None
        from sdlora.arch import table_for_model

        return table_for_model(SimpleNamespace(**self.components))

    def _live_modules(self) -> dict[str, torch.nn.Module]:
        """{canonical name: live Linear/Conv2d} for every component, built once."""
        if self._live is None:
            self._live = {}
            for component, model in self.components.items():
                for path, module in model.named_modules():
                    if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                        self._live[_canonical(component, path, model)] = module
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
                mismatched.append(f"{canonical} (LoRA {module.delta_shape()}, model {tuple(target.weight.shape)})")
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
            layer = self._layers[canonical] = _Layer(live.weight.data)
        if module.kind == "lora" and "mid" not in module.tensors and "dora_scale" not in module.tensors:
            device = live.weight.device
            down = module.tensors["down"].to(device=device, dtype=torch.float32)
            up = module.tensors["up"].to(device=device, dtype=torch.float32)
            down = down.reshape(down.shape[0], -1).contiguous()  # (r, in·kh·kw)
            up = (up.reshape(up.shape[0], -1) * module.scale).contiguous()  # (out, r), scale folded in
            layer.add_lowrank(name, up, down)
        else:
            layer.other[name] = (state, canonical)

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
        with torch.inference_mode():
            for done, (canonical, olds) in enumerate(pending.items(), 1):
                layer = self._layers.get(canonical)
                if layer is None:
                    continue
                wanted = self.strengths(canonical)
                if not force_rebuild and not self.exact and len(olds) == 1 and layer.can_shift():
                    (entry,) = olds
                    step = wanted[entry] - layer.applied.get(entry, 0.0)
                    if step != 0.0:
                        layer.shift(entry, step)
                else:
                    layer.rebuild(wanted)
                report(self.on_progress, done, total, canonical)


def entry_label(state) -> str:
    return state.path or "LoRA"


def _load(lora, table=None):
    if isinstance(lora, str | Path):
        from sdlora.formats import load_lora

        return load_lora(lora, table=table)
    if not hasattr(lora, "modules") or not hasattr(lora, "delta"):
        raise ConfigError(f"expected a LoRA file path or a LoraState, got {type(lora).__name__}")
    return lora


def _components_of(model) -> dict[str, torch.nn.Module]:
    """{component name: module} from a pipeline, an object with component attributes, or a dict."""
    if isinstance(model, dict):
        found = {k: v for k, v in model.items() if k in COMPONENTS and v is not None}
    else:
        found = {k: getattr(model, k) for k in COMPONENTS if getattr(model, k, None) is not None}
    if not found:
        raise ConfigError(f"no UNet or text encoder found: expected a pipeline or a dict with keys {COMPONENTS}")
    return found


def _canonical(component: str, path: str, model) -> str:
    from sdlora.naming import canonical_name

    return canonical_name(component, path)


def _fits(module, weight_shape: tuple[int, ...]) -> bool:
    """Whether a module's ΔW can be shaped like the weight (same rule as delta._fit_shape)."""
    try:
        shape = module.raw_delta_shape()
    except (KeyError, IndexError, ValueError, RuntimeError):  # malformed factors: the delta math says why
        return True
    if tuple(shape) == weight_shape:
        return True
    return prod(shape) == prod(weight_shape) and shape[0] == weight_shape[0]


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

    The arch helper's table match is exact; a model that differs from the shipped tables in some
    module (a fine-tune with an extra layer) still has the UNet's cross-attention width to go by.
    """
    from sdlora.arch import table_for_model

    family = table_for_model(SimpleNamespace(**components)).family
    if family is None:
        cross = getattr(getattr(components.get("unet"), "config", None), "cross_attention_dim", None)
        family = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(cross)
    return family
