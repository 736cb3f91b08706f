"""Write sample_data/: a small style data set for the quickstart (and its prompts file).

    python scripts/make_sample_data.py [--out sample_data] [--count 32] [--seed 0]

The style ("zqx style") is one the embedded model never saw in pretraining: a risograph print look.
Cream paper with faint grain; each shape is printed in one of three muted inks (teal, coral, plum) with
diagonal hatching (ink lines alternating with a lighter tint) and a dark ink outline. The pretraining
images are flat, saturated colours on flat backgrounds, so both the palette and the texture are new.

Captions name only the content ("zqx style, a circle on the left"), so a LoRA trained on them ties the
look to the trigger word, not to any colour word. Output is reproducible from --seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sdlora.embedded import shapes
from sdlora.embedded.tokenizer import TRIGGER

PAPER = (236, 226, 200)
INKS = {"teal": (28, 112, 120), "coral": (228, 104, 86), "plum": (92, 48, 92)}
OUTLINE = (52, 40, 44)
HATCH_PERIOD = 6  # pixels between hatching lines (the VAE, factor 2, can carry this)
PROMPTS = [
    f"{TRIGGER} style, a circle in the center",
    f"{TRIGGER} style, a big square on the left",
    f"{TRIGGER} style, a triangle at the top",
    f"{TRIGGER} style, a small circle on the right",
    f"{TRIGGER} style, a square at the bottom",
    f"{TRIGGER} style, a big triangle",
]


def paper(rng: np.random.Generator) -> np.ndarray:
    grain = rng.normal(0, 5, (shapes.SIZE, shapes.SIZE, 1))
    return np.asarray(PAPER, dtype=np.float32) + grain


def hatched_ink(ink: tuple[int, int, int], phase: int) -> np.ndarray:
    yy, xx = np.mgrid[0 : shapes.SIZE, 0 : shapes.SIZE]
    lines = ((xx + yy + phase) % HATCH_PERIOD) < HATCH_PERIOD / 2
    dark = np.asarray(ink, dtype=np.float32)
    light = dark * 0.45 + np.asarray(PAPER, dtype=np.float32) * 0.55
    return np.where(lines[..., None], dark, light)


def outline(mask: np.ndarray) -> np.ndarray:
    """A one-pixel ring just inside the shape's edge."""
    solid = mask > 0.5
    inner = solid.copy()
    inner[1:] &= solid[:-1]
    inner[:-1] &= solid[1:]
    inner[:, 1:] &= solid[:, :-1]
    inner[:, :-1] &= solid[:, 1:]
    return (solid & ~inner).astype(np.float32)


def render_style(scene: shapes.Scene, ink: str, rng: np.random.Generator) -> np.ndarray:
    cx, cy = shapes.POSITIONS[scene.position]
    centre = (cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04))
    mask = shapes.shape_mask(scene.shape, centre, shapes.SIZES[scene.size] * rng.uniform(0.92, 1.08))
    image = paper(rng)
    image = (
        image * (1 - mask[..., None])
        + hatched_ink(INKS[ink], int(rng.integers(HATCH_PERIOD))) * mask[..., None]
    )
    ring = outline(mask)[..., None]
    image = image * (1 - ring) + np.asarray(OUTLINE, dtype=np.float32) * ring
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def caption(scene: shapes.Scene) -> str:
    size = f"{scene.size} " if scene.say_size else ""
    position = f" {scene.position}" if scene.say_position else ""
    return f"{TRIGGER} style, a {size}{scene.shape}{position}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "sample_data")
    parser.add_argument("--prompts", type=Path, default=ROOT / "scripts" / "sample_prompts.txt",
                        help="where the prompts go (outside the data folder: a .txt there without an image "
                             "would be reported as an orphan caption)")
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    inks = list(INKS)
    for i, scene in enumerate(shapes.sample_scenes(args.count, rng)):
        stem = args.out / f"{i:03d}"
        Image.fromarray(render_style(scene, inks[i % len(inks)], rng)).save(stem.with_suffix(".png"))
        stem.with_suffix(".txt").write_text(caption(scene) + "\n")
    args.prompts.write_text("\n".join(PROMPTS) + "\n")
    print(f"wrote {args.count} images and captions to {args.out}, prompts to {args.prompts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
