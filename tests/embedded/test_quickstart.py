"""Acceptance: a quickstart run really teaches the embedded model the sample_data style.

A style LoRA is trained on sample_data/ with the `embedded` preset (sdlora/configs/presets/embedded.yaml, the quickstart's recipe) through the real trainer
(`sdlora.train.train`); then the prompts in scripts/sample_prompts.txt are drawn with fixed seeds (4 per
prompt, 24 images, so that one odd image moves the statistic little) by the base model and through
`sdlora.stack.LoraStack` at strength 0 and 1.

The statistic is `showcase.style_distance`: the mean of the total-variation distances between (a) joint
RGB histograms (palette) and (b) histograms of neighbour-pixel luminance differences (texture: flat
fills vs paper grain, hatching and outlines). It ignores where shapes are, so only drawing in the
style's palette and texture brings it down. Two references:

* the 32 style images themselves (raw): the issue's "closer to the style set";
* the style images passed through the model's own VAE (`showcase.autoencoder_roundtrip`): what a
  perfect LoRA would draw. The LoRA trains the UNet and text encoder on the style images' latents, and
  the base and the LoRA share the frozen decoder, so the decoder's own error is a floor on the raw
  distance that no LoRA can go below. Against the round trip, 0 is reachable, so the reduction there is
  the share of the learnable style that the LoRA learned.

Strength 0 must give the base's images bit for bit. At strength 1 the LoRA must cut the raw distance by
at least 40% and halve the distance to the round-tripped style set, keeping the prompted shapes. Measured
with the embedded preset (locon-io, 600 steps, lr 8e-3) on the shipped weights, the trainer noising with the
DDPM forward process: training seed 0: raw 0.612 -> 0.301 (50.9% less), seed 1: 0.283 (53.7% less), seed 2:
0.269 (56.1% less); the VAE's round trip itself scores 0.178. The same seed-0 run on another machine of the
same kind (different float rounding, so a different training path) gave 0.612 -> 0.338 (44.7% less): 40%
leaves room for the hardware, not for a LoRA that learns less.

The distance is blind to content, so the LoRA's images must also still show the prompted shape (the rule-based
judge of sdlora/embedded/judge.py, which finds the shape in 32/32 style images): the DPM++ 2M SDE sampler
lowered the distance by 5-11 points for the same LoRA files by drawing grain where the shape should be.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sdlora.embedded import judge, load_pipeline, shapes, showcase

REPO_ROOT = Path(__file__).resolve().parents[2]

SAMPLE = REPO_ROOT / "sample_data"
SEEDS_PER_PROMPT = 4
DRAW_STEPS = 15


@dataclass
class Drawn:
    base: np.ndarray  # the base pipeline, no stack
    sweep: dict  # strength -> images through the stack
    again: np.ndarray  # the base after the stack was cleared (first 2 prompts)
    style: np.ndarray  # sample_data images
    prompts: list  # the 24 prompts, in image order
    roundtrip: np.ndarray  # sample_data through the base's VAE


@pytest.fixture(scope="module")
def trained_lora(tmp_path_factory, one_thread):
    from sdlora.settings.config import load_config
    from sdlora.train import train

    out = tmp_path_factory.mktemp("quickstart")
    cfg = load_config("embedded", [f"data.path={SAMPLE}", f"output.dir={out}"])
    seen = []
    result = train(cfg, on_step=lambda info: seen.append(info.step))
    assert seen[-1] == cfg.optim.steps == result.steps  # progress was reported for every step
    (lora_file,) = [p for p in result.files if p.suffix == ".safetensors"]
    return lora_file


@pytest.fixture(scope="module")
def drawn(trained_lora):
    pipe = load_pipeline()
    prompts = [p for p in (SAMPLE.parent / "scripts" / "sample_prompts.txt").read_text().splitlines() if p.strip()] * SEEDS_PER_PROMPT
    seeds = list(range(1, len(prompts) + 1))
    base = showcase.draw(pipe, prompts, seeds, DRAW_STEPS, showcase.GUIDANCE)
    sweep = showcase.strength_sweep(pipe, trained_lora, prompts, seeds, [0.0, 1.0], DRAW_STEPS)
    again = showcase.draw(pipe, prompts[:2], seeds[:2], DRAW_STEPS, showcase.GUIDANCE)
    style = showcase.load_images(SAMPLE)
    return Drawn(base, sweep, again, style, prompts, showcase.autoencoder_roundtrip(pipe.vae, style))


@pytest.mark.slow
def test_strength_zero_is_the_base_and_the_stack_restores_it(drawn):
    assert np.array_equal(drawn.sweep[0.0], drawn.base), "strength 0 must reproduce the base images exactly"
    assert np.array_equal(drawn.again, drawn.base[:2]), "the stack must leave the base model as it was"


def raw_distances(drawn: Drawn) -> tuple[dict, dict, dict]:
    """(base, LoRA at strength 1, VAE round trip) distances to the raw style images."""
    return tuple(
        showcase.style_distance(x, drawn.style) for x in (drawn.base, drawn.sweep[1.0], drawn.roundtrip)
    )


@pytest.mark.slow
def test_lora_cuts_the_distance_to_the_style_images_by_40_percent(drawn):
    before, after, floor = raw_distances(drawn)
    assert after["total"] <= 0.60 * before["total"], f"before {before}, after {after}, VAE floor {floor}"


@pytest.mark.slow
def test_lora_halves_the_distance_to_the_style_as_the_model_can_draw_it(drawn):
    before = showcase.style_distance(drawn.base, drawn.roundtrip)
    after = showcase.style_distance(drawn.sweep[1.0], drawn.roundtrip)
    assert after["total"] <= 0.5 * before["total"], f"before {before}, after {after}"


def test_the_vae_round_trip_keeps_the_palette_and_the_style_inks(one_thread):
    # the premise of the 50% target: the shipped VAE (widened by pretraining phase 4) draws the style's
    # inks (round trip measured 0.178; the unwidened VAE scored 0.247 and turned teal green, coral yellow)
    # and still draws the pretraining palette well (0.064), which the base's UNet relies on
    pipe = load_pipeline()
    own = shapes.make_dataset(32, seed=5)[0]
    style = showcase.load_images(SAMPLE)
    own_trip, style_trip = (showcase.autoencoder_roundtrip(pipe.vae, x) for x in (own, style))
    assert own_trip.shape == own.shape and own_trip.dtype == np.uint8
    own_error = showcase.style_distance(own_trip, own)["total"]
    style_error = showcase.style_distance(style_trip, style)["total"]
    assert own_error < 0.1 and style_error < 0.2, (own_error, style_error)


def prompted_shapes_found(images: np.ndarray, prompts: list[str]) -> int:
    """How many images show the shape their prompt names (judge.py's template match)."""
    wanted = [next(s for s in shapes.SHAPES if s in p) for p in prompts]
    return sum(judge.classify(image).shape == shape for image, shape in zip(images, wanted, strict=True))


@pytest.mark.slow
def test_lora_keeps_the_prompted_shapes(drawn):
    # style_distance ignores content: grainy empty paper scores well on it. The LoRA must change the style,
    # not drop the subject (measured: the base 17/24, the LoRA 16/24 at training seeds 0, 1 and 2; drawn with
    # DPM++ 2M SDE the same LoRAs cut the distance by 56-61% but kept only 8-11/24 shapes)
    base = prompted_shapes_found(drawn.base, drawn.prompts)
    lora = prompted_shapes_found(drawn.sweep[1.0], drawn.prompts)
    assert lora >= 12 and lora >= base - 4, f"prompted shape found in {lora}/24 LoRA images, {base}/24 base images"
