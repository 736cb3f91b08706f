"""LoRA tools on LoraState objects: resize (SVD to a rank or an energy) and merge (SVD or concat).

Depends on torch and sdlora.weights / sdlora.lowrank. Algorithms and the field's caveats: docs/formats.md §4.
* Every SVD is taken in the factors' space (sdlora.lowrank, docs/formats.md §4.1): exact, and no dense
  ΔW is built for LoRA, LoCon, Tucker, LoHa or LoKr modules; merging concatenates the parts' factors and
  takes one small QR/SVD. Only a full diff goes dense (randomized when large and the rank is known).
* Effective scale is kept: a resized plain LoRA gets alpha = scale · new_rank (as sd-scripts'
  resize_lora.py); a module rebuilt from a full ΔW (scale already inside) gets alpha = rank.
* The result keeps the inputs' dtype unless told otherwise (`dtype="fp16"|"bf16"|"fp32"`): the SVD runs
  in float64, but writing it as float32 made an fp16 8 -> 4 resize bigger than its input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import torch

from sdlora.errors import CompatibilityError, ConfigError, Interrupted
from sdlora.lowrank import Svd, choose_rank, module_svd, sum_svd, svd_of_matrix, svd_of_product
from sdlora.progress import ProgressCallback, report
from sdlora.strength import Strength
from sdlora.weights import LoraModule, LoraState

_HASH_KEYS = ("sshs_model_hash", "sshs_legacy_hash")

StopCheck = Callable[[], bool]


@dataclass
class ModuleResult:
    """What a tool did to one module: rank before/after and the share of ΔW's energy kept (ΣS² kept / ΣS²)."""

    old_rank: int | None
    new_rank: int
    energy: float
    randomized: bool = False  # a large dense ΔW cut by randomized SVD (sdlora.lowrank.svd_of_matrix)

    @property
    def error(self) -> float:
        """Relative error ‖ΔW - ΔW_kept‖ / ‖ΔW‖ (measured for every method: the kept part is a projection)."""
        return max(0.0, 1.0 - self.energy) ** 0.5


@dataclass
class ToolResult:
    """The new LoRA and a per-module report."""

    lora: LoraState
    modules: dict[str, ModuleResult] = field(default_factory=dict)

    def min_energy(self) -> float:
        return min((m.energy for m in self.modules.values()), default=1.0)


# ----- SVD helpers -----------------------------------------------------------------------------


def is_plain(module: LoraModule) -> bool:
    """A plain LoRA / LoCon module (no Tucker mid, no DoRA): ΔW = scale · up @ down."""
    return module.kind == "lora" and "mid" not in module.tensors and "dora_scale" not in module.tensors


def factors_2d(module: LoraModule) -> tuple[torch.Tensor, torch.Tensor]:
    """(up (out, r), down (r, in·kh·kw)) in float64, without the scale."""
    down = module.tensors["down"].double()
    up = module.tensors["up"].double()
    return up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)


def rebuild_module(svd: Svd, keep: int, shape: tuple[int, ...], alpha: float, dora=None) -> LoraModule:
    """Plain LoRA from an SVD (U, S, Vh): up = U·S, down = Vh, reshaped for convs (docs/formats.md §2.3)."""
    u, s, vh = svd.u, svd.s, svd.vh
    up = (u[:, :keep] * s[:keep]).float().contiguous()
    down = vh[:keep].float().contiguous()
    if len(shape) == 4:
        down = down.reshape(keep, *shape[1:])
        up = up.reshape(shape[0], keep, 1, 1)
    tensors = {"down": down, "up": up}
    if dora is not None:
        tensors["dora_scale"] = dora[0]
    return LoraModule("lora", tensors, alpha=float(alpha), dora_axis=dora[1] if dora else None, shape=shape)


