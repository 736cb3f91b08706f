"""Helpers for the stack, generate and tools tests: tiny components and LoRAs built as LoraState objects."""

from __future__ import annotations

import torch

from sdlora.arch.components import canonical_name
from sdlora.weights import LoraModule, LoraState


def live_modules(components) -> dict[str, torch.nn.Module]:
    """{canonical name: Linear/Conv2d} of the tiny components (same rule as the stack)."""
    out = {}
    for component, model in components.items():
        for path, module in model.named_modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                out[canonical_name(component, path)] = module
    return out


def snapshot(components) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer, for bit-exact comparisons."""
    return {f"{c}.{k}": v.detach().clone() for c, m in components.items() for k, v in m.state_dict().items()}


def assert_bit_identical(components, before) -> None:
    after = snapshot(components)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"{len(changed)} tensors differ, e.g. {changed[:3]}"


def random_lora(components, names, rank=4, alpha=2.0, seed=0, scale=0.05) -> LoraState:
    """A plain LoRA (LoCon for k x k convs) on `names` with random factors."""
    gen = torch.Generator().manual_seed(seed)
    live = live_modules(components)
    modules = {}
    for name in names:
        w = live[name].weight
        down_shape = (rank, *w.shape[1:])
        up_shape = (w.shape[0], rank) + ((1, 1) if w.dim() == 4 else ())
        modules[name] = LoraModule(
            "lora",
            {"down": torch.randn(down_shape, generator=gen) * scale, "up": torch.randn(up_shape, generator=gen) * scale},
            alpha=alpha,
        )
    return LoraState(modules=modules, format="kohya")


def pick(components, component, count, kinds=(torch.nn.Linear,)) -> list[str]:
    live = live_modules(components)
    names = [n for n, m in live.items() if n.startswith(component + ".") and isinstance(m, kinds)]
    return names[:count] if count else names


def unet_output(components, seed=1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, 8, 8, generator=gen)
    ids = torch.randint(3, 999, (1, 8), generator=gen)
    with torch.no_grad():
        hidden = components["text_encoder"](ids)[0]
        return components["unet"](sample, 10, encoder_hidden_states=hidden).sample


def tiny_tokenizer(folder):
    """A CLIPTokenizer over a character vocabulary written to `folder` (no downloads)."""
    import json
    import string

    from transformers import CLIPTokenizer

    tokens = ["<|startoftext|>", "<|endoftext|>", "!"]
    for ch in string.ascii_lowercase + string.digits + ",.<>:=_-":
        tokens += [ch, ch + "</w>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!", model_max_length=77)


def tiny_pipeline(components, vae, folder):
    """A StableDiffusionPipeline over the tiny components (16x16 images, DDIM)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=components["text_encoder"], tokenizer=tiny_tokenizer(folder),
        unet=components["unet"], scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
