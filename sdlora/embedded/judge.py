"""A simple, honest classifier for images of one shape on a flat background.

It is the yardstick for "does the embedded model draw what the prompt says" (pretraining logs it;
tests/embedded/ checks the shipped weights with it). No learning, nothing tuned on model outputs:

1. background colour = the median of the image's border pixels;
2. foreground = pixels farther than `FOREGROUND_DISTANCE` (RGB Euclidean) from that colour;
3. colour = the named colour (shapes.COLOURS) nearest to the median foreground pixel, taken from the
   foreground's core (pixels whose 4 neighbours are foreground too, so anti-aliased edges do not count);
4. shape = the shape whose template, drawn in the foreground's bounding box, overlaps the foreground
   mask best (intersection over union), if that overlap is at least `MIN_IOU`.
No shape (and no colour) is reported when the foreground is tiny or covers most of the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdlora.embedded import shapes

FOREGROUND_DISTANCE = 55.0
MIN_PIXELS = 6  # fewer foreground pixels than this: no shape found
MAX_COVER = 0.7  # a "foreground" covering more of the image than this is not a shape on a background
MIN_IOU = 0.5  # a best template overlapping less than this: no shape recognised


@dataclass(frozen=True)
class Verdict:
    colour: str | None
    shape: str | None
    background: str
    iou: float  # overlap of the best template; 0 when no shape was found


def nearest_colour(rgb: np.ndarray) -> str:
    names = list(shapes.COLOURS)
    table = np.asarray([shapes.COLOURS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((table - rgb) ** 2).sum(axis=1)))]


def _background(image: np.ndarray) -> np.ndarray:
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    return np.median(border, axis=0)


def _core(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner if inner.sum() >= MIN_PIXELS else mask


def _best_shape(mask: np.ndarray) -> tuple[str, float]:
    size = mask.shape[0]
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    centre = ((x0 + x1) / 2 / size, (y0 + y1) / 2 / size)
    half = max(x1 - x0, y1 - y0) / 2 / size
    scores = {}
    for name in shapes.SHAPES:
        template = shapes.shape_mask(name, centre, half, size) > 0.5
        scores[name] = (template & mask).sum() / max((template | mask).sum(), 1)
    best = max(scores, key=scores.get)
    return best, float(scores[best])


def classify(image: np.ndarray) -> Verdict:
    """Classify one (H, W, 3) uint8 image; H == W."""
    back = _background(image)
    distance = np.sqrt(((image.astype(np.float32) - back) ** 2).sum(axis=2))
    mask = distance > FOREGROUND_DISTANCE
    back_name = nearest_colour(back)
    if mask.sum() < MIN_PIXELS or mask.mean() > MAX_COVER:
        return Verdict(None, None, back_name, 0.0)
    core = image[_core(mask)].astype(np.float32)
    colour = nearest_colour(np.median(core, axis=0))
    shape, iou = _best_shape(mask)
    return Verdict(colour, shape if iou >= MIN_IOU else None, back_name, iou)


def eval_prompts() -> list[tuple[str, str, str]]:
    """24 fixed (colour, shape, background) triples: every colour with every shape once."""
    names = list(shapes.COLOURS)
    out = []
    for i, colour in enumerate(names):
        for j, shape in enumerate(shapes.SHAPES):
            background = names[(i + 2 + 3 * j) % len(names)]
            if background == colour:
                background = names[(i + 1) % len(names)]
            out.append((colour, shape, background))
    return out


def prompt_for(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"
