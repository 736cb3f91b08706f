"""Structural validation of a LoRA at load time: after a successful `load_lora`, `delta()` of every module
can only fail because the base weight does not fit (CompatibilityError), never because the file is
inconsistent (the rules are listed in docs/formats.md §2.13).

Three passes, all raising FormatError that names the file and the key:
- `check_tensors` before any reader looks at the tensors: alpha/scale hold one value, factor tensors are not
  0-dim (a reader would otherwise fail on `.item()` or `.shape[0]` with an untyped error);
- `check_metadata` on the JSON that carries alphas (`lora_adapter_metadata`, adapter_config.json);
- `check_module` / `check_state` on each canonical module: every tensor its kind needs, factor shapes that
  combine (ranks agree, a transposed down is refused), a DoRA magnitude sized for one axis.

Standard library only (tensors are only asked for `.shape`), so `sdlora inspect` can use `check_metadata`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from math import prod

from sdlora.errors import FormatError

SCALAR_ENDINGS = (".alpha", ".scale")
# key endings of factor tensors (every dialect): a reader indexes their dimensions, so they need at least
# 2 (matrices and kernels) or 1 (DoRA magnitudes, full diffs)
_MATRIX_KEY = re.compile(
    r"(lora_(down|up|mid)\.weight|lora_[AB](\.default)?\.weight|lora\.(down|up)\.weight|"
    r"lora_linear_layer\.(down|up)\.weight|_lora\.(down|up)\.weight|\.hada_(w[12]_[ab]|t[12])|"
    r"\.lokr_(w[12](_[ab])?|t[12])|:(down|up))$"
)
_VECTOR_KEY = re.compile(r"(\.dora_scale|lora_magnitude_vector(\.default)?(\.weight)?|\.diff|\.diff_b)$")
# the keys of a module's tensors as the dialects spell them, to name the file key in an error
_SPELLINGS = {
    "down": ("lora_down.weight", "lora_A.weight", "lora_A.default.weight", "down.weight", ":down"),
    "up": ("lora_up.weight", "lora_B.weight", "lora_B.default.weight", "up.weight", ":up"),
    "mid": ("lora_mid.weight",),
    "dora_scale": ("dora_scale", "lora_magnitude_vector", "lora_magnitude_vector.weight",
                   "lora_magnitude_vector.default", "lora_magnitude_vector.default.weight"),
    **{f"w{i}{s}": (f"hada_w{i}_{s}", f"lokr_w{i}_{s}") for i in (1, 2) for s in "ab"},
    **{f"w{i}": (f"lokr_w{i}",) for i in (1, 2)},
    **{f"t{i}": (f"hada_t{i}", f"lokr_t{i}") for i in (1, 2)},
    "diff": ("diff",),
    "diff_b": ("diff_b",),
}  # fmt: skip
CONFIG_NUMBERS = ("r", "lora_alpha")
CONFIG_PATTERNS = ("rank_pattern", "alpha_pattern")
EXAMPLES = 3  # example keys shown when a file has no usable module


class _Where:
    """The file name and the file key of each of one module's tensors, for error messages."""

    def __init__(self, file_name: str, module: str, keys: Mapping[str, str]):
        self.file_name, self.module, self.keys = file_name, module, keys

    def error(self, tensor: str, problem: str) -> FormatError:
        key = self.keys.get(tensor, self.module)
        return FormatError(
            f"{self.file_name}: tensor {key!r}: {problem}; the file is damaged or was written by a broken "
            "converter, get it again or re-export it"
        )


# ------------------------------------------------------------------------------------------ raw tensors


def check_tensors(tensors: Mapping, file_name: str) -> None:
    """alpha/scale hold exactly one value; factor tensors have the dimensions a reader indexes."""
    for key, tensor in tensors.items():
        shape = tuple(tensor.shape)
        if key.endswith(SCALAR_ENDINGS):
            if prod(shape) != 1:
                raise _tensor_error(file_name, key, f"must hold one value (it has shape {list(shape)})")
            continue
        matrix, vector = _MATRIX_KEY.search(key), _VECTOR_KEY.search(key)
        if matrix and len(shape) < 2:
            raise _tensor_error(file_name, key, f"must be a matrix or kernel (it has shape {list(shape)})")
        if vector and not shape:
            raise _tensor_error(file_name, key, "must have at least one dimension (it is 0-dim)")
        if (matrix or vector) and 0 in shape:  # rank 0 would divide by zero in alpha / rank
            raise _tensor_error(file_name, key, f"is empty (shape {list(shape)})")


def _tensor_error(file_name: str, key: str, problem: str) -> FormatError:
    return FormatError(
        f"{file_name}: tensor {key!r} {problem}; the file is damaged or was written by a broken converter"
    )


# --------------------------------------------------------------------------------------------- metadata


