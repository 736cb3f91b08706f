"""Opening training images safely and converting every mode to 8-bit RGB. Depends on Pillow and numpy.

What goes wrong in real folders, and what happens here:

* EXIF orientation (phone photos): applied, so the pixels are upright.
* 16-bit greyscale PNGs (``I;16``/``I``): scaled by 1/257 to 8 bit; a plain ``convert("RGB")`` clips every
  value above 255 and the image turns white.
* RGBA / LA / P with transparency: composited on ``background`` instead of keeping whatever colour the
  invisible pixels happen to hold.
* CMYK JPEGs: converted by Pillow, which undoes Adobe's inverted CMYK.
* Corrupt or truncated files and decompression bombs: raise ``ImageSkipped`` with the reason; the caller
  skips the file and names it in the data set summary. A file that cannot be opened at all (permissions)
  is called unreadable, not corrupt: the fix is different.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError


class ImageSkipped(Exception):
    """An image cannot be used; the message says why."""


def _check_size(img: Image.Image, max_pixels: int) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise ImageSkipped(f"{width}x{height} pixels is more than data.max_image_pixels={max_pixels} "
                           "(decompression-bomb guard)")


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    values = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or values.max() <= 65535 else float(values.max())
    if img.mode == "F" and values.max() <= 1.0:
        top = 1.0
    gray = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _composite(img: Image.Image, background: str) -> Image.Image:
    rgba = img.convert("RGBA")
    base = Image.new("RGBA", rgba.size, ImageColor.getrgb(background) + (255,))
    return Image.alpha_composite(base, rgba).convert("RGB")


def to_rgb(img: Image.Image, background: str = "white") -> tuple[Image.Image, str | None]:
    """Convert any Pillow mode to RGB; returns (image, note) where note names a conversion done."""
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode.startswith("I") or mode == "F":
        return _sixteen_bit_to_rgb(img), f"{mode} high-bit-depth image scaled to 8 bit"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        return _composite(img, background), f"{mode} transparency composited on {background}"
    if mode == "CMYK":
        return img.convert("RGB"), "CMYK converted to RGB"
    return img.convert("RGB"), None if mode in ("L", "P", "1") else f"{mode} converted to RGB"


def open_image(path: str | Path, background: str = "white", max_pixels: int = 80_000_000
               ) -> tuple[Image.Image, list[str]]:
    """Open, fully decode, rotate upright and convert `path` to RGB.

    Returns:
        (RGB image, notes) where notes describe conversions (EXIF rotation, mode changes).

    Raises:
        ImageSkipped: the file is corrupt, truncated, not an image, or too large.
    """
    notes = []
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below; opened apart to tell unreadable from corrupt
    except OSError as err:
        raise ImageSkipped(f"unreadable ({err.strerror or err})") from err
    try:
        with handle, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle) as img:
                _check_size(img, max_pixels)
                img.load()
                orientation = img.getexif().get(0x0112, 1)
                upright = ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageSkipped(f"decompression bomb: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageSkipped("not a readable image") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageSkipped(f"corrupt or truncated ({err})") from err
    if orientation not in (1, None):
        notes.append(f"EXIF orientation {orientation} applied")
    rgb, note = to_rgb(upright, background)
    if note:
        notes.append(note)
    return rgb, notes
