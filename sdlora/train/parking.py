"""Frozen encoders off the accelerator while the training steps do not need them.

With latent caching (center crop) and text caching (frozen text encoder, fixed captions) on, once every
image the run can draw is encoded and every caption embedded, the steps never call the VAE or the text
encoder(s) again; on a GPU they then only hold memory (SD1.5: the float32 VAE and the CLIP-L text
encoder, about 0.6 GB; SDXL about 1.9 GB) that the UNet's activations could use. kohya's sd-scripts moves
them to the CPU after caching for the same reason. Sample renders bring them back for the render.

On the CPU nothing moves (there is nowhere cheaper to put them).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from sdlora.train import data as data_mod

log = logging.getLogger(__name__)

PARK_DEVICE = torch.device("cpu")


def precompute_text(state, stages=None) -> None:
    """Fill the text cache with every caption the run can draw (fixed captions: one per image).

    `stages` (a `sdlora.train.monitor.Stages`) reports i/N captions and stops between batches on cancel."""
    if state.text_cache is None:
        return
    captions = list(dict.fromkeys(data_mod.caption_for_step(item, state.cfg.data, random.Random(0))
                                  for item in state.items))
    size = max(1, state.cfg.data.batch_size)
    if stages is not None:
        stages.start("caching text", len(captions))
    for start in range(0, len(captions), size):
        state.text_cache.encode(state.components, captions[start:start + size], state.device)
        if stages is not None:
            stages.advance(min(start + size, len(captions)))


def can_park(state) -> bool:
    """True when the steps can no longer call the encoders and parking would free accelerator memory."""
    return (state.device.type != PARK_DEVICE.type and state.latent_cache is not None
            and state.text_cache is not None and not state.train_text)


def _encoders(state) -> list[torch.nn.Module]:
    return [state.components.vae, *state.components.text_encoders.values()]


def park(state) -> bool:
    """Move the VAE and text encoder(s) to the CPU when `can_park`; returns whether they moved."""
    if state.parked or not can_park(state):
        return False
    for model in _encoders(state):
        model.to(PARK_DEVICE)
    state.parked = True
    if state.device.type == "cuda":
        torch.cuda.empty_cache()  # hand the freed blocks back, so that nvidia-smi shows the saving too
    log.info("latents and captions cached: VAE and text encoder moved to the CPU until samples or the end")
    return True


def unpark(state) -> None:
    """Put parked encoders back on the accelerator (no-op when not parked)."""
    if not state.parked:
        return
    for model in _encoders(state):
        model.to(state.device)
    state.parked = False


@contextmanager
def encoders_on_device(state) -> Iterator[None]:
    """The encoders on the accelerator for the block (a sample render), parked again afterwards."""
    was_parked = state.parked
    unpark(state)
    try:
        yield
    finally:
        if was_parked:
            park(state)
