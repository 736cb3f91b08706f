"""Fuzz `load_lora` (issue 15, item 8): deterministic mutants of real and hand-built LoRA files.

Each mutant must either raise a typed `SdloraError` or be an exact accept: the raw tensors, read by the
safetensors library (an independent reader), are finite, and every module's delta equals an independent
computation written here (alpha/rank * up @ down, LoHa hadamard, LoKr kron, Tucker, DoRA) from those
raw tensors. Counted outcomes: typed refusals, exact accepts, accepts whose delta only misses the base
shape (a CompatibilityError from `delta`, which the loader's contract allows), untyped exceptions and
inconsistent accepts; the last two must be 0.

No hang is possible by construction: every mutant is a small file (the seeds are a few modules, the
one full cloneofsimo file is 1.5 MB), nesting is bounded by the JSON parser's recursion limit, and
every loop in a case runs over the mutant's tensors. The default run makes about 1,000 mutants; the
`slow` variant makes 2.5 times as many from another seed and larger fixture subsets.
"""

from __future__ import annotations

import json
import random
import struct
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sdlora.errors import CompatibilityError, SdloraError
from sdlora.formats import load_lora

WILD = Path(__file__).resolve().parents[1] / "fixtures" / "wild_loras"
CLASSES = ("truncation", "header", "offsets", "shapes_dtypes", "nan_inf", "metadata", "structure")
K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"  # SD1: 320 x 768
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"  # SD1: 320 x 320 x 3 x 3
DIFFUSERS_K = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
FLOAT_DTYPES = (
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
)
DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
               torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}  # fmt: skip
