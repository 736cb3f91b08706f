"""The training data set: folder scan, summary, per-sample loading and the deterministic batch order.

Folder layouts (FORMATS.md §3):
* a flat folder of images (png, jpg, jpeg, webp, bmp) with same-stem ``.txt`` captions, repeated
  ``data.repeats`` times per epoch;
* Kohya ``N_name`` subfolders: N repeats, and ``name`` is the caption of images without a ``.txt``.

Every image is decoded once during the scan, so a broken file is skipped and named in the summary before
training starts, never halfway through. The batch order is a pure function of (seed, epoch), so a resumed
run sees exactly the batches an uninterrupted run would (no data-loader state to save).
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sdlora.errors import DatasetError
from sdlora.progress import ProgressCallback, report
from sdlora.train.buckets import choose_bucket, crop_box, make_buckets
from sdlora.train.captions import process_caption, read_caption, tag_frequency, with_trigger
from sdlora.train.images import IMAGE_EXTENSIONS, ImageSkipped, open_image

log = logging.getLogger(__name__)
_KOHYA_DIR = re.compile(r"^(\d+)_(.*)$")


@dataclass
class ImageItem:
    path: Path
    caption: str             # with the trigger, before shuffling/dropout
    folder: str              # folder name for the summary and ss_dataset_dirs
    repeats: int
    size: tuple[int, int]    # upright (width, height)
    bucket: tuple[int, int] = (0, 0)


@dataclass
class DatasetSummary:
    folders: dict[str, dict] = field(default_factory=dict)        # name -> {"n_repeats", "img_count"}
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    converted: list[tuple[str, str]] = field(default_factory=list)  # (file, what was done)
    captioned: int = 0
    uncaptioned: int = 0
    buckets: dict[str, int] = field(default_factory=dict)         # "WxH" -> image count
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def image_count(self) -> int:
        return sum(f["img_count"] for f in self.folders.values())

    def lines(self) -> list[str]:
        """Human-readable summary, one line per fact (the CLI prints it; the trainer logs it)."""
        total = self.captioned + self.uncaptioned
        out = [f"{self.image_count} images in {len(self.folders)} folder(s)"]
        out += [f"  {name}: {f['img_count']} images x {f['n_repeats']} repeats" for name, f in self.folders.items()]
        out.append(f"captions: {self.captioned}/{total} images have a .txt caption")
        out.append("buckets: " + ", ".join(f"{k} ({v})" for k, v in self.buckets.items()))
        for name, tags in self.tag_frequency.items():
            top = ", ".join(f"{t} ({c})" for t, c in list(tags.items())[:10])
            out.append(f"top tags in {name}: {top}")
        out += [f"skipped {path}: {reason}" for path, reason in self.skipped]
        out += [f"converted {path}: {what}" for path, what in self.converted]
        return out


def _folders(root: Path, repeats: int) -> list[tuple[Path, str, int, str]]:
    """(folder, name, repeats, class token) for each folder holding training images."""
    kohya = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        match = _KOHYA_DIR.match(sub.name)
        if match:
            kohya.append((sub, sub.name, int(match.group(1)), match.group(2).strip()))
        elif not sub.name.startswith("."):
            log.warning("%s: ignored (Kohya image folders are named N_name, e.g. 10_mystyle)", sub)
    return [(root, root.name, repeats, ""), *kohya]


def _caption_for(image: Path, class_token: str, summary: DatasetSummary) -> str:
    caption_file = image.with_suffix(".txt")
    if not caption_file.is_file():
        summary.uncaptioned += 1
        return class_token
    caption, note = read_caption(caption_file)
    if note:
        summary.converted.append((str(caption_file), note))
        log.warning("%s: %s", caption_file, note)
    summary.captioned += 1
    return caption or class_token


def _scan_image(path: Path, cfg, summary: DatasetSummary) -> tuple[int, int] | None:
    try:
        img, notes = open_image(path, cfg.background, cfg.max_image_pixels)
    except ImageSkipped as err:
        summary.skipped.append((str(path), str(err)))
        log.warning("%s: skipped: %s", path, err)
        return None
    for note in notes:
        summary.converted.append((str(path), note))
    if max(img.size) > 2 * cfg.max_bucket:
        summary.converted.append((str(path), f"oversized {img.size[0]}x{img.size[1]}: scaled down to its bucket"))
    return img.size


def scan_dataset(cfg, on_progress: ProgressCallback | None = None) -> tuple[list[ImageItem], DatasetSummary]:
    """Find, validate and caption every image under `cfg.path` (a `DataConfig`; unset sizes are filled as
    `sdlora.config.fill_data_sizes` does without a base). `on_progress` gets (images decoded, images found).

    Raises:
        DatasetError: the folder is missing or holds no usable image.
    """
    from sdlora.config import fill_data_sizes

    cfg = fill_data_sizes(cfg, None)
    root = Path(cfg.path).expanduser()
    if not cfg.path or not root.is_dir():
        raise DatasetError(f"data.path: {str(root)!r} is not a folder; point it at a folder of images "
                           "with .txt captions or Kohya N_name subfolders")
    summary, items = DatasetSummary(), []
    folders = [(*f, sorted(p for p in f[0].iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()))
               for f in _folders(root, cfg.repeats)]
    total, done = sum(len(f[-1]) for f in folders), 0
    for _folder, name, repeats, class_token, images in folders:
        found = []
        for path in images:
            done += 1
            report(on_progress, done, total, path.name)
            size = _scan_image(path, cfg, summary)
            if size is not None:
                caption = with_trigger(_caption_for(path, class_token, summary), cfg.trigger)
                found.append(ImageItem(path, caption, name, repeats, size))
        if found:
            summary.folders[name] = {"n_repeats": repeats, "img_count": len(found)}
            summary.tag_frequency[name] = tag_frequency([item.caption for item in found])
        items += found
    if not items:
        skipped = f" ({len(summary.skipped)} file(s) skipped: {summary.skipped[0][1]})" if summary.skipped else ""
        raise DatasetError(f"data.path: no usable images in {root}{skipped}; expected "
                           f"{', '.join(IMAGE_EXTENSIONS)} files, directly or in N_name subfolders")
    _assign_buckets(items, cfg, summary)
    return items, summary


def _assign_buckets(items: list[ImageItem], cfg, summary: DatasetSummary) -> None:
    if cfg.buckets:
        buckets = make_buckets(cfg.resolution, cfg.min_bucket, cfg.max_bucket, cfg.bucket_step)
    else:
        buckets = [(cfg.resolution, cfg.resolution)]
    for item in items:
        item.bucket = choose_bucket(*item.size, buckets)
        key = f"{item.bucket[0]}x{item.bucket[1]}"
        summary.buckets[key] = summary.buckets.get(key, 0) + 1


def sample_rng(seed: int, epoch: int, position: int) -> random.Random:
    """Per-sample randomness (crop, flip, caption) that depends only on where the sample is in the run."""
    return random.Random(f"{seed}:{epoch}:{position}")


def sample_crop(item: ImageItem, cfg, rng: random.Random | None) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) crop of the scaled image for this sample (center, or random with rng)."""
    return crop_box(item.size, item.bucket, cfg.crop, rng)[1]


