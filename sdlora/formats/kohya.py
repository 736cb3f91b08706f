"""Kohya / Civitai LoRA files and their LyCORIS extensions (LoCon, LoHa, LoKr, full diff, DoRA).

Key layout (docs/formats.md §2.2-§2.9): `<lora name>.<suffix>`, where the lora name is `lora_unet_...`,
`lora_te_...`, `lora_te1_...`/`lora_te2_...` (SDXL) or `lycoris_...`. Lora names are never parsed
back into module paths: `naming.kohya_lookup` gives a forward dict {lora name: canonical module}
built from the module tables (docs/formats.md §2.2 "Never split a lora name back into a path").
"""

from __future__ import annotations

import logging
import re

from sdlora import validate
from sdlora.arch import naming
from sdlora.errors import FormatError
from sdlora.formats.metadata import kohya_metadata
from sdlora.weights import KeyIssue, LoraModule, LoraState

log = logging.getLogger(__name__)

# file suffix -> (kind, canonical tensor name)
SUFFIXES = {
    "lora_down.weight": ("lora", "down"),
    "lora_up.weight": ("lora", "up"),
    "lora_mid.weight": ("lora", "mid"),
    "hada_w1_a": ("loha", "w1a"),
    "hada_w1_b": ("loha", "w1b"),
    "hada_w2_a": ("loha", "w2a"),
    "hada_w2_b": ("loha", "w2b"),
    "hada_t1": ("loha", "t1"),
    "hada_t2": ("loha", "t2"),
    "lokr_w1": ("lokr", "w1"),
    "lokr_w1_a": ("lokr", "w1a"),
    "lokr_w1_b": ("lokr", "w1b"),
    "lokr_w2": ("lokr", "w2"),
    "lokr_w2_a": ("lokr", "w2a"),
    "lokr_w2_b": ("lokr", "w2b"),
    "lokr_t1": ("lokr", "t1"),
    "lokr_t2": ("lokr", "t2"),
    "diff": ("full", "diff"),
    "diff_b": ("full", "diff_b"),
}
WRITE_SUFFIXES = {(kind, name): suffix for suffix, (kind, name) in SUFFIXES.items()}
# suffixes of adapter kinds sdlora does not apply (docs/formats.md §2.8): reported, never dropped silently
UNSUPPORTED = {
    "oft_blocks": "OFT", "oft_diag": "OFT", "oft_R": "OFT", "on_input": "(IA)3", "weight": "(IA)3",
    "a1.weight": "GLoRA", "a2.weight": "GLoRA", "b1.weight": "GLoRA", "b2.weight": "GLoRA",
    "w_norm": "norm", "b_norm": "norm", "bias_indices": "LyCORIS bias", "bias_values": "LyCORIS bias",
    "bias_size": "LyCORIS bias", "lora_up.bias": "LoRA bias", "lora_down.bias": "LoRA bias",
}  # fmt: skip
REQUIRED = {
    "lora": ({"down"}, {"up"}),
    "loha": ({"w1a"}, {"w1b"}, {"w2a"}, {"w2b"}),
    "lokr": ({"w1", "w1a"}, {"w2", "w2a"}),
    "full": ({"diff"},),
}
NEAREST_LIMIT = 5  # unknown modules that get a "nearest: ..." suggestion
_NAME = re.compile(r"^((?:lora|lycoris|oft)_[^.]+)\.(.+)$")


def read(tensors: dict, metadata: dict[str, str], family: str | None, *, table=None, name: str = "",
         dialect: str = "kohya") -> LoraState:  # fmt: skip
    """A Kohya/LyCORIS state dict -> LoraState; unreadable keys go to `issues` with a verdict."""
    state = LoraState(metadata=dict(metadata), format=dialect, family=family)
    groups = _group(tensors, state)
    lookup = _lookup(family, table)
    unknown = []
    for lora_name, parts in groups.items():
        canonical = lookup.get(lora_name)
        if canonical is None:
            unknown.append((lora_name, parts))
            continue
        module = _module(lora_name, parts, state, name)
        if module is not None:
            state.modules[canonical] = module
            state.source_keys[canonical] = [f"{lora_name}.{suffix}" for suffix in parts]
    # a file with no module is refused by the loader, so nearest names (difflib, slow) would be wasted there
    # against a model's table, the model lacks the module (the LoRA's family may well have it)
    where = "the model checked against" if table is not None else (family or "the known families")
    for index, (lora_name, parts) in enumerate(unknown):
        _unknown(state, lora_name, parts, lookup, where, suggest=bool(state.modules) and index < NEAREST_LIMIT)
    return state


