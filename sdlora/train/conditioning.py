"""Text conditioning and VAE encoding for SD1.x/SD2.x and SDXL, plus their caches. Depends on torch.

The family seam (STYLE.md §8.9): `encode_text` returns the UNet's `encoder_hidden_states` and, for SDXL,
the pooled text embedding; `unet_kwargs` adds SDXL's `added_cond_kwargs`. Nothing else in the loop knows
which family it trains.

Caches:
* `LatentCache`: the VAE posterior (mean, std) per (image content, bucket, crop, flip, VAE), in memory
  and optionally on disk as safetensors. The key hashes the image bytes and every setting that changes the
  pixels, so editing an image or a setting invalidates it. A latent is sampled from the cached posterior
  each step, exactly as encoding every step would.
* `TextCache`: text-encoder outputs per caption, used only while the text encoder is frozen and captions
  are fixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids (B, model_max_length), padded and truncated."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encode_text(components, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(encoder_hidden_states (B, 77, D), pooled (B, D2) or None)."""
    ids = tokenize(components.tokenizer, captions).to(device)
    if not components.is_sdxl:
        return components.text_encoder(ids)[0], None
    # SDXL: penultimate hidden states of both encoders, concatenated; pooled projection of the second
    # (diffusers StableDiffusionXLPipeline.encode_prompt)
    first = components.text_encoder(ids, output_hidden_states=True)
    ids_2 = tokenize(components.tokenizer_2, captions).to(device)
    second = components.text_encoder_2(ids_2, output_hidden_states=True)
    hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
    return hidden, second[0]


def unet_kwargs(components, pooled, size_ids: list[tuple[int, ...]], dtype) -> dict:
    """SDXL's added conditioning: pooled text embeds and per-sample size ids
    (original h, w, crop top, left, target h, w; Podell et al. 2023, https://arxiv.org/abs/2307.01952 §2.2)."""
    if not components.is_sdxl:
        return {}
    ids = torch.tensor(size_ids, dtype=dtype, device=pooled.device)
    return {"added_cond_kwargs": {"text_embeds": pooled.to(dtype), "time_ids": ids}}


def vae_identity(vae) -> str:
    """A short fingerprint of the VAE (config + a weight checksum) for cache keys."""
    first = next(vae.parameters())
    digest = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    digest.update(f"{float(first.detach().double().sum()):.10e}".encode())
    return digest.hexdigest()[:16]


def posterior(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE latent distribution (mean, std), scaled by the VAE's scaling factor, float32."""
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    factor = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((dist.mean.float() - shift) * factor), (dist.std.float() * factor)


class LatentCache:
    """(mean, std) latents keyed by a content+settings hash; memory, plus a folder when `folder` is set."""

    def __init__(self, folder: Path | None, settings: str):
        self.folder, self.settings = folder, settings
        self._memory: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._file_hash: dict[Path, str] = {}
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def key(self, path: Path, bucket, flip: bool) -> str:
        if path not in self._file_hash:
            self._file_hash[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        text = f"{self._file_hash[path]}|{bucket}|{flip}|{self.settings}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def get(self, key: str):
        if key in self._memory:
            return self._memory[key]
        if self.folder is not None and (self.folder / f"{key}.safetensors").is_file():
            from safetensors.torch import load_file

            data = load_file(self.folder / f"{key}.safetensors")
            self._memory[key] = (data["mean"], data["std"])
            return self._memory[key]
        return None

    def put(self, key: str, mean: torch.Tensor, std: torch.Tensor) -> None:
        mean, std = mean.detach().cpu().contiguous(), std.detach().cpu().contiguous()
        self._memory[key] = (mean, std)
        if self.folder is not None:
            from safetensors.torch import save_file

            target = self.folder / f"{key}.safetensors"
            tmp = target.with_name(f".{key}.{os.getpid()}.tmp")
            save_file({"mean": mean, "std": std}, str(tmp))
            tmp.replace(target)

    def __len__(self) -> int:
        return len(self._memory)


class TextCache:
    """Text-encoder outputs per caption (frozen text encoder and fixed captions only)."""

    def __init__(self):
        self._memory: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def encode(self, components, captions: list[str], device):
        missing = [c for c in dict.fromkeys(captions) if c not in self._memory]
        if missing:
            # on the encoder's own device: it may be parked on the CPU (sdlora.train.parking)
            with torch.no_grad():
                hidden, pooled = encode_text(components, missing, components.text_encoder.device)
            for i, caption in enumerate(missing):
                self._memory[caption] = (hidden[i].detach().to(device),
                                         None if pooled is None else pooled[i].detach().to(device))
        hidden = torch.stack([self._memory[c][0] for c in captions])
        pooled = None if self._memory[captions[0]][1] is None else torch.stack([self._memory[c][1] for c in captions])
        return hidden, pooled
