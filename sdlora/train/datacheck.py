"""The data set check: what in a data set will train worse than its owner expects, said before training.

Run by `scan_dataset` after the images are decoded and bucketed, so the dry-run, the run log and the web UI's
summary all show it (docs/training.md, "The data set check"):
* near-duplicate images (a 64-bit difference hash of the image a few bits apart and the same mean colour:
  the same picture resized, re-encoded or lightly edited), which weigh double in training;
* images much smaller than their bucket, which are upscaled and train blur;
* captions longer than the text encoder sees (`data.max_token_length`): the rest is cut;
* images without a caption, and the caption they will train with;
* transparent images whose alpha is dropped (composited on `data.background`) unless `data.alpha_mask`.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

DUPLICATE_BITS = 4    # hashes at most this many bits apart are near-duplicates ...
DUPLICATE_COLOUR = 24  # ... if their mean colours are also this close (the hash sees structure, not colour)
UPSCALE_LIMIT = 1.5   # an image scaled up more than this to cover its bucket is "much smaller"
SHOWN = 5             # examples named per finding


Signature = tuple[int, tuple[int, int, int]]


def signature(image: Image.Image) -> Signature:
    """(difference hash, mean RGB) of an RGB image."""
    mean = np.asarray(image.resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32).mean(axis=(0, 1))
    return difference_hash(image), tuple(round(float(v)) for v in mean)


def difference_hash(image: Image.Image) -> int:
    """64-bit dHash: each bit says whether a pixel of the 9x8 greyscale thumbnail is brighter than its
    right neighbour; robust to resizing and re-encoding, cheap to compare (Hamming distance)."""
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = 0
    for brighter in (small[:, :-1] > small[:, 1:]).flatten():
        bits = (bits << 1) | int(brighter)
    return bits


def near_duplicates(signatures: dict[Path, Signature]) -> list[tuple[Path, Path, int]]:
    """(first, second, differing hash bits) for each pair of images with close hashes and mean colours."""
    paths = list(signatures)
    pairs = []
    for i, first in enumerate(paths):
        (hash_a, colour_a) = signatures[first]
        for second in paths[i + 1:]:
            hash_b, colour_b = signatures[second]
            bits = (hash_a ^ hash_b).bit_count()
            if bits <= DUPLICATE_BITS and max(abs(a - b) for a, b in zip(colour_a, colour_b, strict=True)) <= DUPLICATE_COLOUR:
                pairs.append((first, second, bits))
    return pairs


def upscale_factor(size: tuple[int, int], bucket: tuple[int, int]) -> float:
    """How much an image of `size` is scaled to cover `bucket` (as the loader scales it)."""
    return max(bucket[0] / size[0], bucket[1] / size[1])


@functools.lru_cache(maxsize=4)
def caption_tokenizer(base: str):
    """The tokenizer that counts caption tokens for `base`: the embedded model's own, else CLIP's BPE
    (SD1, SD2 and SDXL all tokenize with it), read from the files shipped in the package."""
    from transformers import CLIPTokenizer

    if base == "embedded":
        from sdlora.embedded import weights_dir

        folder = weights_dir() / "tokenizer"
    else:
        from sdlora.configs import tokenizers_root

        folder = tokenizers_root() / "clip-vit-large-patch14"
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def long_captions(captions: list[str], tokenizer, limit: int) -> Counter:
    """{caption: its token count} for the captions over `limit` tokens (BOS/EOS not counted)."""
    counts = Counter()
    for caption in dict.fromkeys(captions):
        length = len(tokenizer(caption, add_special_tokens=False, verbose=False).input_ids)
        if length > limit:
            counts[caption] = length
    return counts


def _names(paths, shown: int = SHOWN) -> str:
    paths = list(paths)
    text = ", ".join(Path(p).name for p in paths[:shown])
    return text + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def duplicate_lines(hashes: dict[Path, Signature]) -> list[str]:
    pairs = near_duplicates(hashes)
    if not pairs:
        return []
    shown = "; ".join(f"{a.name} ~ {b.name}" for a, b, _ in pairs[:SHOWN])
    more = f" and {len(pairs) - SHOWN} more" if len(pairs) > SHOWN else ""
    return [(f"check: {len(pairs)} near-duplicate image pair(s), each trained twice as often: {shown}{more}; "
            "keep one of each unless that is meant")]


def upscale_lines(items) -> list[str]:
    small = [(item, upscale_factor(item.size, item.bucket)) for item in items
             if upscale_factor(item.size, item.bucket) > UPSCALE_LIMIT]
    if not small:
        return []
    examples = ", ".join(f"{item.path.name} ({item.size[0]}x{item.size[1]} -> {item.bucket[0]}x{item.bucket[1]})"
                         for item, _ in small[:SHOWN])
    return [(f"check: {len(small)} image(s) much smaller than their bucket, upscaled over {UPSCALE_LIMIT}x and "
            f"so blurry: {examples}; use larger images or a lower data.resolution")]


def caption_lines(items, tokenizer, limit: int, max_token_length: int) -> tuple[list[str], int]:
    """(lines, number of training images whose caption is cut)."""
    long = long_captions([item.caption for item in items], tokenizer, limit)
    cut = [item for item in items if item.caption in long]
    if not cut:
        return [], 0
    longest = max(long.values())
    hint = "; raise data.max_token_length (150 or 225)" if max_token_length < 225 else ""
    return [(f"check: {len(cut)} caption(s) longer than the {limit} tokens the text encoder sees "
            f"(data.max_token_length={max_token_length}; longest {longest}): the rest is cut, e.g. "
            f"{_names(item.path for item in cut)}{hint}")], len(cut)


def uncaptioned_lines(uncaptioned: Counter, trigger: str) -> list[str]:
    lines = []
    for caption, count in uncaptioned.items():
        used = ", ".join(part for part in (trigger, caption) if part)
        what = f"the caption {used!r}" if used else "an empty caption"
        lines.append(f"check: {count} image(s) have no caption file and train with {what}; "
                     "`sdlora caption` can write captions")
    return lines


def alpha_lines(transparent: list[str], alpha_mask: bool, background: str) -> list[str]:
    if not transparent or alpha_mask:
        return []
    return [(f"check: {len(transparent)} image(s) have transparency, composited on {background} and trained "
            f"with it: {_names(transparent)}; set data.alpha_mask to train only where they are opaque")]


def mask_lines(unmasked: list[Path], mask_path: str) -> list[str]:
    if not unmasked:
        return []
    return [(f"check: {len(unmasked)} image(s) have no mask in {mask_path} and train everywhere: "
             f"{_names(unmasked)}; masks are named like their images (a.png -> {mask_path}/a.png)")]
