"""resize / merge / extract on hand-built LoRAs and tiny models."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file
from stack_helpers import live_modules, pick, random_lora

from sdlora.errors import CompatibilityError, ConfigError
from sdlora.extract import extract
from sdlora.tools import merge, resize
from sdlora.weights import LoraModule, LoraState


def _names(components):
    convs = [n for n, m in live_modules(components).items() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    return pick(components, "unet", 4) + convs[:2] + pick(components, "text_encoder", 2)


def _close(a, b, rel=1e-5):
    return (a - b).abs().max() <= rel * max(float(b.abs().max()), 1e-12)


def test_resize_to_full_rank_reproduces_delta_and_scale(components):
    lora = random_lora(components, _names(components), rank=4, alpha=1.5)
    result = resize(lora, rank=4)
    for name in lora.modules:
        assert _close(result.lora.delta(name), lora.delta(name)), name
        new = result.lora.modules[name]
        assert new.rank == 4 and new.scale == pytest.approx(lora.modules[name].scale)
        assert result.modules[name].energy == pytest.approx(1.0)
    assert result.lora.metadata["ss_network_dim"] == "4"


def test_resize_by_energy_picks_the_smallest_rank():
    q1, _ = torch.linalg.qr(torch.randn(16, 4, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(12, 4, dtype=torch.float64))
    s = torch.tensor([10.0, 1.0, 0.1, 0.01], dtype=torch.float64)
    module = LoraModule("lora", {"up": (q1 * s).float(), "down": q2.T.float()}, alpha=4.0)
    lora = LoraState(modules={"unet.x.to_q": module})
    result = resize(lora, energy=0.995)
    # rank 1 keeps 100/101.0101 = 0.99 < 0.995; rank 2 keeps 101/101.0101 = 0.9999
    assert result.modules["unet.x.to_q"].new_rank == 2
    assert result.modules["unet.x.to_q"].energy == pytest.approx(101 / 101.0101, rel=1e-5)
    assert result.lora.modules["unet.x.to_q"].scale == pytest.approx(1.0)
    low = resize(lora, rank=1)
    expected = (q1[:, :1] * 10.0) @ q2.T[:1]
    assert _close(low.lora.delta("unet.x.to_q").double(), expected, 1e-5)


def test_resize_loha_to_full_rank():
    g = torch.Generator().manual_seed(0)
    t = {k: torch.randn(shape, generator=g) for k, shape in
         {"w1a": (6, 2), "w1b": (2, 5), "w2a": (6, 2), "w2b": (2, 5)}.items()}
    lora = LoraState(modules={"unet.m.to_k": LoraModule("loha", t, alpha=1.0, shape=(6, 5))})
    result = resize(lora, rank=5)
    assert _close(result.lora.delta("unet.m.to_k"), lora.delta("unet.m.to_k"))


@pytest.mark.parametrize("bad", [{"rank": 0}, {"rank": 2.5}, {"energy": 1.5}, {"rank": 2, "energy": 0.9}, {}])
def test_resize_bad_target_is_a_clear_error(components, bad):
    with pytest.raises(ConfigError, match="rank|energy"):
        resize(random_lora(components, _names(components)), **bad)


def test_merge_svd_exact_equals_weighted_sum(components):
    names = _names(components)
    a = random_lora(components, names, rank=4, alpha=2.0, seed=1)
    b = random_lora(components, names[2:], rank=3, alpha=3.0, seed=2)
    result = merge([(a, 0.7), (b, 0.3)], mode="svd", rank=7)
    for name in names:
        expected = 0.7 * a.delta(name) + (0.3 * b.delta(name) if name in b.modules else 0)
        assert _close(result.lora.delta(name), expected), name
    assert "modelspec.merged_from" in result.lora.metadata


def test_merge_concat_is_exact_and_keeps_each_scale(components):
    names = _names(components)
    a = random_lora(components, names, rank=4, alpha=1.0, seed=1)
    b = random_lora(components, names, rank=2, alpha=8.0, seed=2)
    result = merge([(a, 0.5), (b, -1.0)], mode="concat")
    for name in names:
        assert result.lora.modules[name].rank == 6
        assert _close(result.lora.delta(name), 0.5 * a.delta(name) - b.delta(name)), name


def test_merge_refuses_mixed_families_and_concat_of_loha(components):
    a = random_lora(components, _names(components), seed=1)
    b = random_lora(components, _names(components), seed=2)
    a.family, b.family = "sd1", "sdxl"
    with pytest.raises(CompatibilityError, match="sd1.*sdxl|different base families"):
        merge([(a, 1), (b, 1)])
    loha = LoraState(modules={"unet.m.to_k": LoraModule("loha", {
        "w1a": torch.ones(2, 1), "w1b": torch.ones(1, 2), "w2a": torch.ones(2, 1), "w2b": torch.ones(1, 2)})})
    with pytest.raises(CompatibilityError, match="LoHa.*svd"):
        merge([(loha, 1)], mode="concat")


def _plant(components, rank=3, count=4):
    """A copy of the components with a rank-`rank` change planted in `count` modules."""
    tuned = copy.deepcopy(components)
    live = live_modules(tuned)
    g = torch.Generator().manual_seed(3)
    planted = {}
    unet = [n for n in pick(tuned, "unet", 0) if ".attentions." in n]  # extract's default targets
    for name in unet[: count // 2] + pick(tuned, "text_encoder", count - count // 2):
        w = live[name].weight
        delta = torch.randn(w.shape[0], rank, generator=g) @ torch.randn(rank, w[0].numel(), generator=g) * 0.05
        with torch.no_grad():
            w += delta.reshape(w.shape)
        planted[name] = delta.reshape(w.shape)
    return tuned, planted


def test_extract_recovers_planted_low_rank_difference(components):
    tuned, planted = _plant(components)
    result = extract(components, tuned, rank=3)
    assert set(result.lora.modules) == set(planted)
    for name, delta in planted.items():
        assert _close(result.lora.delta(name), delta, 1e-4), name
        assert result.modules[name].energy == pytest.approx(1.0)


def test_extract_from_unet_files(components, tmp_path):
    tuned, planted = _plant(components)
    save_file(components["unet"].state_dict(), str(tmp_path / "base.safetensors"))
    save_file(tuned["unet"].state_dict(), str(tmp_path / "tuned.safetensors"))
    result = extract(tmp_path / "base.safetensors", tmp_path / "tuned.safetensors", rank=3)
    unet_planted = {n: d for n, d in planted.items() if n.startswith("unet.")}
    assert set(result.lora.modules) == set(unet_planted)
    for name, delta in unet_planted.items():
        assert _close(result.lora.delta(name), delta, 1e-4), name


def test_extract_of_identical_models_is_a_clear_error(components):
    with pytest.raises(ConfigError, match="same weights"):
        extract(components, copy.deepcopy(components), rank=4)


def _fp16(lora: LoraState) -> LoraState:
    for module in lora.modules.values():
        module.tensors = {k: t.half() for k, t in module.tensors.items()}
    return lora


def _dtypes(lora: LoraState) -> set:
    return {t.dtype for m in lora.modules.values() for t in m.tensors.values()}


def test_resize_and_merge_keep_the_input_dtype_unless_told(components):
    names = _names(components)
    a = _fp16(random_lora(components, names, rank=8, seed=1))
    b = _fp16(random_lora(components, names, rank=4, seed=2))
    assert _dtypes(resize(a, rank=4).lora) == {torch.float16}
    assert _dtypes(merge([(a, 1.0), (b, 0.5)], mode="svd", rank=4).lora) == {torch.float16}
    assert _dtypes(merge([(a, 1.0), (b, 0.5)], mode="concat").lora) == {torch.float16}
    assert _dtypes(resize(a, rank=4, dtype="bf16").lora) == {torch.bfloat16}
    assert _dtypes(merge([(a, 1.0), (b, 1.0)], dtype="fp32").lora) == {torch.float32}
    # inputs stored in different dtypes: float32, so that neither loses precision
    c = random_lora(components, names, rank=4, seed=3)
    assert _dtypes(merge([(a, 1.0), (c, 1.0)]).lora) == {torch.float32}
    with pytest.raises(ConfigError, match="fp16, bf16 or fp32"):
        resize(a, rank=4, dtype="int8")