# a NaN or Inf bit pattern of each float dtype, little-endian (docs/formats.md)
NON_FINITE = {
    "F32": [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff"],
    "F64": [b"\x00" * 6 + b"\xf8\x7f", b"\x00" * 6 + b"\xf0\x7f"],
    "F16": [b"\x00\x7e", b"\x00\x7c", b"\x00\xfc"],
    "BF16": [b"\xc0\x7f", b"\x80\x7f", b"\x80\xff"],
    "F8_E4M3": [b"\x7f", b"\xff"],
    "F8_E5M2": [b"\x7c", b"\xfc", b"\x7e"],
}
# raw key endings -> role, longest first (the test's own reading of the key layouts, docs/formats.md)
ROLES = sorted(
    {
        "lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid",
        "lora_A.weight": "down", "lora_B.weight": "up", "lora.down.weight": "down", "lora.up.weight": "up",
        ":down": "down", ":up": "up", "hada_w1_a": "w1a", "hada_w1_b": "w1b", "hada_w2_a": "w2a",
        "hada_w2_b": "w2b", "hada_t1": "t1", "hada_t2": "t2", "lokr_w1": "w1", "lokr_w2": "w2",
        "lokr_w1_a": "w1a", "lokr_w1_b": "w1b", "lokr_w2_a": "w2a", "lokr_w2_b": "w2b", "lokr_t1": "t1",
        "lokr_t2": "t2", "diff": "diff", "diff_b": "diff_b", "dora_scale": "dora",
        "lora_magnitude_vector": "dora", "alpha": "alpha", "scale": "scale",
    }.items(),
    key=lambda item: -len(item[0]),
)  # fmt: skip


# ------------------------------------------------------------------------------------------------ seeds


def _rand(generator, *shape, dtype=torch.float32):
    return (torch.randn(*shape, generator=generator) * 0.5).to(dtype)


def hand_built(generator) -> dict[str, tuple[dict, dict]]:
    """Small files of each kind, in every float dtype: {name: (tensors, metadata)}."""
    seeds = {}
    for dtype in FLOAT_DTYPES:
        name = DTYPE_NAMES[dtype]
        seeds[f"kohya_{name}"] = (
            {f"{K}.lora_down.weight": _rand(generator, 4, 768, dtype=dtype),
             f"{K}.lora_up.weight": _rand(generator, 320, 4, dtype=dtype),
             f"{K}.alpha": torch.tensor(2.0, dtype=dtype),
             f"{CONV}.lora_down.weight": _rand(generator, 2, 320, 3, 3, dtype=dtype),
             f"{CONV}.lora_up.weight": _rand(generator, 320, 2, 1, 1, dtype=dtype),
             f"{CONV}.alpha": torch.tensor(1.0)},
            {"ss_network_dim": "4"},
        )  # fmt: skip
    seeds["loha_F16"] = (
        {f"{K}.hada_w1_a": _rand(generator, 320, 4, dtype=torch.float16),
         f"{K}.hada_w1_b": _rand(generator, 4, 768, dtype=torch.float16),
         f"{K}.hada_w2_a": _rand(generator, 320, 4, dtype=torch.float16),
         f"{K}.hada_w2_b": _rand(generator, 4, 768, dtype=torch.float16),
         f"{K}.alpha": torch.tensor(4.0, dtype=torch.float16)},
        {},
    )  # fmt: skip
    seeds["lokr_BF16"] = (
        {f"{K}.lokr_w1": _rand(generator, 4, 8, dtype=torch.bfloat16),
         f"{K}.lokr_w2_a": _rand(generator, 80, 2, dtype=torch.bfloat16),
         f"{K}.lokr_w2_b": _rand(generator, 2, 96, dtype=torch.bfloat16),
         f"{K}.alpha": torch.tensor(1.0),
         f"{CONV}.lokr_w1_a": _rand(generator, 4, 2), f"{CONV}.lokr_w1_b": _rand(generator, 2, 8),
         f"{CONV}.lokr_w2": _rand(generator, 80, 40, 3, 3), f"{CONV}.alpha": torch.tensor(2.0)},
        {},
    )  # fmt: skip
    seeds["dora_F32"] = (
        {f"{K}.lora_down.weight": _rand(generator, 4, 768), f"{K}.lora_up.weight": _rand(generator, 320, 4),
         f"{K}.alpha": torch.tensor(4.0), f"{K}.dora_scale": _rand(generator, 320, 1).abs() + 1,
         f"{CONV}.lora_down.weight": _rand(generator, 2, 320, 3, 3),
         f"{CONV}.lora_up.weight": _rand(generator, 320, 2, 1, 1),
         f"{CONV}.dora_scale": _rand(generator, 1, 320, 1, 1).abs() + 1},
        {},
    )  # fmt: skip
    seeds["tucker_F32"] = (
        {f"{CONV}.lora_down.weight": _rand(generator, 4, 320, 1, 1),
         f"{CONV}.lora_mid.weight": _rand(generator, 4, 4, 3, 3),
         f"{CONV}.lora_up.weight": _rand(generator, 320, 4, 1, 1), f"{CONV}.alpha": torch.tensor(2.0)},
        {},
    )  # fmt: skip
    packed = json.dumps({"unet.lora_alpha": 8, "unet.r": 4})
    seeds["diffusers_F16"] = (
        {f"{DIFFUSERS_K}.lora_A.weight": _rand(generator, 4, 768, dtype=torch.float16),
         f"{DIFFUSERS_K}.lora_B.weight": _rand(generator, 320, 4, dtype=torch.float16),
         f"{DIFFUSERS_K}.lora_magnitude_vector": _rand(generator, 320).abs() + 1},
        {"lora_adapter_metadata": packed, "format": "pt"},
    )  # fmt: skip
    return seeds


def _module_id(key: str) -> str:
    for ending, _ in ROLES:
        if key.endswith(ending):
            return key[: -len(ending)]
    return key


def wild_seeds(rng: random.Random, modules: int) -> dict[str, tuple[dict, dict, Path | None]]:
    """A few modules of each real fixture (keeping its metadata), and the whole small cloneofsimo file
    (its positional keys need every entry)."""
    seeds = {}
    for path in sorted(WILD.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        config = path.with_name(path.name.removesuffix(".safetensors") + ".adapter_config.json")
        config = config if config.is_file() else None
        if path.name.startswith("cloneofsimo"):
            if path.name == "cloneofsimo_sd15_r1_pti_f32.safetensors":
                seeds[path.stem] = (tensors, metadata, None)
            continue
        ids = sorted({_module_id(k) for k in tensors})
        convs = [m for m in ids if "conv" in m or "resnets" in m]
        chosen = set(rng.sample(ids, min(modules, len(ids)))) | set(convs[:1])
        seeds[path.stem] = ({k: v for k, v in tensors.items() if _module_id(k) in chosen}, metadata, config)
    return seeds


# ----------------------------------------------------------------------------------- container bytes


def _split(blob: bytes) -> tuple[dict, bytes]:
    (size,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + size]), blob[8 + size :]


def _join(header: dict | str, data: bytes) -> bytes:
    text = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    raw = text.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw)) + raw + data


