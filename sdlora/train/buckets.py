"""Aspect-ratio buckets: the list of (width, height) sizes and the choice of one per image. Stdlib only.

After sd-scripts' `make_bucket_resolutions` (docs/formats.md §3): keep about resolution² pixels, widths from
`min_side` to `max_side` in `step` increments, height = the largest multiple of `step` that keeps the area,
both orientations plus the square. An image goes to the bucket with the nearest aspect ratio (compared in
log space, so 2:1 and 1:2 are equally far from 1:1), is scaled to cover it and cropped.
"""

from __future__ import annotations

import math
import random


def make_buckets(resolution: int, min_side: int, max_side: int, step: int) -> list[tuple[int, int]]:
    """Sorted list of (width, height) buckets; every side is a multiple of `step`."""
    area = resolution * resolution
    square = resolution if resolution < step else resolution // step * step  # small models: 32 px, step 64
    sizes = {(square, square)}
    width = max(step, math.ceil(min_side / step) * step)
    while width <= max_side:
        height = min(max_side, area // width // step * step)
        if height >= min_side:
            sizes.add((width, height))
            sizes.add((height, width))
        width += step
    return sorted(sizes)


def choose_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest to width/height."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def crop_box(size: tuple[int, int], bucket: tuple[int, int], mode: str, rng: random.Random | None = None
             ) -> tuple[float, tuple[int, int, int, int]]:
    """Scale factor that makes an image of `size` cover `bucket`, and the (left, top, right, bottom) crop
    of the scaled image. `mode` is "center" or "random" (random needs `rng`)."""
    width, height = size
    scale = max(bucket[0] / width, bucket[1] / height)
    scaled_w, scaled_h = max(bucket[0], round(width * scale)), max(bucket[1], round(height * scale))
    spare_x, spare_y = scaled_w - bucket[0], scaled_h - bucket[1]
    if mode == "random" and rng is not None:
        left, top = rng.randint(0, spare_x), rng.randint(0, spare_y)
    else:
        left, top = spare_x // 2, spare_y // 2
    return scale, (left, top, left + bucket[0], top + bucket[1])
