"""Loss masks for masked training (docs/training.md, "Masked training"): where an image is learnt.

A mask comes from the image's own alpha channel (`data.alpha_mask`: opaque = train) or from a grey image of
the same stem in `data.mask_path` (white = train, black = ignore, grey = partly), as sd-scripts' masked loss
reads them. It goes through the same geometry as its image (EXIF rotation, the scale that covers the bucket,
the crop, the flip), then is averaged down to the latent grid. An image without a mask, or whose mask is
white everywhere, trains as it would unmasked.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from sdlora.errors import DatasetError
from sdlora.suffixes import IMAGE_SUFFIXES
from sdlora.train.buckets import crop_box

if TYPE_CHECKING:  # torch only in load_mask: the data set scan checks mask folders without it
    import torch


def masking(cfg) -> bool:
    """Whether `cfg` (a DataConfig) asks for masked training."""
    return bool(cfg.alpha_mask or cfg.mask_path)


def mask_file(image: Path, cfg) -> Path | None:
    """The mask of `image` in `cfg.mask_path`: same stem, any image suffix, beside the image's place
    relative to the data set (`10_x/a.png` -> `mask_path/10_x/a.*`) or directly in the folder."""
    root, data = Path(cfg.mask_path), Path(cfg.path)
    try:
        relative = image.parent.relative_to(data)
    except ValueError:
        relative = Path()
    for folder in dict.fromkeys((root / relative, root)):
        for suffix in sorted(IMAGE_SUFFIXES):
            candidate = folder / f"{image.stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def check_mask_folder(cfg) -> None:
    """Raises DatasetError when data.mask_path is set but not a folder."""
    if cfg.mask_path and not Path(cfg.mask_path).expanduser().is_dir():
        raise DatasetError(f"data.mask_path: {cfg.mask_path!r} is not a folder; point it at a folder of grey "
                           "masks named like the images (white = train)")


def _raw_mask(path: Path, cfg) -> Image.Image | None:
    """The mask at the image's full size, 8-bit grey, upright; None when the image has none."""
    if cfg.mask_path:
        source = mask_file(path, cfg)
        if source is None:
            return None
        with Image.open(source) as handle:
            mask = ImageOps.exif_transpose(handle).convert("L")
        with Image.open(path) as image:
            size = ImageOps.exif_transpose(image).size
        return mask if mask.size == size else mask.resize(size, Image.Resampling.BILINEAR)
    with Image.open(path) as handle:
        image = ImageOps.exif_transpose(handle)
        if "A" not in image.getbands() and "transparency" not in image.info:
            return None
        return image.convert("RGBA").getchannel("A")


def load_mask(item, cfg, box: tuple[int, int, int, int], flip: bool, latent_size: tuple[int, int]) -> torch.Tensor | None:
    """(1, h, w) mask in [0, 1] on the latent grid for this sample, or None where it trains everywhere."""
    import torch

    mask = _raw_mask(item.path, cfg)
    if mask is None:
        return None
    scale, _ = crop_box(mask.size, item.bucket, "center")  # the scale load_pixels uses
    scaled = (max(item.bucket[0], round(mask.size[0] * scale)), max(item.bucket[1], round(mask.size[1] * scale)))
    array = np.asarray(mask.resize(scaled, resample=Image.Resampling.BICUBIC).crop(box), dtype=np.float32) / 255.0
    if flip:
        array = array[:, ::-1]
    if array.min() >= 1.0:
        return None
    pixels = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    return torch.nn.functional.interpolate(pixels, size=latent_size, mode="area")[0].clamp(0.0, 1.0)