def _tensor_keys(header: dict) -> list[str]:
    return sorted(k for k in header if k != "__metadata__")


def mutate_truncation(rng, blob):
    (size,) = struct.unpack("<Q", blob[:8])
    cut = rng.choice([0, 1, 7, 8, 9, 8 + size - 1, 8 + size, len(blob) - 1, rng.randrange(len(blob))])
    return f"cut at {cut}", blob[:cut]


def mutate_header(rng, blob):
    (size,) = struct.unpack("<Q", blob[:8])
    out = bytearray(blob)
    if rng.random() < 0.4:
        new = rng.choice(
            [0, 1, size - 1, size + 1, size + 8, size - 8, len(blob), 2**63, rng.randrange(2**64)]
        )
        out[:8] = struct.pack("<Q", new % 2**64)
        return f"length field {size} -> {new}", bytes(out)
    for _ in range(rng.randint(1, 3)):
        pos = 8 + rng.randrange(size)
        out[pos] = rng.choice([rng.randrange(256), ord("{"), ord('"'), ord("}"), ord(","), ord("9"), 0x80])
    return "header bytes flipped", bytes(out)


def mutate_offsets(rng, blob):
    header, data = _split(blob)
    keys = _tensor_keys(header)
    key = rng.choice(keys)
    start, end = header[key]["data_offsets"]
    op = rng.choice(["overlap", "alias", "gap", "out_of_range", "swap", "reverse", "beyond", "trailing"])
    if op == "overlap" and start > 0:
        shift = rng.randint(1, min(start, 16))
        header[key]["data_offsets"] = [start - shift, end - shift]
    elif op == "alias":
        other = rng.choice(keys)
        header[key]["data_offsets"] = list(header[other]["data_offsets"])
        header[key]["shape"], header[key]["dtype"] = header[other]["shape"], header[other]["dtype"]
    elif op == "gap":
        pad = rng.randint(1, 16)
        for k in keys:
            s, e = header[k]["data_offsets"]
            if s >= start:
                header[k]["data_offsets"] = [s + pad, e + pad]
        data = data[:start] + bytes(pad) + data[start:]
    elif op == "out_of_range":
        header[key]["data_offsets"] = [start + len(data), end + len(data)]
    elif op == "beyond":
        header[key]["data_offsets"] = [start, end + rng.randint(1, 64)]
    elif op == "trailing":
        data = data + bytes(rng.randint(1, 32))
    elif op in ("swap", "reverse"):  # valid rewrites: the data moves with its offsets
        return _reorder(rng, header, data, keys, op)
    return f"offsets {op} {key}", _join(header, data)


def _reorder(rng, header, data, keys, op):
    chunks = {k: data[slice(*header[k]["data_offsets"])] for k in keys}
    order = sorted(keys, key=lambda k: header[k]["data_offsets"][0])
    if op == "reverse":
        order.reverse()
    else:
        i, j = rng.randrange(len(order)), rng.randrange(len(order))
        order[i], order[j] = order[j], order[i]
    out, position = b"", 0
    for k in order:
        header[k]["data_offsets"] = [position, position + len(chunks[k])]
        out += chunks[k]
        position += len(chunks[k])
    return f"offsets {op} (valid)", _join(header, out)


ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I32": 4, "I16": 2, "U8": 1}
SAME_SIZE = {1: ["F8_E4M3", "F8_E5M2", "U8"], 2: ["F16", "BF16", "I16"], 4: ["F32", "I32"], 8: ["F64"]}


def _product(shape) -> int:
    total = 1
    for d in shape:
        total *= d
    return total


def _permute(rng, shape):
    shape = list(shape)
    rng.shuffle(shape)
    return shape