def _check_target(rank, energy) -> None:
    if (rank is None) == (energy is None):
        raise ConfigError("give exactly one of rank (e.g. 16) or energy (e.g. 0.95)")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ConfigError(f"rank must be a whole number >= 1, got {rank!r}")
    if energy is not None and not (isinstance(energy, int | float) and 0.0 < energy <= 1.0):
        raise ConfigError(f"energy must be a fraction in (0, 1], e.g. 0.95; got {energy!r}")


def _delta_shape(lora: LoraState, name: str, module: LoraModule) -> tuple[int, ...]:
    return tuple(module.shape) if module.shape else tuple(module.delta_shape())


# ----- resize ----------------------------------------------------------------------------------


def resize(lora: LoraState, rank=None, energy=None, on_progress: ProgressCallback | None = None,
           dtype=None, should_stop: StopCheck | None = None) -> ToolResult:
    """Resize every module of `lora` by SVD to `rank`, or to the smallest rank keeping `energy`.

    The SVD is taken in the factors' space (sdlora.lowrank), exactly; a full diff goes dense. The
    effective scale is kept (new alpha = scale · new rank for a plain LoRA, whose scale stays outside;
    = new rank for the other kinds, whose scale is folded in). A DoRA magnitude is carried over unchanged.
    `dtype` ("fp16", "bf16", "fp32"; None: the input's) is the result's tensor dtype. `should_stop` is
    asked before each module and inside a dense one; True raises Interrupted (nothing is returned).
    Returns the new LoRA and, per module, the ranks and the energy kept.
    """
    _check_target(rank, energy)
    out_dtype = output_dtype(dtype, [lora])
    result = ToolResult(LoraState(metadata=_tool_metadata(lora.metadata), format="sdlora", family=lora.family))
    total = len(lora.modules)
    for done, (name, module) in enumerate(lora.modules.items()):
        _check_stop(should_stop, done, total)
        shape = _delta_shape(lora, name, module)
        dora = (module.tensors["dora_scale"], module.dora_axis) if "dora_scale" in module.tensors else None
        bare = _without_dora(module)
        if is_plain(bare):  # the scale stays outside, as alpha (sd-scripts' resize_lora.py does the same)
            up, down = factors_2d(bare)
            svd, scale = svd_of_product(up, down, rank), bare.scale
        else:
            svd, scale = _module_or_dense_svd(lora, name, bare, shape, rank, should_stop), 1.0
        keep, kept = choose_rank(svd, rank, energy)
        result.lora.modules[name] = rebuild_module(svd, keep, shape, scale * keep, dora)
        result.modules[name] = ModuleResult(module.rank, keep, kept, svd.randomized)
        report(on_progress, done + 1, total, name)
    result.lora.metadata.update(rank_metadata(result.lora))
    result.lora.metadata["ss_training_comment"] = _comment(lora.metadata, _resize_note(rank, energy))
    cast_lora(result.lora, out_dtype)
    return result


def _without_dora(module: LoraModule) -> LoraModule:
    """The module without its DoRA magnitude (carried separately): its ΔW is the direction's update."""
    if "dora_scale" not in module.tensors:
        return module
    return LoraModule(module.kind, {k: v for k, v in module.tensors.items() if k != "dora_scale"},
                      alpha=module.alpha, shape=module.shape)


def _module_or_dense_svd(lora: LoraState, name: str, module: LoraModule, shape, rank, should_stop) -> Svd:
    """The module's SVD from its factors, or (a full diff) of its dense ΔW, randomized when large."""
    svd = module_svd(module, rank)
    if svd is not None:
        return svd
    delta = LoraState(modules={name: module}, family=lora.family).delta(name).reshape(shape[0], -1)
    _check_stop(should_stop, None, None)
    return svd_of_matrix(delta, rank)


def _check_stop(should_stop: StopCheck | None, done: int | None, total: int | None) -> None:
    if should_stop is not None and should_stop():
        where = f" after {done} of {total} modules" if done is not None else ""
        raise Interrupted(f"stopped{where}; nothing was written")


def _resize_note(rank, energy) -> str:
    return f"resized by sdlora to rank {rank}" if rank is not None else f"resized by sdlora to energy {energy}"


