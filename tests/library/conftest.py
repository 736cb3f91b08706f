"""Fixtures for the library tests: tiny LoRA files written with numpy (no torch, no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

# an SD1 cross-attention key: its 768 input (CLIP-L's width) makes the family read as sd1
MODULE = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"


def write_tiny_lora(path, seed: int = 0, metadata: dict | None = None, rank: int = 2):
    """A small valid Kohya LoRA at `path` whose tensor data depends only on `seed`."""
    rng = np.random.default_rng(seed)
    tensors = {f"{MODULE}.lora_down.weight": rng.standard_normal((rank, 768), dtype=np.float32).astype(np.float16),
               f"{MODULE}.lora_up.weight": rng.standard_normal((1280, rank), dtype=np.float32).astype(np.float16),
               f"{MODULE}.alpha": np.array(float(rank), dtype=np.float32)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata or {})
    return path


@pytest.fixture
def tiny_lora():
    """`tiny_lora(path, seed=0, metadata=None)` writes a small LoRA file and returns its path."""
    return write_tiny_lora


@pytest.fixture
def library_root(tmp_path):
    """A library: a.safetensors (with notes, preview, Civitai info) and its copy b (another folder, other
    metadata, same tensors), c (other tensors) in styles/ink/."""
    root = tmp_path / "loras"
    write_tiny_lora(root / "a.safetensors", seed=1)
    (root / "a.json").write_text(json.dumps({"activation text": "aaa", "tags": ["mine"]}))
    (root / "a.preview.png").write_bytes(b"\x89PNG fake")
    (root / "a.civitai.info").write_text(json.dumps({"baseModel": "SD 1.5", "model": {"tags": ["style", "ink"]}}))
    write_tiny_lora(root / "copies" / "b.safetensors", seed=1, metadata={"ss_output_name": "b"})
    (root / "copies" / "b.txt").write_text("b's notes")
    write_tiny_lora(root / "styles" / "ink" / "c.safetensors", seed=2)
    return root


def embedded_lora(path, seed: int = 1, rank: int = 4):
    """A Kohya LoRA with random factors on the embedded model's UNet attention q/v projections (a visible effect)."""
    import torch

    import sdlora
    from sdlora.arch.components import canonical_name
    from sdlora.base.load import load_components
    from sdlora.weights import LoraModule, LoraState

    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for live, module in load_components("embedded").unet.named_modules():
        if live.endswith(("attn1.to_q", "attn1.to_v", "attn2.to_q", "attn2.to_v")):
            out_f, in_f = module.weight.shape
            down = torch.randn(rank, in_f, generator=gen) / in_f**0.5
            up = torch.randn(out_f, rank, generator=gen)
            modules[canonical_name("unet", live)] = LoraModule("lora", {"down": down, "up": up}, alpha=float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    sdlora.save_lora(LoraState(modules=modules, metadata={}), path)
    return path