def _set_first(shape, value):
    return [value(shape[0]), *shape[1:]] if shape else shape


# shape changes: op -> new shape (from rng, old shape)
SHAPE_OPS = {
    "permute": _permute,
    "flatten": lambda rng, shape: [_product(shape)],
    "unsqueeze": lambda rng, shape: shape[: (i := rng.randint(0, len(shape)))] + [1] + shape[i:],
    "squeeze": lambda rng, shape: [d for d in shape if d != 1],
    "bool_dim": lambda rng, shape: [True if d == 1 else d for d in shape] or [True],
    "negative_dim": lambda rng, shape: _set_first(shape, lambda d: -d) or [-1],
    "float_dim": lambda rng, shape: _set_first(shape, float) or [1.0],
    "string_shape": lambda rng, shape: "x".join(map(str, shape)),
    "wrong_numel": lambda rng, shape: _set_first(shape, lambda d: d + 1) or [2],
}
# dtype changes: op -> new dtype (from rng, old dtype)
DTYPE_OPS = {
    "same_size_dtype": lambda rng, dtype: rng.choice(SAME_SIZE.get(ITEMSIZE.get(dtype, 0), ["U8"])),
    "other_size_dtype": lambda rng, dtype: rng.choice(
        [d for d in ITEMSIZE if ITEMSIZE[d] != ITEMSIZE.get(dtype)]
    ),
    "unknown_dtype": lambda rng, dtype: rng.choice(["F7", "f32", "", "C64"]),
}


def mutate_shapes_dtypes(rng, blob):
    header, data = _split(blob)
    key = rng.choice(_tensor_keys(header))
    entry = header[key]
    op = rng.choice(sorted(SHAPE_OPS) + sorted(DTYPE_OPS))
    if op in SHAPE_OPS:
        entry["shape"] = SHAPE_OPS[op](rng, list(entry["shape"]))
    else:
        entry["dtype"] = DTYPE_OPS[op](rng, entry["dtype"])
    return f"{op} {key}", _join(header, data)


def mutate_nan_inf(rng, blob):
    header, data = _split(blob)
    floats = [
        k for k in _tensor_keys(header) if header[k]["dtype"] in NON_FINITE and header[k]["shape"] != [0]
    ]
    if not floats or rng.random() < 0.15:  # random data bytes: valid, or a NaN by chance
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            if out:
                out[rng.randrange(len(out))] = rng.randrange(256)
        return "data bytes", _join(header, bytes(out))
    key = rng.choice(floats)
    dtype = header[key]["dtype"]
    start, end = header[key]["data_offsets"]
    width = ITEMSIZE[dtype]
    count = (end - start) // width
    if count == 0:
        return "nan_inf (empty)", _join(header, data)
    position = start + width * rng.randrange(count)
    pattern = rng.choice(NON_FINITE[dtype])
    return f"{dtype} non-finite in {key}", _join(header, data[:position] + pattern + data[position + width :])


def _adapter_values(rng) -> dict[str, str]:
    """lora_adapter_metadata texts: wrong types, and one valid (a different alpha)."""
    return {
        "adapter_string": '"eight"', "adapter_list": "[8, 4]", "adapter_not_json": "{unet",
        "adapter_text_alpha": json.dumps({"unet.lora_alpha": "x", "unet.r": 4}),
        "adapter_bool_alpha": json.dumps({"unet.lora_alpha": True}),
        "adapter_alpha": json.dumps({"unet.lora_alpha": rng.choice([1, 2.5, 16]), "unet.r": 4}),
        "adapter_pattern_list": json.dumps({"unet.alpha_pattern": [1, 2]}),
        "adapter_bad_regex": json.dumps({"unet.alpha_pattern": {"to_k(": 2}}),
    }  # fmt: skip


def _dumps(header) -> str:
    return json.dumps(header, separators=(",", ":"))


def _with_meta(header: dict, extra: dict) -> dict:
    header["__metadata__"] = {**(header.get("__metadata__") or {}), **extra}
    return header


def _deep(rng, choices) -> str:
    depth = rng.choice(choices)
    return "[" * depth + "]" * depth