# ----- merge -----------------------------------------------------------------------------------


def merge(items, mode: str = "svd", rank=None, energy=None, on_progress: ProgressCallback | None = None,  # noqa: PLR0913
          dtype=None, *, should_stop: StopCheck | None = None) -> ToolResult:
    """Merge weighted LoRAs into one.

    Args:
        items: [(LoraState, weight), ...]; a weight is a number or a `sdlora.strength.Strength` (its
            text-encoder / UNet values weigh those modules).
        mode: "svd": the exact weighted sum of ΔW, then SVD to `rank` / `energy` (default: the largest
            input rank of each module), taken in the factors' space (sdlora.lowrank); "concat": exact, the factors concatenated along rank with
            each part's weight·scale folded into its up (alpha = total rank, so scale 1).
        dtype: "fp16", "bf16", "fp32", or None: the inputs' dtype (float32 when they differ).
        should_stop: asked before each module (and inside a dense one); True raises Interrupted.
    """
    if mode not in ("svd", "concat"):
        raise ConfigError(f"merge mode must be 'svd' or 'concat', got {mode!r}")
    if not items:
        raise ConfigError("merge needs at least one LoRA")
    if rank is not None or energy is not None:
        _check_target(rank, energy)
    family = _common_family([lora for lora, _ in items])
    out_dtype = output_dtype(dtype, [lora for lora, _ in items])
    names = sorted({name for lora, _ in items for name in lora.modules})
    merged = LoraState(metadata=_merge_metadata(items), format="sdlora", family=family)
    result = ToolResult(merged)
    for done, name in enumerate(names, 1):
        _check_stop(should_stop, done - 1, len(names))
        parts = [(lora, Strength.of(weight).for_module(name)) for lora, weight in items if name in lora.modules]
        if mode == "concat":
            merged.modules[name], result.modules[name] = _concat_module(name, parts)
        else:
            merged.modules[name], result.modules[name] = _svd_module(name, parts, rank, energy, should_stop)
        report(on_progress, done, len(names), name)
    merged.metadata.update(rank_metadata(merged))
    cast_lora(merged, out_dtype)
    return result


def _concat_module(name: str, parts) -> tuple[LoraModule, ModuleResult]:
    ups, downs = [], []
    for lora, weight in parts:
        module = lora.modules[name]
        if not is_plain(module):
            raise CompatibilityError(
                f"{lora.path or 'a LoRA'}: module {name} is {_kind_label(module)}; concat merges plain LoRA "
                "modules only, use mode 'svd'"
            )
        up, down = factors_2d(module)
        ups.append(up * (weight * module.scale))
        downs.append(down)
    first = parts[0][0].modules[name]
    shapes = {tuple(d.shape[1:]) for d in downs}
    if len(shapes) > 1 or len({u.shape[0] for u in ups}) > 1:
        raise CompatibilityError(f"module {name}: the LoRAs have different shapes there; they were made for different models")
    up, down = torch.cat(ups, 1).float(), torch.cat(downs, 0).float()
    total = up.shape[1]
    if first.tensors["down"].dim() == 4:
        down = down.reshape(total, *first.tensors["down"].shape[1:])
        up = up.reshape(up.shape[0], total, 1, 1)
    module = LoraModule("lora", {"down": down, "up": up}, alpha=float(total), shape=first.shape)
    return module, ModuleResult(None, total, 1.0)


