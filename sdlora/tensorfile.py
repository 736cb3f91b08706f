"""Read every tensor of a validated .safetensors file with one read, and check floats for NaN/Inf.

Why not `safetensors.torch.load_file`: it allocates and copies each tensor separately, and a LoRA has
thousands of small tensors. Here the data section is read once into one buffer and each tensor is a view
into it (a copy only for a misaligned tensor); the NaN/Inf check then runs over runs of neighbouring
tensors of one dtype (usually the whole file at once) instead of once per tensor.

Depends on torch and sdlora.header (the header must come from `read_header`, which checked every offset).
"""

from __future__ import annotations

import math
import os
import sys

import torch

from sdlora.errors import FormatError
from sdlora.header import SafetensorsHeader, TensorInfo

TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
# float8 has no fast finite sum; its NaN/Inf are bit patterns (docs/formats.md): (mask, value) on each byte.
# E4M3 (the "fn" variant safetensors stores) has no Inf and one NaN per sign, S.1111.111; E5M2 is IEEE-like,
# exponent 11111 means Inf (mantissa 0) or NaN.
F8_NON_FINITE = {"F8_E4M3": (0x7F, 0x7F), "F8_E5M2": (0x7C, 0x7C)}


def read_tensors(header: SafetensorsHeader) -> dict[str, torch.Tensor]:
    """{key: tensor} for a header from `read_header`; FormatError when the file is damaged or holds NaN/Inf."""
    name = os.path.basename(header.path)
    unknown = sorted({info.dtype for info in header.tensors.values()} - set(TORCH_DTYPES))
    if unknown or sys.byteorder != "little":
        return _read_with_safetensors(header, name)
    data = _read_data(header, name)
    tensors = {key: _view(data, info) for key, info in header.tensors.items()}
    bad = first_non_finite(data, header)
    if bad is not None:
        raise _non_finite(name, bad)
    return tensors


def _non_finite(name: str, key: str) -> FormatError:
    return FormatError(
        f"{name}: tensor {key!r} contains NaN or Inf values; the LoRA is broken (training diverged "
        "or the file was damaged); use an earlier checkpoint"
    )


def _read_data(header: SafetensorsHeader, name: str) -> torch.Tensor:
    """The data section as one writable uint8 tensor."""
    size = header.file_size - header.data_offset
    buffer = bytearray(size)
    try:
        with open(header.path, "rb") as fh:
            fh.seek(header.data_offset)
            got = fh.readinto(buffer)
    except OSError as err:
        raise FormatError(
            f"{name}: cannot read tensors ({err}); check the file and its permissions"
        ) from None
    if got != size:
        raise FormatError(
            f"{name}: the file changed while it was read ({got} of {size} bytes); read it again"
        )
    return torch.frombuffer(buffer, dtype=torch.uint8) if size else torch.empty(0, dtype=torch.uint8)


def _view(data: torch.Tensor, info: TensorInfo) -> torch.Tensor:
    """The tensor `info` describes, as a view into `data` (copied when its offset is misaligned)."""
    dtype = TORCH_DTYPES[info.dtype]
    raw = data[info.start : info.end]
    if info.start % dtype.itemsize:
        raw = raw.clone()
    return raw.view(dtype).reshape(info.shape)


def first_non_finite(data: torch.Tensor, header: SafetensorsHeader) -> str | None:
    """The first float tensor (in file order) holding NaN/Inf, or None.

    Neighbouring tensors of one float dtype are summed as one run (float32 accumulation, float64 for
    float64 data): NaN/Inf anywhere makes the total non-finite, so a finite total clears the whole run at
    the speed of one vectorised sum. Only a run with a non-finite total (NaN/Inf, or a sum of huge finite
    values that overflowed) is searched tensor by tensor, which names the key or finds none.
    """
    for dtype_name, keys, start, end in _float_runs(header):
        if not _run_may_be_non_finite(data[start:end], dtype_name):
            continue
        for key in keys:
            info = header.tensors[key]
            if _run_may_be_non_finite(data[info.start : info.end], dtype_name, exact=True):
                return key
    return None


def _run_may_be_non_finite(raw: torch.Tensor, dtype_name: str, exact: bool = False) -> bool:
    """NaN/Inf in `raw` bytes of one float dtype. The run sum can also overflow on huge finite values
    (a false alarm the exact per-tensor check then clears); float8 is checked exactly on its bits."""
    if dtype_name in F8_NON_FINITE:
        mask, value = F8_NON_FINITE[dtype_name]
        return bool(((raw & mask) == value).any())
    dtype = TORCH_DTYPES[dtype_name]
    values = (raw.clone() if raw.storage_offset() % dtype.itemsize else raw).view(dtype)
    if exact:
        return not bool(torch.isfinite(values).all())
    total_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return not math.isfinite(float(values.sum(dtype=total_dtype)))


def _float_runs(header: SafetensorsHeader):
    """(dtype name, keys, start, end) for each run of adjacent tensors of one float dtype."""
    runs: list[list] = []
    for key, info in sorted(header.tensors.items(), key=lambda item: item[1].start):
        if info.dtype not in FLOAT_DTYPES or info.start == info.end:
            continue
        last = runs[-1] if runs else None
        if last and last[0] == info.dtype and last[3] == info.start:
            last[1].append(key)
            last[3] = info.end
        else:
            runs.append([info.dtype, [key], info.start, info.end])
    return [tuple(run) for run in runs]


def _read_with_safetensors(header: SafetensorsHeader, name: str) -> dict[str, torch.Tensor]:
    """Fallback for dtypes torch views cannot express here (float8) or a big-endian machine."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(header.path)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:  # header was validated already
        raise FormatError(f"{name}: cannot read tensors ({err}); the file is damaged, get it again") from None
    checked = {TORCH_DTYPES[d] for d in FLOAT_DTYPES}
    bad = next(
        (k for k, t in tensors.items() if t.dtype in checked and not bool(torch.isfinite(t.float()).all())),
        None,
    )
    if bad is not None:
        raise _non_finite(name, bad)
    return tensors
