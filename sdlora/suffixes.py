"""File suffixes sdlora recognises, defined once for the library, the CLI and the web UI. Standard library only."""

from __future__ import annotations

# images a training data set, an upload or a LoRA preview may be (all lower case; compare `suffix.lower()`)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})

# pickle checkpoints, which can run code when loaded: refused by default (a tuple, for `str.endswith`)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
