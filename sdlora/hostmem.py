"""Large CPU tensors whose memory is mapped up front, in 2 MB pages where the kernel allows it.

Why: patching a stack of LoRAs needs about a gigabyte of fresh memory at once (the patched weights, the
file buffers, the concatenated factors). A fresh tensor from `torch.empty` is mapped lazily, one 4 KB
page fault at a time while the first kernel writes it; on a virtual machine each fault costs a trap, and
measured on this project's machine the faults took longer than the patch arithmetic itself. On Linux,
`madvise(MADV_HUGEPAGE)` asks for 2 MB pages (512x fewer faults and TLB entries) and
`madvise(MADV_POPULATE_WRITE)` (Linux 5.14+) maps the whole range in one system call. Elsewhere, for
small sizes, or when the kernel refuses, this is plain `torch.empty`: same result, slower only.

The tensor's storage covers exactly the tensor's bytes (torch.save and safetensors see an ordinary
tensor); the mapping behind it lives as long as any view of it and is unmapped when the last one goes.

Depends on torch only.
"""

from __future__ import annotations

import mmap
import sys
from math import prod

import torch

HUGE_PAGE = 2 << 20
MIN_BYTES = 1 << 20  # below this the page faults cost little and a mapping per tensor is not worth it
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14+, not named in Python 3.11
_ENABLED = sys.platform.startswith("linux") and hasattr(mmap, "MADV_HUGEPAGE")


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised, writable CPU tensor of `shape` and `dtype`, its memory mapped already."""
    shape = tuple(shape)
    nbytes = prod(shape) * dtype.itemsize
    if not _ENABLED or nbytes < MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    mapping = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = _aligned_offset(mapping)
    _advise(mapping, start, nbytes)
    flat = torch.frombuffer(mapping, dtype=torch.uint8, count=nbytes, offset=start)
    return flat.view(dtype).view(shape)


def empty_like(tensor: torch.Tensor) -> torch.Tensor:
    """`empty(tensor.shape, tensor.dtype)`: an uninitialised CPU tensor shaped like `tensor`."""
    return empty(tensor.shape, tensor.dtype)


def _aligned_offset(mapping: mmap.mmap) -> int:
    """Bytes from the mapping's start to its first 2 MB boundary (huge pages need aligned addresses)."""
    probe = torch.frombuffer(mapping, dtype=torch.uint8, count=1)
    offset = (-probe.data_ptr()) % HUGE_PAGE
    del probe  # a live export would keep the mapping from ever being closed early; drop it at once
    return offset


def _advise(mapping: mmap.mmap, start: int, nbytes: int) -> None:
    """Ask for huge pages, then map the range in one call; each is only a hint, so refusals are ignored."""
    length = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
    for advice in (mmap.MADV_HUGEPAGE, _MADV_POPULATE_WRITE):
        try:
            mapping.madvise(advice, start, length)
        except (OSError, ValueError):  # an older kernel (EINVAL) or THP switched off: faults map it later
            continue
