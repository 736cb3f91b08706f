"""sdlora.hostmem: big CPU tensors in pre-mapped (huge-page) memory behave like torch.empty's."""

import gc
import io
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save

from sdlora import hostmem

BIG = (1024, 1024)  # 4 MiB of float32: above MIN_BYTES, so it takes the mapped path on Linux


def test_big_tensor_is_an_ordinary_contiguous_writable_tensor():
    t = hostmem.empty(BIG)
    assert t.shape == BIG and t.dtype == torch.float32 and t.is_contiguous()
    t.fill_(2.5)
    assert float(t.sum()) == 2.5 * t.numel()
    # the storage is exactly the tensor: torch.save and safetensors see no hidden neighbours
    assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


def test_other_dtypes_and_empty_like():
    half = hostmem.empty((2048, 1024), torch.float16)
    like = hostmem.empty_like(half)
    assert half.dtype == like.dtype == torch.float16 and like.shape == half.shape
    raw = hostmem.empty((5 << 20,), torch.uint8)
    raw[-1] = 7
    assert int(raw[-1]) == 7


@pytest.mark.skipif(not hostmem._ENABLED, reason="mapped memory is Linux-only; elsewhere it is torch.empty")
def test_mapped_memory_is_huge_page_aligned():
    assert hostmem.empty(BIG).data_ptr() % hostmem.HUGE_PAGE == 0


def test_small_sizes_and_disabled_platforms_fall_back_to_torch_empty(monkeypatch):
    small = hostmem.empty((16, 16))
    assert small.untyped_storage().nbytes() == 16 * 16 * 4
    monkeypatch.setattr(hostmem, "_ENABLED", False)
    t = hostmem.empty(BIG).fill_(1.0)
    assert t.shape == BIG and float(t.sum()) == t.numel()


def test_a_refused_advice_is_ignored(monkeypatch):
    monkeypatch.setattr(hostmem, "_MADV_POPULATE_WRITE", 987654)  # no such advice: the kernel says EINVAL
    t = hostmem.empty(BIG).fill_(3.0)
    assert float(t.mean()) == 3.0


def test_views_keep_the_memory_alive_after_the_tensor_is_gone():
    t = hostmem.empty(BIG)
    t.copy_(torch.arange(t.numel(), dtype=torch.float32).view(BIG))
    row = t[7]
    del t
    gc.collect()
    assert torch.equal(row, torch.arange(7 * BIG[1], 8 * BIG[1], dtype=torch.float32))


def test_round_trips_through_safetensors_and_torch_save():
    a = hostmem.empty(BIG).normal_()
    b = hostmem.empty((512, 2048), torch.float16).normal_()
    back = load(save({"a": a, "b": b}))
    assert torch.equal(back["a"], a) and torch.equal(back["b"], b)
    buffer = io.BytesIO()
    torch.save({"a": a}, buffer)
    assert len(buffer.getvalue()) < a.numel() * 4 + 4096  # the tensor's bytes, not the whole mapping
    assert torch.equal(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)["a"], a)


def _thp_mode() -> str | None:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    found = re.search(r"\[(\w+)\]", path.read_text()) if path.exists() else None
    return found[1] if found else None


@pytest.mark.skipif(
    not hostmem._ENABLED or _thp_mode() not in ("always", "madvise"),
    reason="the kernel has transparent huge pages switched off here",
)
def test_the_kernel_backs_it_with_huge_pages():
    t = hostmem.empty((4096, 1024)).fill_(1.0)  # 16 MiB: at least seven whole aligned 2 MiB pages
    start = t.data_ptr()
    assert _anon_huge_kb(start) >= 2048, "expected 2 MB pages behind the mapping (MADV_HUGEPAGE)"


def _anon_huge_kb(address: int) -> int:
    """AnonHugePages (kB) of the /proc/self/smaps entry that holds `address`."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if head:
            inside = int(head[1], 16) <= address < int(head[2], 16)
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0
