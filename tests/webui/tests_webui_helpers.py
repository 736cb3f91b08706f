"""Helpers shared by the web UI tests (imported by name; this folder is on sys.path under pytest)."""

from __future__ import annotations

from pathlib import Path


def write_png(path: Path, size=(8, 8), noise: bool = False) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if noise:
        pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
    else:
        Image.new("RGB", size, (200, 10, 10)).save(path)
    return path