def _group(tensors: dict, state: LoraState) -> dict[str, dict]:
    """{lora name: {suffix: tensor}}; bundled embeddings go to extras, stray keys to issues."""
    groups: dict[str, dict] = {}
    for key, tensor in tensors.items():
        if key.startswith("bundle_emb."):
            _bundle_embedding(state, key, tensor)
            continue
        match = _NAME.match(key)
        if match is None:
            state.issues.append(KeyIssue(key, "unknown_module", "not a Kohya key (<lora name>.<suffix>)"))
            continue
        groups.setdefault(match.group(1), {})[match.group(2)] = tensor
    return groups


def _bundle_embedding(state: LoraState, key: str, tensor) -> None:
    """`bundle_emb.<token>.*` (and `.clip_l`/`.clip_g`) -> extras["embeddings"] (docs/formats.md §2.8)."""
    rest = key[len("bundle_emb.") :]
    token = rest.removesuffix(".string_to_param.*")
    state.extras.setdefault("embeddings", {})[token] = tensor


def _lookup(family: str | None, table) -> dict[str, str]:
    """{Kohya lora name: canonical module} for the family, a live model's table, or all families (None)."""
    if table is not None:
        return naming.kohya_lookup(getattr(table, "family", None), table)
    return naming.kohya_lookup(family)


def _unknown(state: LoraState, lora_name: str, parts: dict, lookup: dict[str, str], where: str,
             suggest: bool) -> None:
    # difflib over thousands of names costs seconds: the caller asks for the nearest name for the first
    # few unknown modules only (counted by the caller: counting issues here made loading quadratic)
    nearest = naming.nearest_name(lora_name, list(lookup)) if lookup and suggest else None
    detail = f"no module named {lora_name!r} in {where}"
    if nearest:
        detail += f"; nearest: {nearest!r}"
    for suffix in parts:
        state.issues.append(KeyIssue(f"{lora_name}.{suffix}", "unknown_module", detail))


def _module(lora_name: str, parts: dict, state: LoraState, file_name: str) -> LoraModule | None:
    """Build one LoraModule from its suffix -> tensor dict, or record issues and return None."""
    found, extra = _sort_parts(lora_name, parts, state)
    kinds = {kind for kind, _ in found}
    if len(kinds) != 1:
        detail = "no adapter weights" if not kinds else f"mixes adapter kinds {sorted(kinds)}"
        # only this module's keys can have been reported (a set of all issues would be quadratic)
        reported = {issue.key for issue in state.issues[-len(parts) :]}
        for key in (f"{lora_name}.{suffix}" for suffix in parts):
            if key not in reported:  # e.g. the `.alpha` of an OFT module
                state.issues.append(KeyIssue(key, "unsupported_kind", detail))
        return None
    kind = kinds.pop()
    weights = {tensor_name: tensor for (_, tensor_name), tensor in found.items()}
    missing = [sorted(group) for group in REQUIRED[kind] if not group & set(weights)]
    if missing:
        for suffix in parts:
            state.issues.append(KeyIssue(f"{lora_name}.{suffix}", "unsupported_kind",
                                         f"incomplete {kind} module: missing {missing}"))  # fmt: skip
        return None
    module = LoraModule(kind, weights, alpha=_alpha(extra, lora_name, file_name))
    validate.check_module(module, file_name, lora_name, [f"{lora_name}.{suffix}" for suffix in parts])
    if "dora_scale" in extra:
        _add_dora(module, extra["dora_scale"])
    if "scale" in extra and module.rank:
        module.alpha = float(extra["scale"].item()) * module.rank  # A1111 `scale` overrides alpha/rank
    return module


def _sort_parts(lora_name: str, parts: dict, state: LoraState):
    """Split a group into adapter tensors {(kind, name): tensor}, extras (alpha/dora/scale), issues."""
    found, extra = {}, {}
    for suffix, tensor in parts.items():
        if suffix in SUFFIXES:
            found[SUFFIXES[suffix]] = tensor
        elif suffix in ("alpha", "dora_scale", "scale"):
            extra[suffix] = tensor
        else:
            what = UNSUPPORTED.get(suffix, f"unknown tensor suffix {suffix!r}")
            state.issues.append(KeyIssue(f"{lora_name}.{suffix}", "unsupported_kind",
                                         f"{what} adapters are not supported"))  # fmt: skip
    return found, extra


