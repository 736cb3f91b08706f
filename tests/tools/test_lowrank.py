"""Factor-space SVD (sdlora.lowrank) against the dense SVD of each module's full ΔW, per adapter kind.

The reference is computed here: the full ΔW (LoraState.delta), one float64 SVD, cut to the same rank. The
factor-space result must equal it to 1e-5 relative, for linear and conv modules of every kind.
"""

from __future__ import annotations

import pytest
import torch

from sdlora.errors import CompatibilityError, Interrupted
from sdlora.lowrank import module_svd
from sdlora.tools import merge, resize
from sdlora.weights import LoraModule, LoraState

NAME = "unet.down_blocks.0.attentions.0.proj_in"


def _t(gen, *shape, scale=0.3):
    return torch.randn(shape, generator=gen) * scale


def _modules() -> dict[str, LoraModule]:
    """One module per kind and shape variant, with random factors (seeded)."""
    g = torch.Generator().manual_seed(7)
    return {
        "lora linear": LoraModule("lora", {"down": _t(g, 6, 40), "up": _t(g, 48, 6)}, alpha=3.0),
        "locon 3x3": LoraModule("lora", {"down": _t(g, 5, 12, 3, 3), "up": _t(g, 24, 5, 1, 1)}, alpha=2.0),
        "lora tucker 3x3": LoraModule("lora", {"down": _t(g, 4, 12, 1, 1), "mid": _t(g, 4, 4, 3, 3),
                                               "up": _t(g, 24, 4, 1, 1)}, alpha=1.0, shape=(24, 12, 3, 3)),
        "loha linear": LoraModule("loha", {"w1a": _t(g, 48, 3), "w1b": _t(g, 3, 40), "w2a": _t(g, 48, 3),
                                           "w2b": _t(g, 3, 40)}, alpha=1.5, shape=(48, 40)),
        "loha flat conv": LoraModule("loha", {"w1a": _t(g, 24, 2), "w1b": _t(g, 2, 108), "w2a": _t(g, 24, 3),
                                              "w2b": _t(g, 3, 108)}, alpha=2.0, shape=(24, 12, 3, 3)),
        "loha tucker 3x3": LoraModule("loha", {"w1a": _t(g, 3, 24), "w1b": _t(g, 3, 12), "t1": _t(g, 3, 3, 3, 3),
                                               "w2a": _t(g, 3, 24), "w2b": _t(g, 3, 12), "t2": _t(g, 3, 3, 3, 3)},
                                      alpha=3.0, shape=(24, 12, 3, 3)),
        "lokr full x low-rank": LoraModule("lokr", {"w1": _t(g, 4, 4), "w2a": _t(g, 12, 5), "w2b": _t(g, 5, 10)},
                                           alpha=2.5, shape=(48, 40)),
        "lokr low-rank x full": LoraModule("lokr", {"w1a": _t(g, 8, 2), "w1b": _t(g, 2, 5), "w2": _t(g, 6, 8)},
                                           alpha=1.0, shape=(48, 40)),
        "lokr full x full": LoraModule("lokr", {"w1": _t(g, 4, 5), "w2": _t(g, 12, 8)}, shape=(48, 40)),
        "lokr conv 3x3": LoraModule("lokr", {"w1": _t(g, 4, 3), "w2": _t(g, 6, 4, 3, 3)}, shape=(24, 12, 3, 3)),
        "lokr flat conv": LoraModule("lokr", {"w1": _t(g, 4, 3), "w2a": _t(g, 6, 3), "w2b": _t(g, 3, 36)},
                                     alpha=-1.5, shape=(24, 12, 3, 3)),
        "lokr tucker 3x3": LoraModule("lokr", {"w1": _t(g, 2, 2), "w2a": _t(g, 3, 12), "w2b": _t(g, 3, 6),
                                               "t2": _t(g, 3, 3, 3, 3)}, alpha=3.0, shape=(24, 12, 3, 3)),
        "lokr kernel x kernel (dense)": LoraModule("lokr", {"w1": _t(g, 2, 2, 3, 1), "w2": _t(g, 12, 6, 1, 3)},
                                                   shape=(24, 12, 3, 3)),
        "full (dense)": LoraModule("full", {"diff": _t(g, 24, 12, 3, 3)}, shape=(24, 12, 3, 3)),
    }


def _reference(delta: torch.Tensor, keep: int) -> torch.Tensor:
    """Today's dense path: SVD of the full ΔW, cut to `keep`."""
    flat = delta.double().reshape(delta.shape[0], -1)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    return ((u[:, :keep] * s[:keep]) @ vh[:keep]).reshape(delta.shape)


