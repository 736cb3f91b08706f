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
import json
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


class CaptionTokens:
    """Counts a caption's tokens as the base's CLIPTokenizer does, with the `tokenizers` library alone:
    transformers (seconds of imports) stays off the dry-run path. The same pipeline as transformers'
    CLIPTokenizer: NFC, whitespace runs to one space, lower case; CLIP's word pattern; byte-level BPE
    with "</w>" ending each word; the special tokens matched whole. tests/train/test_train_datacheck.py
    compares the counts with CLIPTokenizer's on many captions."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        self.model_max_length = int(config["model_max_length"])
        if (folder / "tokenizer.json").is_file():
            self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            self._tokenizer.no_truncation()  # a saved tokenizer.json may keep the padding and cut of its model
            self._tokenizer.no_padding()
        else:
            self._tokenizer = _clip_bpe(folder, config)

    def count(self, caption: str) -> int:
        """Tokens of `caption`, BOS and EOS not counted."""
        return len(self._tokenizer.encode(caption, add_special_tokens=False).ids)


def _clip_bpe(folder: Path, config: dict):
    """CLIP's BPE tokenizer from a folder's vocab.json and merges.txt."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    unknown = config.get("unk_token", "<|endoftext|>")
    model = BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=unknown,
                          continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    words = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False)])
    specials = [config.get(key) for key in ("bos_token", "eos_token", "unk_token", "pad_token")]
    tokenizer.add_special_tokens(list(dict.fromkeys(token for token in specials if token)))
    return tokenizer


@functools.lru_cache(maxsize=4)
def caption_tokenizer(base: str) -> CaptionTokens:
    """The tokenizer that counts caption tokens for `base`: the embedded model's own, else CLIP's BPE
    (SD1, SD2 and SDXL all tokenize with it), read from the files shipped in the package."""
    if base == "embedded":
        from sdlora.embedded import weights_dir

        return CaptionTokens(weights_dir() / "tokenizer")
    from sdlora.configs import tokenizers_root

    return CaptionTokens(tokenizers_root() / "clip-vit-large-patch14")


def long_captions(captions: list[str], tokenizer: CaptionTokens, limit: int) -> Counter:
    """{caption: its token count} for the captions over `limit` tokens (BOS/EOS not counted)."""
    counts = Counter()
    for caption in dict.fromkeys(captions):
        length = tokenizer.count(caption)
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