def _svd_module(name: str, parts, rank, energy, should_stop) -> tuple[LoraModule, ModuleResult]:
    """The weighted sum of the parts' ΔW in factor space (sdlora.lowrank.sum_svd), cut to the target."""
    modules = [lora.modules[name] for lora, _ in parts]
    shapes = [_delta_shape(lora, name, m) for (lora, _), m in zip(parts, modules, strict=True)]
    if len({(shape[0], prod(shape)) for shape in shapes}) > 1:
        raise CompatibilityError(f"module {name}: the LoRAs have different shapes there; they were made for different models")
    shape = shapes[0]
    target = rank if rank is not None or energy is not None else max(m.rank or 1 for m in modules)

    def dense(i: int) -> torch.Tensor:
        _check_stop(should_stop, None, None)
        return parts[i][0].delta(name).double().reshape(shape[0], -1)

    svd = sum_svd([(m, float(w)) for m, (_, w) in zip(modules, parts, strict=True)], dense,
                  None if energy is not None else target)
    keep, kept = choose_rank(svd, target, energy)
    return rebuild_module(svd, keep, shape, float(keep)), ModuleResult(None, keep, kept, svd.randomized)


def _kind_label(module: LoraModule) -> str:
    if "dora_scale" in module.tensors:
        return "DoRA"
    return {"loha": "LoHa", "lokr": "LoKr", "full": "a full diff"}.get(module.kind, "Tucker LoCon")


def _common_family(loras: list[LoraState]) -> str | None:
    families = {lora.family for lora in loras if lora.family}
    if len(families) > 1:
        named = ", ".join(f"{lora.path or '?'} ({lora.family})" for lora in loras if lora.family)
        raise CompatibilityError(f"cannot merge LoRAs of different base families: {named}")
    return families.pop() if families else None


# ----- dtype -----------------------------------------------------------------------------------


def input_dtype(loras: list[LoraState]) -> torch.dtype:
    """The floating dtype the inputs' factors are stored in; float32 when they differ (no input loses
    precision) or when there is none."""
    found = {t.dtype for lora in loras for m in lora.modules.values() for key, t in m.tensors.items()
             if key != "dora_scale" and t.is_floating_point()}
    return found.pop() if len(found) == 1 else torch.float32


def output_dtype(dtype, loras: list[LoraState]) -> torch.dtype:
    """`dtype` ("fp16", "bf16", "fp32", a torch dtype) or, when None, the inputs' dtype; raises ConfigError."""
    if dtype is None:
        return input_dtype(loras)
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
             "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if str(dtype) not in names:
        raise ConfigError(f"dtype {dtype!r}: use fp16, bf16 or fp32 (or leave it out to keep the input's)")
    return names[str(dtype)]


def cast_lora(lora: LoraState, dtype: torch.dtype) -> None:
    """Cast every floating tensor of `lora` to `dtype`, in place (after the float64 SVD work)."""
    for module in lora.modules.values():
        module.tensors = {k: t.to(dtype) if t.is_floating_point() else t for k, t in module.tensors.items()}


# ----- metadata --------------------------------------------------------------------------------


def _tool_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The input's metadata without the hashes (they describe the old tensors)."""
    return {k: v for k, v in metadata.items() if k not in _HASH_KEYS}


def rank_metadata(lora: LoraState) -> dict[str, str]:
    """The ss_network_dim / ss_network_alpha metadata of `lora` ("Dynamic" when its modules differ)."""
    ranks = {m.rank for m in lora.modules.values()}
    alphas = {m.alpha for m in lora.modules.values()}
    dim = str(ranks.pop()) if len(ranks) == 1 else "Dynamic"
    alpha = _number(alphas.pop()) if len(alphas) == 1 else "Dynamic"
    return {"ss_network_dim": dim, "ss_network_alpha": alpha, "ss_network_module": "networks.lora"}


def _number(value) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else str(value)


def _comment(metadata: dict[str, str], note: str) -> str:
    old = metadata.get("ss_training_comment", "")
    return f"{note}; {old}" if old else note


def _merge_metadata(items) -> dict[str, str]:
    names = [lora_label(lora) + (f":{Strength.of(weight)}" if Strength.of(weight) != Strength() else "")
             for lora, weight in items]
    return {"modelspec.merged_from": ", ".join(names), "ss_training_comment": "merged by sdlora"}


def lora_label(lora: LoraState) -> str:
    if lora.path:
        return Path(lora.path).stem
    return lora.metadata.get("modelspec.title") or lora.metadata.get("ss_output_name") or "lora"