def _first_entry(header: dict) -> tuple[str, str]:
    first = _tensor_keys(header)[0]
    return json.dumps(first), _dumps(header[first])


# raw JSON header texts: op -> text (from rng, header); duplicates, lone surrogates, deep nesting, wrong types
TEXT_OPS = {
    "duplicate_meta": lambda rng, h: _dumps(_with_meta(h, {"a": "1"})).replace('"a":"1"', '"a":"1","a":"2"', 1),
    "duplicate_tensor": lambda rng, h: _dumps(h)[:-1] + ",{}:{}}}".format(*_first_entry(h)),
    "surrogate_value": lambda rng, h: _dumps(_with_meta(h, {"name": "x"})).replace('"x"', '"x\\ud800"', 1),
    "surrogate_key": lambda rng, h: _dumps(_with_meta(h, {"name": "x"})).replace('"name":', '"na\\udfffme":', 1),
    "surrogate_tensor": lambda rng, h: _dumps(h).replace(_first_entry(h)[0], _first_entry(h)[0][:-1] + '\\ud83d"', 1),
    "deep_meta": lambda rng, h: _dumps(h)[:-1] + ',"__deep":' + _deep(rng, [50, 5000, 200_000]) + "}",
    "deep_shape": lambda rng, h: _dumps(h).replace('"shape":[', '"shape":[' + _deep(rng, [3, 3000, 200_000]) + ",", 1),
    "number_value": lambda rng, h: _dumps(_with_meta(h, {"n": 1})),
    "metadata_list": lambda rng, h: _dumps({**h, "__metadata__": ["a", "b"]}),
}  # fmt: skip


def mutate_metadata(rng, blob):
    header, data = _split(blob)
    adapter = _adapter_values(rng)
    op = rng.choice(sorted(adapter) + sorted(TEXT_OPS))
    if op in adapter:
        return op, _join(_with_meta(header, {"lora_adapter_metadata": adapter[op]}), data)
    return op, _join(TEXT_OPS[op](rng, header), data)


def _pick(rng, keys, roles, fallback):
    matching = [k for k in keys if _role(k) in roles]
    return rng.choice(matching) if matching else fallback


def _resize_first(rng, tensors, key, generator):
    tensor = tensors[key]
    if tensor.dim() >= 2:
        tensors[key] = _rand(generator, tensor.shape[0] + 1, *tensor.shape[1:]).to(tensor.dtype)
    return key


def _transpose(rng, tensors, key, generator):
    if tensors[key].dim() >= 2:
        tensors[key] = tensors[key].transpose(0, 1).contiguous()
    return key


def _extra_dim(rng, tensors, key, generator):
    tensors[key] = tensors[key].unsqueeze(rng.randint(0, tensors[key].dim())).contiguous()
    return key


def _multi_alpha(rng, tensors, key, generator):
    key = _pick(rng, sorted(tensors), ("alpha", "scale"), key)
    tensors[key] = torch.tensor([2.0, 2.0])
    return key


def _zero_dim(rng, tensors, key, generator):
    key = _pick(rng, sorted(tensors), ("down", "up", "dora", "w1a", "w2b", "w1"), key)
    tensors[key] = torch.tensor(1.5)
    return key


def _dora(right: bool):
    def add(rng, tensors, key, generator):
        key = _pick(rng, sorted(tensors), ("down", "w1a", "w1"), key)
        base = _module_id(key)
        ups = [k for k in tensors if _role(k) == "up" and k.startswith(base)]
        out = tensors[ups[0]].shape[0] if ups else 320
        shape = (out, 1) if right else rng.choice([(out + 1, 1), (out, 3), (2, out), (out, out)])
        tensors[f"{base}dora_scale"] = _rand(generator, *shape).abs()
        return f"{base}dora_scale"

    return add


def _drop_partner(rng, tensors, key, generator):
    key = _pick(rng, sorted(tensors), ("w1b", "w2b", "w1a", "up", "mid"), key)
    del tensors[key]
    return key


def _empty(rng, tensors, key, generator):
    shape = list(tensors[key].shape)
    if shape:
        shape[rng.randrange(len(shape))] = 0
        tensors[key] = torch.zeros(shape, dtype=tensors[key].dtype)
    return key


