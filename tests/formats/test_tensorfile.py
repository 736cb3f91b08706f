"""sdlora.tensorfile: one-read tensor loading equals safetensors' own reader; NaN/Inf named by key."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdlora.errors import FormatError
from sdlora.header import read_header
from sdlora.tensorfile import read_tensors


def mixed_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "a.lora_down.weight": torch.randn(4, 8, generator=gen),
        "a.lora_up.weight": torch.randn(8, 4, generator=gen).half(),
        "a.alpha": torch.tensor(2.0),
        "b.lora_down.weight": torch.randn(2, 3, 3, 3, generator=gen).bfloat16(),
        "b.ids": torch.arange(5, dtype=torch.int64),
        "b.empty": torch.zeros(0, 4),
    }


def test_equals_safetensors_reader_for_every_dtype(tmp_path):
    path = tmp_path / "mixed.safetensors"
    save_file(mixed_tensors(), path)
    ours, theirs = read_tensors(read_header(path)), load_file(path)
    assert ours.keys() == theirs.keys()
    for key, tensor in theirs.items():
        assert ours[key].dtype == tensor.dtype and ours[key].shape == tensor.shape
        assert torch.equal(ours[key], tensor), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_value_is_named(tmp_path, dtype, bad):
    tensors = {f"m{i}.lora_down.weight": torch.ones(3, 5, dtype=dtype) for i in range(6)}
    tensors["m3.lora_down.weight"][1, 2] = bad
    path = tmp_path / "broken.safetensors"
    save_file(tensors, path)
    with pytest.raises(
        FormatError, match=r"broken\.safetensors: tensor 'm3\.lora_down\.weight' contains NaN or Inf"
    ):
        read_tensors(read_header(path))


def test_misaligned_tensor_is_copied_not_refused(tmp_path):
    """A hand-written file whose float32 tensor starts at an odd byte offset still reads exactly."""
    half = torch.tensor([1.5], dtype=torch.float16)
    single = torch.tensor([[0.25, -3.0]], dtype=torch.float32)
    header = {
        "h": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]},
        "s": {"dtype": "F32", "shape": [1, 2], "data_offsets": [2, 10]},
    }
    raw = json.dumps(header).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + half.numpy().tobytes() + single.numpy().tobytes())
    tensors = read_tensors(read_header(path))
    assert torch.equal(tensors["h"], half) and torch.equal(tensors["s"], single)


def test_file_that_shrinks_after_the_header_is_a_clear_error(tmp_path):
    path = tmp_path / "shrunk.safetensors"
    save_file({"x.lora_down.weight": torch.ones(64, 64)}, path)
    header = read_header(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FormatError, match="changed while it was read"):
        read_tensors(header)


def test_huge_finite_values_whose_sum_overflows_are_not_refused(tmp_path):
    """The fast check sums a whole run; an overflowing total must fall back to the exact per-tensor test."""
    path = tmp_path / "huge.safetensors"
    save_file(
        {"a.lora_down.weight": torch.full((4, 4), 3.0e38), "a.lora_up.weight": torch.full((4, 4), 3.0e38)},
        path,
    )
    tensors = read_tensors(read_header(path))
    assert float(tensors["a.lora_up.weight"][0, 0]) == pytest.approx(3.0e38)