def check_metadata(metadata: Mapping[str, str], config: Mapping | None, file_name: str) -> None:
    """`lora_adapter_metadata` must be a JSON object and, like an adapter_config.json, hold numbers where
    PEFT's LoraConfig does (r, lora_alpha, the values of rank_pattern / alpha_pattern)."""
    if config is not None:
        _check_config(config, "adapter_config.json", file_name)
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return
    where = "metadata lora_adapter_metadata"
    try:
        packed = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise FormatError(f"{file_name}: {where} is not valid JSON; remove it or fix the file") from None
    if not isinstance(packed, dict):
        raise FormatError(
            f"{file_name}: {where} must be a JSON object (it is a {type(packed).__name__}); remove it or fix "
            "the file"
        )
    _check_config(packed, where, file_name)


def _check_config(config: Mapping, where: str, file_name: str) -> None:
    for key, value in config.items():
        field = key.partition(".")[2] if key.startswith(("unet.", "text_encoder")) else key
        if field in CONFIG_NUMBERS and value is not None and not _is_number(value):
            raise _config_error(file_name, where, key, f"must be a number, not {value!r}")
        if field in CONFIG_PATTERNS and value is not None:
            _check_patterns(value, where, key, file_name)
        if field == "auto_mapping" and value is not None and not isinstance(value, dict):
            raise _config_error(file_name, where, key, f"must be a JSON object, not {value!r}")


def _check_patterns(patterns, where: str, key: str, file_name: str) -> None:
    if not isinstance(patterns, dict):
        raise _config_error(file_name, where, key, f"must be a JSON object, not {patterns!r}")
    for pattern, value in patterns.items():
        if not _is_number(value):
            raise _config_error(file_name, where, f"{key}[{pattern!r}]", f"must be a number, not {value!r}")
        try:
            re.compile(pattern)  # PEFT matches these as regular expressions
        except re.error as err:
            raise _config_error(
                file_name, where, f"{key}[{pattern!r}]", f"is not a valid pattern ({err})"
            ) from None


def _is_number(value) -> bool:
    """int or float, finite; bool is refused although Python's True is an int."""
    return type(value) in (int, float) and math.isfinite(value)


def _config_error(file_name: str, where: str, key: str, problem: str) -> FormatError:
    return FormatError(f"{file_name}: {where}: {key!r} {problem}; fix or remove it")


# ----------------------------------------------------------------------------------------------- modules


def check_state(state, file_name: str) -> None:
    """Every module of a LoraState read from `file_name` is complete and consistent."""
    for canonical, module in state.modules.items():
        check_module(module, file_name, canonical, state.source_keys.get(canonical) or [])
        where = _Where(
            file_name, canonical, tensor_keys(state.source_keys.get(canonical) or [], module.tensors)
        )
        check_dora(module, where)


def tensor_keys(source_keys: list[str], tensors: Mapping) -> dict[str, str]:
    """{canonical tensor name: file key} from a module's file keys (best effort, for messages)."""
    keys = {}
    for name in tensors:
        endings = _SPELLINGS.get(name, (name,))
        keys[name] = next((k for k in source_keys if k.endswith(endings)), None) or (
            source_keys[0] if source_keys else name
        )
    return keys


def check_module(module, file_name: str, name: str, source_keys: list[str]) -> None:
    """The tensors of `module` are what its kind needs and their shapes combine (docs/formats.md)."""
    where = _Where(file_name, name, tensor_keys(source_keys, module.tensors))
    checks = {"lora": _check_lora, "loha": _check_loha, "lokr": _check_lokr, "full": _check_full}
    check = checks.get(module.kind)
    if check is None:
        raise where.error("", f"unknown adapter kind {module.kind!r}")
    check({name: tuple(t.shape) for name, t in module.tensors.items()}, where)


def _need(shapes: dict, names, where: _Where, kind: str) -> None:
    for name in names:
        if name not in shapes:
            raise where.error(
                next(iter(shapes), ""), f"the {kind} module has no {_SPELLINGS[name][-1]!r} tensor"
            )


def _dims(shapes: dict, name: str, allowed, where: _Where) -> tuple[int, ...]:
    shape = shapes[name]
    if len(shape) not in allowed:
        raise where.error(
            name, f"has {len(shape)} dimensions {list(shape)}; expected {' or '.join(map(str, allowed))}"
        )
    return shape


def _check_lora(shapes: dict, where: _Where) -> None:
    """down (r, in[, kh, kw]), up (out, r[, 1, 1]); Tucker: mid (r, r, kh, kw) with a 1x1 down."""
    _need(shapes, ("down", "up"), where, "LoRA")
    down, up = _dims(shapes, "down", (2, 4), where), _dims(shapes, "up", (2, 4), where)
    rank = down[0]
    if up[1] != rank or prod(up[2:]) != 1:
        raise where.error(
            "up", f"has shape {list(up)} but the down tensor {list(down)} has rank {rank} (its first dimension); "
            "up must be (out, rank[, 1, 1]): the pair is mismatched or the down is transposed"
        )  # fmt: skip
    if "mid" in shapes:
        mid = _dims(shapes, "mid", (4,), where)
        if mid[:2] != (rank, rank) or prod(down[2:]) != 1:
            raise where.error(
                "mid", f"has shape {list(mid)}; Tucker needs ({rank}, {rank}, kh, kw) and a 1x1 down"
            )