def _add_scale(rng, tensors, key, generator):
    if _module_id(key) != key:
        tensors[f"{_module_id(key)}scale"] = torch.tensor(rng.choice([0.5, 2.0]))
    return key


def _rename(rng, tensors, key, generator):
    tensors[key.replace("down_blocks", "nowhere_blocks").replace("layers", "nolayers")] = tensors.pop(key)
    return key


# module structure: op -> changes `tensors` in place, returns the key it changed
STRUCTURE_OPS = {
    "remove": lambda rng, tensors, key, generator: tensors.pop(key) is not None and key,
    "rank_mismatch": _resize_first, "transpose": _transpose, "extra_dim": _extra_dim,
    "multi_alpha": _multi_alpha, "zero_dim": _zero_dim, "dora_wrong": _dora(False), "dora_right": _dora(True),
    "drop_partner": _drop_partner, "empty": _empty, "add_scale": _add_scale, "rename": _rename,
}  # fmt: skip


def mutate_structure(rng, tensors: dict, metadata: dict):
    """Module-level changes, re-saved as a valid container: (description, tensors, metadata)."""
    tensors = dict(tensors)
    op = rng.choice(sorted(STRUCTURE_OPS))
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    key = STRUCTURE_OPS[op](rng, tensors, rng.choice(sorted(tensors)), generator)
    return f"{op} {key}", tensors, metadata


def _role(key: str) -> str | None:
    """The role of a raw key; an ending counts only after a separator ("x.Gora_scale" is no `.scale`)."""
    for ending, role in ROLES:
        before = key[-len(ending) - 1 : -len(ending)]
        if key.endswith(ending) and (
            ending.startswith(":") or before == "." or ("." in ending and before == "_")
        ):
            return role
    return None


# ------------------------------------------------------------------------------------------- the oracle


class Inconsistent(AssertionError):
    """An accepted mutant whose modules do not match the independent computation."""


def expected_check(lora, path: Path, config: dict | None) -> str:
    """Compare every module's delta with one computed here from the raw tensors; 'exact' or 'base_mismatch'."""
    try:
        raw = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - any refusal by the reference reader
        raise Inconsistent(f"accepted, but the safetensors library refuses the file: {err}") from None
    for key, tensor in raw.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.float()).all()):
            raise Inconsistent(f"accepted with non-finite tensor {key!r}")
    outcome = "exact"
    # only diffusers/PEFT readers take alphas from lora_adapter_metadata or the adapter config
    diffusers = lora.format in ("diffusers", "diffusers-legacy", "diffusers-attnproc", "peft")
    packed = _packed_metadata(lora.metadata) if diffusers else {}
    config = config if diffusers else None
    for name, module in lora.modules.items():
        parts = {_role(k): raw[k] for k in lora.source_keys[name]}
        try:
            natural, magnitude, axis = _independent_delta(parts, lora.source_keys[name], name, packed, config)
        except Exception as err:  # noqa: BLE001 - the factors do not combine: the loader should have refused
            raise Inconsistent(f"{name}: accepted, but its factors do not combine: {err!r}") from None
        target = module.shape or lora._family_shape(name) or tuple(natural.shape)
        generator = torch.Generator().manual_seed(7)
        base = torch.randn(*target, generator=generator) if magnitude is not None else None
        try:
            got = lora.delta(name, base_weight=base)
        except (
            CompatibilityError
        ):  # the base shape does not fit: allowed; check against the factors' own shape
            outcome = "base_mismatch"
            target = tuple(natural.shape)
            base = torch.randn(*target, generator=generator) if magnitude is not None else None
            got = lora.delta(name, base_weight=base) if base is not None else _raw_delta(module)
        _compare(name, got, _fit(natural, tuple(got.shape), name), magnitude, axis, base)
    return outcome


def _raw_delta(module):
    from sdlora.delta import module_delta

    return module_delta(module)


def _packed_metadata(metadata: dict) -> dict:
    try:
        packed = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except json.JSONDecodeError:
        return {}
    return packed if isinstance(packed, dict) else {}


