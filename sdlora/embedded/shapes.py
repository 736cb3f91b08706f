"""The captioned synthetic data set the embedded model is pretrained on.

Every image is one flat-coloured shape (circle, square or triangle) on a flat background, drawn at
4x size and box-filtered down so edges are anti-aliased. Captions name the shape, its colour and the
background colour, and sometimes its size and position: "a big red circle on the left on a blue
background". Sampling is balanced: every (colour, shape) pair appears equally often, and the background
colour is drawn uniformly from the other colours. Everything is seeded by a numpy Generator.

`texture=True` adds random stripes, checks and grain in random colours. Those images are only used to
train the VAE, so that it is a general enough codec to also encode textured styles (sample_data/); the
UNet and the text encoder never see a texture during pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32  # pixels; the embedded model's native resolution
_SUPER = 4  # drawn at SIZE * _SUPER, then box-filtered down

# Named colours, deliberately far apart in RGB so that each name means one clear colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "purple": (140, 40, 190),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.22, "big": 0.36}  # half-extent as a fraction of the image side
POSITIONS = {  # centre as a fraction of the image side
    "in the center": (0.5, 0.5),
    "on the left": (0.3, 0.5),
    "on the right": (0.7, 0.5),
    "at the top": (0.5, 0.3),
    "at the bottom": (0.5, 0.7),
}
_JITTER = 12  # +- per RGB channel, so a colour name covers a small neighbourhood


@dataclass(frozen=True)
class Scene:
    """What one image shows; `caption()` says it in words."""

    shape: str
    colour: str
    background: str
    size: str
    position: str
    say_size: bool = True
    say_position: bool = True

    def caption(self) -> str:
        size = f"{self.size} " if self.say_size else ""
        position = f" {self.position}" if self.say_position else ""
        return f"a {size}{self.colour} {self.shape}{position} on a {self.background} background"


def vocabulary() -> list[str]:
    """Every word a caption of this data set can contain."""
    words = {"a", "on", "background"} | set(COLOURS) | set(SHAPES) | set(SIZES)
    for phrase in POSITIONS:
        words.update(phrase.split())
    return sorted(words)


def shape_mask(shape: str, centre: tuple[float, float], half: float, size: int = SIZE) -> np.ndarray:
    """Anti-aliased coverage (float32 in [0, 1], shape (size, size)) of one shape.

    `centre` and `half` (half-extent) are fractions of the image side. A triangle points up and has
    the same bounding box as the square.
    """
    big = size * _SUPER
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, h = centre[0] * big, centre[1] * big, half * big
    if shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=255)
    elif shape == "square":
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _jittered(rng: np.random.Generator, name: str) -> np.ndarray:
    base = np.asarray(COLOURS[name], dtype=np.float32)
    return np.clip(base + rng.uniform(-_JITTER, _JITTER, 3), 0, 255)


def render(scene: Scene, rng: np.random.Generator, texture: bool = False) -> np.ndarray:
    """Draw `scene` as a (SIZE, SIZE, 3) uint8 array (position and colours slightly jittered)."""
    cx, cy = POSITIONS[scene.position]
    centre = (cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04))
    half = SIZES[scene.size] * rng.uniform(0.92, 1.08)
    mask = shape_mask(scene.shape, centre, half)[..., None]
    back = np.broadcast_to(_jittered(rng, scene.background), (SIZE, SIZE, 3))
    front = np.broadcast_to(_jittered(rng, scene.colour), (SIZE, SIZE, 3))
    if texture:
        back = random_texture(rng, back)
        front = random_texture(rng, front)
    image = back * (1 - mask) + front * mask
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def random_texture(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """`base` (H, W, 3 float) overlaid with random stripes, checks or grain (VAE training only)."""
    kind = rng.integers(0, 4)
    if kind == 0:
        return base.copy()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    period = rng.uniform(2.5, 8.0)
    if kind == 1:  # stripes at a random angle
        angle = rng.uniform(0, np.pi)
        pattern = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0
    elif kind == 2:  # checks
        pattern = ((xx // (period / 2)).astype(int) + (yy // (period / 2)).astype(int)) % 2 == 1
    else:  # grain
        pattern = rng.random((SIZE, SIZE)) < rng.uniform(0.1, 0.5)
    other = rng.uniform(0, 255, 3).astype(np.float32)
    amount = rng.uniform(0.3, 1.0)
    mixed = base * (1 - amount) + other * amount
    return np.where(pattern[..., None], mixed, base)


def sample_scenes(n: int, rng: np.random.Generator, mention: float = 0.6) -> list[Scene]:
    """`n` scenes, balanced over (colour, shape); size/position named with probability `mention`."""
    colours = list(COLOURS)
    pairs = [(c, s) for c in colours for s in SHAPES]
    scenes = []
    for i in range(n):
        if i % len(pairs) == 0:
            order = rng.permutation(len(pairs))
        colour, shape = pairs[order[i % len(pairs)]]
        others = [c for c in colours if c != colour]
        scenes.append(
            Scene(
                shape=shape,
                colour=colour,
                background=others[rng.integers(len(others))],
                size=list(SIZES)[rng.integers(len(SIZES))],
                position=list(POSITIONS)[rng.integers(len(POSITIONS))],
                say_size=bool(rng.random() < mention),
                say_position=bool(rng.random() < mention),
            )
        )
    return scenes


def make_dataset(n: int, seed: int, texture: float = 0.0) -> tuple[np.ndarray, list[str]]:
    """`n` images (uint8, (n, SIZE, SIZE, 3)) and their captions, reproducible from `seed`.

    `texture` is the fraction of images drawn with random textures (for VAE training).
    """
    rng = np.random.default_rng(seed)
    scenes = sample_scenes(n, rng)
    images = np.stack([render(s, rng, texture=bool(rng.random() < texture)) for s in scenes])
    return images, [s.caption() for s in scenes]