def _check_loha(shapes: dict, where: _Where) -> None:
    """(w1a @ w1b) ⊙ (w2a @ w2b): both products (or Tucker rebuilds) have the same shape."""
    _need(shapes, ("w1a", "w1b", "w2a", "w2b"), where, "LoHa")
    first, second = _product_shape(shapes, 1, where), _product_shape(shapes, 2, where)
    if first != second:
        raise where.error(
            "w2a", f"the two LoHa factors have different shapes {list(first)} and {list(second)}"
        )


def _check_lokr(shapes: dict, where: _Where) -> None:
    """kron(w1, w2), each factor full (w<i>) or decomposed (w<i>a @ w<i>b, optional Tucker t<i>)."""
    for index in (1, 2):
        full, pair = f"w{index}", (f"w{index}a", f"w{index}b")
        present = [name for name in pair if name in shapes]
        if full in shapes:
            if present or f"t{index}" in shapes:
                raise where.error(full, f"the LoKr module has both lokr_w{index} and its decomposition")
            _dims(shapes, full, (2, 4), where)
        elif len(present) != 2:
            missing = next((n for n in pair if n not in shapes), pair[0])
            raise where.error(present[0] if present else missing,
                              f"the LoKr module needs lokr_w{index} or both lokr_w{index}_a and lokr_w{index}_b")  # fmt: skip
        else:
            _product_shape(shapes, index, where)


def _product_shape(shapes: dict, index: int, where: _Where) -> tuple[int, ...]:
    """Shape of w<i>a @ w<i>b, or of the Tucker rebuild with t<i> (a, b 2-D; t (i, j, kh, kw))."""
    a, b = _dims(shapes, f"w{index}a", (2,), where), _dims(shapes, f"w{index}b", (2,), where)
    tucker = shapes.get(f"t{index}")
    if tucker is None:
        if a[1] != b[0]:
            raise where.error(
                f"w{index}b", f"has shape {list(b)} but its partner is {list(a)}: the ranks differ"
            )
        return (a[0], b[1])
    _dims(shapes, f"t{index}", (4,), where)
    if tucker[0] != a[0] or tucker[1] != b[0]:
        raise where.error(f"t{index}", f"has shape {list(tucker)}; it must start ({a[0]}, {b[0]})")
    return (a[1], b[1], *tucker[2:])


def _check_full(shapes: dict, where: _Where) -> None:
    _need(shapes, ("diff",), where, "full")


def check_dora(module, where: _Where) -> None:
    """A DoRA magnitude has one value per output channel (or per input column), stored flat (out,) or
    keep-dim along its own axis: (out, 1[, 1, 1]) or (1, in[, 1, 1]) (docs/formats.md)."""
    magnitude = module.tensors.get("dora_scale")
    if magnitude is None:
        return
    shape, delta = tuple(magnitude.shape), tuple(module.delta_shape())
    axis = "in" if module.dora_axis == "in" else "out"
    size = delta[0] if axis == "out" else (delta[1] if len(delta) > 1 else -1)
    position = 1 if axis == "in" else 0
    flat = len(shape) == 1 and axis == "out"
    keep_dim = len(shape) > position and all(d == 1 for i, d in enumerate(shape) if i != position)
    if prod(shape) != size or not (flat or keep_dim):
        text = "input column" if axis == "in" else "output channel"
        raise where.error("dora_scale", f"has shape {list(shape)}; DoRA needs one value per {text} ({size}) "
                                        f"of the {list(delta)} delta, along that axis only")  # fmt: skip


# -------------------------------------------------------------------------------------- whole file


def check_usable(state, keys: list[str], file_name: str, dialect: str) -> None:
    """A file none of whose keys became a module (or bundled embedding) is refused, saying what it holds."""
    if state.modules or any(state.extras.values()):
        return
    verdicts = Counter(issue.verdict for issue in state.issues)
    why = (
        ", ".join(f"{n} {verdict.replace('_', ' ')}" for verdict, n in verdicts.most_common()) or "none read"
    )
    examples = ", ".join(repr(k) for k in keys[:EXAMPLES])
    family = state.family or "SD1/SD2/SDXL"
    raise FormatError(
        f"{os.path.basename(file_name)}: no usable module: none of its {len(keys)} keys maps to a module "
        f"sdlora can apply ({why}); e.g. {examples}. The names look like {dialect} keys, but they name "
        f"modules of {family} that do not exist, or adapter kinds sdlora does not apply; use a LoRA made for "
        "SD1/SD2/SDXL, or pass the model's table (load_lora(..., table=...)) for a custom model"
    )
