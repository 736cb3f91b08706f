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


def tokenize_chunks(tokenizer, captions: list[str], chunks: int) -> torch.Tensor:
    """Token ids (B, chunks, window) for long captions, as sd-scripts' max_token_length builds them
    (docs/training.md, "Long captions"): the caption is tokenized to chunks x (window - 2) tokens, cut into
    pieces of window - 2, and each piece gets the caption's BOS in front and its last token (EOS, or padding)
    behind. A tokenizer that pads with another token than EOS (SD2, SDXL's second) gets an EOS after a
    piece that ends mid-text and one right after BOS in an empty piece, so every window has an EOS to pool."""
    window = tokenizer.model_max_length
    body = window - 2
    ids = tokenizer(captions, padding="max_length", max_length=chunks * body + 2, truncation=True,
                    return_tensors="pt").input_ids
    pieces = [torch.cat([ids[:, :1], ids[:, 1 + k * body: 1 + (k + 1) * body], ids[:, -1:]], dim=1)
              for k in range(chunks)]
    out = torch.stack(pieces, dim=1)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if pad != eos:
        mid_text = (out[:, :, -2] != eos) & (out[:, :, -2] != pad)
        out[:, :, -1] = torch.where(mid_text, torch.full_like(out[:, :, -1], eos), out[:, :, -1])
        empty = out[:, :, 1] == pad
        out[:, :, 1] = torch.where(empty, torch.full_like(out[:, :, 1], eos), out[:, :, 1])
    return out


def join_chunks(hidden: torch.Tensor, batch: int, chunks: int) -> torch.Tensor:
    """(B * chunks, window, D) -> (B, chunks * (window - 2) + 2, D): the first BOS, every window's inner
    states, the last window's final state; the inner windows' BOS/EOS states are dropped."""
    if chunks == 1:
        return hidden
    window = hidden.shape[1]
    flat = hidden.reshape(batch, chunks * window, hidden.shape[-1])
    inner = [flat[:, k * window + 1: (k + 1) * window - 1] for k in range(chunks)]
    return torch.cat([flat[:, :1], *inner, flat[:, -1:]], dim=1)


def _ids(tokenizer, captions: list[str], chunks: int, device) -> torch.Tensor:
    if chunks == 1:
        return tokenize(tokenizer, captions).to(device)
    return tokenize_chunks(tokenizer, captions, chunks).flatten(0, 1).to(device)


def encode_text(components, captions: list[str], device, chunks: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(encoder_hidden_states (B, 77, D), pooled (B, D2) or None); with `chunks` > 1 the hidden states are
    (B, chunks * 75 + 2, D) and SDXL's pooled embedding is the first window's, as sd-scripts does."""
    batch = len(captions)
    ids = _ids(components.tokenizer, captions, chunks, device)
    if not components.is_sdxl:
        return join_chunks(components.text_encoder(ids)[0], batch, chunks), None
    # SDXL: penultimate hidden states of both encoders, concatenated; pooled projection of the second
    # (diffusers StableDiffusionXLPipeline.encode_prompt)
    first = components.text_encoder(ids, output_hidden_states=True)
    ids_2 = _ids(components.tokenizer_2, captions, chunks, device)
    second = components.text_encoder_2(ids_2, output_hidden_states=True)
    hidden = torch.cat([join_chunks(first.hidden_states[-2], batch, chunks),
                        join_chunks(second.hidden_states[-2], batch, chunks)], dim=-1)
    return hidden, second[0][::chunks]


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

    def __init__(self, chunks: int = 1):
        self.chunks = chunks
        self._memory: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def encode(self, components, captions: list[str], device):
        missing = [c for c in dict.fromkeys(captions) if c not in self._memory]
        if missing:
            # on the encoder's own device: it may be parked on the CPU (sdlora.train.parking)
            with torch.no_grad():
                hidden, pooled = encode_text(components, missing, components.text_encoder.device, self.chunks)
            for i, caption in enumerate(missing):
                self._memory[caption] = (hidden[i].detach().to(device),
                                         None if pooled is None else pooled[i].detach().to(device))
        hidden = torch.stack([self._memory[c][0] for c in captions])
        pooled = None if self._memory[captions[0]][1] is None else torch.stack([self._memory[c][1] for c in captions])
        return hidden, pooled