def _alpha(extra: dict, lora_name: str, file_name: str) -> float | None:
    """Module alpha; missing = scale 1; alpha 0 is read as rank, like sd-scripts (docs/formats.md §2.4)."""
    tensor = extra.get("alpha")
    if tensor is None:
        return None
    value = float(tensor.float().item())
    if value == 0.0:
        log.warning(
            "%s: %s has alpha 0; reading it as alpha = rank (scale 1) like sd-scripts", file_name, lora_name
        )
        return None
    return value


def _add_dora(module: LoraModule, magnitude) -> None:
    """Attach a DoRA magnitude; its keep-dim shape says the axis (docs/formats.md §2.9)."""
    from sdlora.delta import dora_axis_from_shape  # delta imports torch; reading names needs none

    module.tensors["dora_scale"] = magnitude
    module.dora_axis = dora_axis_from_shape(tuple(magnitude.shape), module.raw_delta_shape())


# ------------------------------------------------------------------------------------------------ writing


def write(lora: LoraState, dtype=None) -> tuple[dict, dict[str, str]]:
    """LoraState -> (Kohya state dict, metadata). Every module gets a `.alpha` (never 0)."""
    import torch

    tensors, alphas = {}, {}
    for canonical, module in lora.modules.items():
        lora_name = naming.kohya_name(canonical, lora.family)
        for tensor_name, tensor in module.tensors.items():
            tensors[f"{lora_name}.{_write_suffix(module, tensor_name, canonical)}"] = _cast(
                _dora_keepdim(module, tensor_name, tensor), dtype
            )
        alpha = module.alpha if module.alpha else float(module.rank or 1)
        alphas[canonical] = alpha
        tensors[f"{lora_name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    for token, tensor in lora.extras.get("embeddings", {}).items():
        key = f"bundle_emb.{token}" if ".clip_" in token else f"bundle_emb.{token}.string_to_param.*"
        tensors[key] = _cast(tensor, dtype)
    return tensors, kohya_metadata(lora, alphas, _network_args(lora))


def _write_suffix(module: LoraModule, tensor_name: str, canonical: str) -> str:
    if tensor_name == "dora_scale":
        return "dora_scale"
    suffix = WRITE_SUFFIXES.get((module.kind, tensor_name))
    if suffix is None:
        raise FormatError(f"{canonical}: tensor {tensor_name!r} is not valid for a {module.kind} module")
    return suffix


def _dora_keepdim(module: LoraModule, tensor_name: str, tensor):
    """DoRA magnitudes are written keep-dim, (out,1[,1,1]) or (1,in[,1,1]), so the axis survives."""
    if tensor_name != "dora_scale":
        return tensor
    ndim = len(module.delta_shape())
    if module.dora_axis == "in":
        return tensor.reshape((1, -1) + (1,) * (ndim - 2))
    return tensor.reshape((-1,) + (1,) * (ndim - 1))


def _cast(tensor, dtype):
    tensor = tensor.detach().cpu()
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.contiguous()


def _network_args(lora: LoraState) -> dict:
    """`ss_network_args` for LyCORIS files (algo, DoRA axis), as LyCORIS' kohya wrapper records them."""
    kinds = {m.kind for m in lora.modules.values()}
    args: dict[str, str] = {}
    if kinds - {"lora"} or any("mid" in m.tensors for m in lora.modules.values()):
        algo = {"loha": "loha", "lokr": "lokr", "full": "full"}.get(next(iter(kinds - {"lora"}), ""), "locon")
        args["algo"] = algo if len(kinds) == 1 or kinds == {"lora"} else "mixed"
    if any(m.dora_axis for m in lora.modules.values()):
        args["dora_wd"] = "True"
        args["wd_on_output"] = str(any(m.dora_axis == "out" for m in lora.modules.values()))
    if any("mid" in m.tensors or "t1" in m.tensors or "t2" in m.tensors for m in lora.modules.values()):
        args["use_tucker"] = "True"
    return args