def load_pixels(item: ImageItem, cfg, box: tuple[int, int, int, int], flip: bool) -> torch.Tensor:
    """The image resized to cover its bucket, cropped to `box`, as a (3, H, W) float tensor in [-1, 1]."""
    img, _ = open_image(item.path, cfg.background, cfg.max_image_pixels)
    scale, _ = crop_box(img.size, item.bucket, "center")
    scaled = (max(item.bucket[0], round(img.size[0] * scale)), max(item.bucket[1], round(img.size[1] * scale)))
    img = img.resize(scaled, resample=3, reducing_gap=3.0).crop(box)  # 3 = bicubic
    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0    # (H, W, 3)
    if flip:
        array = array[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def epoch_batches(items: list[ImageItem], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of item indices for one epoch: each item `repeats` times, same bucket per batch, shuffled."""
    rng = random.Random(f"order:{seed}:{epoch}")
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, item in enumerate(items):
        by_bucket.setdefault(item.bucket, []).extend([index] * item.repeats)
    batches = []
    for bucket in sorted(by_bucket):
        indices = by_bucket[bucket]
        rng.shuffle(indices)
        batches += [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    rng.shuffle(batches)
    return batches


def caption_for_step(item: ImageItem, cfg, rng: random.Random) -> str:
    keep = max(cfg.keep_tokens, 1 if cfg.trigger else 0)
    return process_caption(item.caption, rng, keep_tokens=keep, shuffle=cfg.shuffle_captions,
                           caption_dropout=cfg.caption_dropout, tag_dropout=cfg.tag_dropout)


def captions_fixed(cfg) -> bool:
    """True when every epoch sees the same caption for an image (text-encoder outputs can be cached)."""
    return not cfg.shuffle_captions and cfg.caption_dropout == 0 and cfg.tag_dropout == 0