def _independent_delta(parts: dict, keys: list[str], name: str, packed: dict, config: dict | None):
    """(scale * ΔW in its natural shape, DoRA magnitude or None, DoRA axis) from raw tensors."""
    t = {role: tensor.float() for role, tensor in parts.items()}
    loha = any(".hada_" in k for k in keys)
    peft_magnitude = any("lora_magnitude_vector" in k for k in keys)
    if "down" in t:
        rank = t["down"].shape[0]
        up = t["up"].reshape(t["up"].shape[0], -1)
        assert up.shape[1] == rank
        if "mid" in t:
            delta = torch.einsum("nmkl,in,mj->ijkl", t["mid"], up, t["down"].reshape(rank, -1))
        else:
            delta = (up @ t["down"].reshape(rank, -1)).reshape(up.shape[0], *t["down"].shape[1:])
    elif "diff" in t:
        rank, delta = None, t["diff"]
    elif loha:
        rank = t["w1b"].shape[0]
        delta = (t["w1a"] @ t["w1b"]) * (t["w2a"] @ t["w2b"])
    else:
        w1 = t["w1"] if "w1" in t else t["w1a"] @ t["w1b"]
        w2 = t["w2"] if "w2" in t else t["w2a"] @ t["w2b"]
        rank = t["w1b"].shape[0] if "w1b" in t else (t["w2b"].shape[0] if "w2b" in t else None)
        while w1.dim() < w2.dim():
            w1 = w1.unsqueeze(-1)
        while w2.dim() < w1.dim():
            w2 = w2.unsqueeze(-1)
        delta = torch.kron(w1, w2)
    scale = _scale(t, rank, name, packed, config)
    magnitude = t.get("dora")
    # Kohya/LyCORIS keep-dim (1, in[, 1, 1]) means per input column; PEFT/diffusers magnitudes are always
    # per output channel, whatever their stored shape (docs/formats.md)
    axis = "out"
    kohya_keep_dim = magnitude is not None and not peft_magnitude and magnitude.dim() > 1
    if kohya_keep_dim and magnitude.shape[0] == 1 and magnitude.shape[1] > 1:
        axis = "in"
    return delta * scale, magnitude, axis


def _scale(t: dict, rank, name: str, packed: dict, config: dict | None) -> float:
    """alpha / rank: `.scale` key, else `.alpha` (0 means scale 1), else the PEFT config / metadata."""
    if not rank:
        return 1.0
    if "scale" in t:
        return float(t["scale"].reshape(-1)[0])
    if "alpha" in t:
        alpha = float(t["alpha"].reshape(-1)[0])
        return alpha / rank if alpha else 1.0
    source = config if config is not None else {k.split(".", 1)[1]: v for k, v in packed.items()
                                                if k.startswith(name.split(".")[0] + ".")}  # fmt: skip
    alpha = source.get("lora_alpha")
    return float(alpha) / rank if alpha else 1.0


def _fit(natural: torch.Tensor, shape: tuple, name: str) -> torch.Tensor:
    if tuple(natural.shape) == shape:
        return natural
    if natural.numel() == torch.Size(shape).numel() and natural.shape[0] == shape[0]:
        return natural.reshape(shape)
    raise Inconsistent(f"{name}: delta shape {tuple(natural.shape)} cannot be {shape}")


def _compare(name, got, delta, magnitude, axis, base):
    if magnitude is not None:
        merged = base + delta
        if axis == "out":
            norm = merged.reshape(merged.shape[0], -1).norm(dim=1)
            keep = (merged.shape[0],) + (1,) * (merged.dim() - 1)
        else:
            norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
            keep = (1, merged.shape[1]) + (1,) * (merged.dim() - 2)
        delta = magnitude.reshape(keep) * merged / norm.reshape(keep) - base
    scale = float(delta.abs().nan_to_num(posinf=0, neginf=0).max()) if delta.numel() else 0.0
    try:
        torch.testing.assert_close(got, delta, rtol=1e-3, atol=1e-5 * scale + 1e-6, equal_nan=True)
    except AssertionError as err:
        raise Inconsistent(f"{name}: delta differs from the independent computation: {err}") from None


# --------------------------------------------------------------------------------------------- the run

