"""The canonical in-memory LoRA: one representation for every file dialect.

Readers in `sdlora.formats` turn a file into a `LoraState`; writers turn a `LoraState` into a file.
Nothing here knows a file format. Module names are component-qualified canonical paths
(`unet.<diffusers path>`, `text_encoder.<HF path with text_model.>`, `text_encoder_2.<...>`),
see docs/ARCHITECTURE.md. Tensor names per kind:

    lora : down (r,in[,kh,kw]), up (out,r[,1,1]), optional mid (r,r,kh,kw) (Tucker / CP)
    loha : w1a, w1b, w2a, w2b, optional t1, t2 (Tucker)
    lokr : w1 | (w1a, w1b); w2 | (w2a, w2b) | (t2, w2a, w2b)
    full : diff (shape of W), optional diff_b (bias)
    any  : optional dora_scale (keep-dim shape (out,1[,1,1]) or (1,in[,1,1]))

The ΔW math lives in `sdlora.delta`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import TYPE_CHECKING

from sdlora.arch.tables import family_table
from sdlora.errors import CompatibilityError

if TYPE_CHECKING:  # torch is only needed for type hints here
    from torch import Tensor

KINDS = ("lora", "loha", "lokr", "full")

# which tensor names each kind may carry (besides "dora_scale")
KIND_TENSORS = {
    "lora": {"down", "up", "mid"},
    "loha": {"w1a", "w1b", "w2a", "w2b", "t1", "t2"},
    "lokr": {"w1", "w1a", "w1b", "w2", "w2a", "w2b", "t2"},
    "full": {"diff", "diff_b"},
}


@dataclass
class KeyIssue:
    """A file key that could not be read into a module, with the reason (nothing is dropped silently).

    `verdict` uses the load-report words: "unsupported_kind" (OFT, IA3, GLoRA, norm, ...),
    "unknown_module" (the name matches no module of the family), "shape_mismatch", "ignored"
    (a key that carries no weights, e.g. an empty placeholder).
    """

    key: str
    verdict: str
    detail: str = ""


@dataclass
class LoraModule:
    """One target module's adapter weights, in canonical tensor names (see the module docstring)."""

    kind: str
    tensors: dict[str, Tensor]
    alpha: float | None = None  # None means scale 1
    dora_axis: str | None = None  # "out" | "in" when tensors has "dora_scale"
    shape: tuple[int, ...] | None = None  # base weight shape when known (flattened LoKr/LoHa convs need it)

    @property
    def rank(self) -> int | None:
        """The low-rank dimension r that alpha is divided by; None when there is none (full factors)."""
        t = self.tensors
        if self.kind == "lora":
            return int(t["down"].shape[0])
        if self.kind == "loha":
            return int(t["w1b"].shape[0])
        if self.kind == "lokr":
            # docs/formats.md §2.7: r comes from lokr_w1_b, else lokr_w2_b; both factors full -> no rank
            for name in ("w1b", "w2b"):
                if name in t:
                    return int(t[name].shape[0])
        return None

    @property
    def scale(self) -> float:
        """alpha / rank; 1.0 when alpha or rank is missing (docs/formats.md §2.4, §2.7)."""
        rank = self.rank
        if self.alpha is None or not rank:
            return 1.0
        return float(self.alpha) / rank

    def raw_delta_shape(self) -> tuple[int, ...]:
        """The shape ΔW has from the factors alone (a flattened conv LoKr/LoHa gives (out, in*kh*kw))."""
        from sdlora.delta import raw_delta_shape  # delta imports torch; this module must not

        return raw_delta_shape(self)

    def delta_shape(self) -> tuple[int, ...]:
        """The shape of ΔW: the base shape when known and consistent, else `raw_delta_shape()`."""
        raw = self.raw_delta_shape()
        if self.shape is not None and prod(self.shape) == prod(raw) and self.shape[0] == raw[0]:
            return tuple(self.shape)
        return raw

    @property
    def dtype(self):
        """dtype of the first weight tensor (what the file stored)."""
        return next(iter(self.tensors.values())).dtype


@dataclass
class LoraState:
    """A whole LoRA file in canonical form. `format` is the dialect it was read from."""

    modules: dict[str, LoraModule] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    format: str = "sdlora"
    family: str | None = None
    extras: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    source_keys: dict[str, list[str]] = field(default_factory=dict)
    issues: list[KeyIssue] = field(default_factory=list)
    path: str | None = None

    def __post_init__(self):
        self.modules = dict(sorted(self.modules.items()))

    def delta(self, name: str, base_weight: Tensor | None = None) -> Tensor:
        """Full ΔW of module `name` at strength 1, float32, shaped like the base weight.

        The base shape comes from `base_weight`, else the module's `shape`, else the family's
        module table. DoRA modules need `base_weight` (CompatibilityError otherwise).
        """
        from sdlora.delta import module_delta  # delta imports torch; this module must not

        module = self.modules.get(name)
        if module is None:
            raise CompatibilityError(f"{self.path or 'LoRA'}: no module named {name!r} in this LoRA")
        shape = None if base_weight is not None else (module.shape or self._family_shape(name))
        return module_delta(module, base_weight, shape=shape, name=name)

    def _family_shape(self, name: str) -> tuple[int, ...] | None:
        if self.family is None:
            return None
        info = family_table(self.family).get(name)
        return tuple(info.shape) if info is not None else None

    @property
    def components(self) -> list[str]:
        """Model components this LoRA touches ("unet", "text_encoder", "text_encoder_2"), sorted."""
        return sorted({name.split(".", 1)[0] for name in self.modules})

    def ranks(self) -> dict[str, int | None]:
        return {name: m.rank for name, m in self.modules.items()}

    def alphas(self) -> dict[str, float | None]:
        return {name: m.alpha for name, m in self.modules.items()}