def _close(a, b, rel=1e-5):
    return float((a.double() - b.double()).abs().max()) <= rel * max(float(b.abs().max()), 1e-12)


@pytest.mark.parametrize("kind", list(_modules()))
@pytest.mark.parametrize("keep", [1, 3])
def test_resize_equals_the_dense_svd(kind, keep):
    lora = LoraState(modules={NAME: _modules()[kind]})
    dense = lora.delta(NAME)
    result = resize(lora, rank=keep)
    assert _close(result.lora.delta(NAME), _reference(dense, keep)), kind
    s = torch.linalg.svdvals(dense.double().reshape(dense.shape[0], -1))
    assert result.modules[NAME].energy == pytest.approx(float((s[:keep] ** 2).sum() / (s**2).sum()), rel=1e-6)


@pytest.mark.parametrize("kind", [k for k in _modules() if "dense" not in k])
def test_structured_kinds_never_build_the_dense_delta(kind, monkeypatch):
    module = _modules()[kind]
    monkeypatch.setattr(LoraState, "delta", lambda *a, **k: pytest.fail("dense ΔW built"))
    assert module_svd(module) is not None
    resize(LoraState(modules={NAME: module}), rank=2)


def test_full_rank_resize_of_every_kind_is_lossless():
    for kind, module in _modules().items():
        lora = LoraState(modules={NAME: module})
        result = resize(lora, energy=1.0)
        assert _close(result.lora.delta(NAME), lora.delta(NAME)), kind


def test_merge_of_mixed_kinds_equals_the_dense_weighted_sum():
    modules = _modules()
    picks = ["lokr full x low-rank", "lora linear", "loha linear", "lokr full x full"]
    loras = [(LoraState(modules={NAME: modules[k]}), w) for k, w in zip(picks, (0.7, -0.4, 1.3, 0.5), strict=True)]
    dense = sum(w * lora.delta(NAME) for lora, w in loras)
    for keep in (2, 9):
        result = merge(loras, mode="svd", rank=keep)
        assert _close(result.lora.delta(NAME), _reference(dense, keep)), keep
    conv = ["lokr conv 3x3", "locon 3x3", "loha tucker 3x3", "full (dense)"]
    loras = [(LoraState(modules={NAME: modules[k]}), w) for k, w in zip(conv, (1.0, 0.5, 2.0, -1.0), strict=True)]
    dense = sum(w * lora.delta(NAME) for lora, w in loras)
    assert _close(merge(loras, mode="svd", rank=4).lora.delta(NAME), _reference(dense, 4))


def test_merge_of_different_shapes_is_a_clear_error():
    modules = _modules()
    a, b = LoraState(modules={NAME: modules["lora linear"]}), LoraState(modules={NAME: modules["locon 3x3"]})
    with pytest.raises(CompatibilityError, match="different shapes"):
        merge([(a, 1.0), (b, 1.0)], rank=2)


def test_large_dense_delta_uses_randomized_svd_and_reports_its_true_error():
    g = torch.Generator().manual_seed(3)
    u, _ = torch.linalg.qr(torch.randn(600, 600, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(520, 520, generator=g, dtype=torch.float64))
    s = 0.8 ** torch.arange(520, dtype=torch.float64)
    diff = ((u[:, :520] * s) @ v.T).float()
    lora = LoraState(modules={NAME: LoraModule("full", {"diff": diff}, shape=(600, 520))})
    result = resize(lora, rank=8)
    info = result.modules[NAME]
    assert info.randomized
    actual = (lora.delta(NAME).double() - result.lora.delta(NAME).double()).norm() / diff.double().norm()
    assert info.error == pytest.approx(float(actual), rel=1e-3)  # the reported error is the real one
    optimal = float((s[8:] ** 2).sum().sqrt() / (s**2).sum().sqrt())
    assert info.error <= optimal * 1.01
    assert not resize(lora, energy=0.9).modules[NAME].randomized  # no known rank: exact


def test_a_stop_request_interrupts_resize_and_merge():
    lora = LoraState(modules={f"{NAME}.{i}": _modules()["lora linear"] for i in range(5)})
    asked = []

    def stop_at_third() -> bool:
        asked.append(1)
        return len(asked) >= 3

    with pytest.raises(Interrupted, match="after 2 of 5 modules"):
        resize(lora, rank=2, should_stop=stop_at_third)
    asked.clear()
    with pytest.raises(Interrupted, match="after 2 of 5 modules"):
        merge([(lora, 1.0), (lora, 0.5)], rank=2, should_stop=stop_at_third)