BYTE_MUTATORS = {
    "truncation": mutate_truncation,
    "header": mutate_header,
    "offsets": mutate_offsets,
    "shapes_dtypes": mutate_shapes_dtypes,
    "nan_inf": mutate_nan_inf,
    "metadata": mutate_metadata,
}


def run_campaign(tmp_path: Path, *, rng_seed: int, per_seed: int, wild_modules: int, clone_cases: int):
    """Generate and load the mutants; returns (Counter of (class, outcome), list of failure lines)."""
    rng = random.Random(rng_seed)
    generator = torch.Generator().manual_seed(rng_seed)
    seeds = {name: (t, m, None) for name, (t, m) in hand_built(generator).items()}
    seeds.update(wild_seeds(rng, wild_modules))
    counts: Counter = Counter()
    failures: list[str] = []
    for seed_name, (tensors, metadata, config_path) in seeds.items():
        folder = tmp_path / seed_name
        folder.mkdir()
        config = json.loads(config_path.read_text()) if config_path else None
        if config_path:
            (folder / "case.adapter_config.json").write_text(config_path.read_text())
        seed_file = folder / "seed.safetensors"
        save_file(tensors, str(seed_file), metadata=metadata or None)
        blob = seed_file.read_bytes()
        cases = clone_cases if seed_name.startswith("cloneofsimo") else per_seed
        for index in range(cases):
            mutant_class = CLASSES[index % len(CLASSES)]
            path = folder / "case.safetensors"
            if mutant_class == "structure":
                what, mutated, meta = mutate_structure(rng, tensors, metadata)
                save_file({k: v.contiguous() for k, v in mutated.items()}, str(path), metadata=meta or None)
            else:
                what, data = BYTE_MUTATORS[mutant_class](rng, blob)
                path.write_bytes(data)
            outcome = _one_case(path, config)
            counts[(mutant_class, outcome.split(":")[0])] += 1
            if outcome.startswith(("untyped", "inconsistent")):
                failures.append(f"{seed_name} #{index} {mutant_class} [{what}]: {outcome}")
    return counts, failures


def _one_case(path: Path, config: dict | None) -> str:
    try:
        lora = load_lora(path)
    except SdloraError:
        return "refused"
    except Exception as err:  # noqa: BLE001 - what the fuzz test is looking for
        return f"untyped: {type(err).__name__}: {str(err)[:200]}"
    try:
        return "accepted_" + expected_check(lora, path, config)
    except Inconsistent as err:
        return f"inconsistent: {str(err)[:300]}"
    except Exception as err:  # noqa: BLE001 - delta() failed after a successful load
        return f"untyped: delta failed after load: {type(err).__name__}: {str(err)[:200]}"


def _table(counts: Counter) -> str:
    outcomes = sorted({o for _, o in counts})
    lines = [f"{'class':<14}" + "".join(f"{o:>24}" for o in outcomes)]
    for mutant_class in CLASSES:
        lines.append(f"{mutant_class:<14}" + "".join(f"{counts[(mutant_class, o)]:>24}" for o in outcomes))
    return "\n".join(lines)


def _check(counts: Counter, failures: list[str], minimum: int) -> None:
    print(_table(counts))  # shown with -s: the outcome counts by class
    assert not failures, "\n".join(failures[:20])
    assert sum(counts.values()) >= minimum
    for mutant_class in CLASSES:  # every class produced refusals, and the campaign also accepted files
        assert counts[(mutant_class, "refused")] > 0, mutant_class
    assert counts[("structure", "accepted_exact")] + counts[("offsets", "accepted_exact")] > 0


@pytest.mark.slow  # 13 s on two busy cores: outside the fast lane (scripts/test.sh)
def test_fuzz_load_lora(tmp_path):
    counts, failures = run_campaign(tmp_path, rng_seed=15, per_seed=63, wild_modules=3, clone_cases=8)
    _check(counts, failures, minimum=1000)


@pytest.mark.slow
def test_fuzz_load_lora_long(tmp_path):
    counts, failures = run_campaign(tmp_path, rng_seed=1515, per_seed=160, wild_modules=6, clone_cases=20)
    _check(counts, failures, minimum=2500)  # about 2 minutes on 2 busy cores
