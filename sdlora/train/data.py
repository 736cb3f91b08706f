"""The training data set: folder scan, summary, per-sample loading and the deterministic batch order.

Folder layouts (docs/formats.md §3):
* a flat folder of images (png, jpg, jpeg, webp, bmp) with same-stem ``.txt`` captions, repeated
  ``data.repeats`` times per epoch;
* Kohya ``N_name`` subfolders: N repeats, and ``name`` is the caption of images without a ``.txt``.

Every image is decoded once during the scan, so a broken file is skipped and named in the summary before
training starts, never halfway through. Odd entries (symlink loops, dangling links, FIFOs, a folder named
``x.png``, an unreadable caption, a caption with no image) are named and skipped too, never opened: a FIFO
would block the scan. Images and folders are counted once by their resolved path, so a ``1_x -> .`` link
or an image linked twice does not double the data set. The batch order is a pure function of (seed,
epoch), so a resumed run sees exactly the batches an uninterrupted run would (no data-loader state to save).
The scan imports no torch (`train --dry-run` answers in seconds); only `load_pixels` makes tensors.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import stat
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdlora.errors import DatasetError
from sdlora.progress import ProgressCallback, report
from sdlora.settings.resolution import fill_data_sizes
from sdlora.suffixes import IMAGE_SUFFIXES
from sdlora.train import datacheck, masks
from sdlora.train.buckets import choose_bucket, crop_box, make_buckets
from sdlora.train.captions import (
    backup_caption,
    caption_path,
    check_caption,
    chunk_count,
    process_caption,
    read_caption,
    tag_frequency,
    token_limit,
    with_trigger,
    write_caption,
)
from sdlora.train.images import ImageSkipped, open_image

if TYPE_CHECKING:  # torch only in load_pixels: the scan (train --dry-run) runs without it
    import torch

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
    is_reg: bool = False     # a regularization (prior preservation) image: its loss is x optim.prior_loss_weight


@dataclass
class DatasetSummary:
    folders: dict[str, dict] = field(default_factory=dict)        # name -> {"n_repeats", "img_count"}
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    converted: list[tuple[str, str]] = field(default_factory=list)  # (file, what was done)
    captioned: int = 0
    uncaptioned: int = 0
    buckets: dict[str, int] = field(default_factory=dict)         # "WxH" -> image count
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)
    reg_folders: dict[str, dict] = field(default_factory=dict)    # as `folders`, for data.reg_path
    validation: list[ImageItem] = field(default_factory=list)     # held out or from data.validation_path
    checks: list[str] = field(default_factory=list)               # the data set check's findings (datacheck)
    cut_captions: int = 0                                         # training images whose caption is cut
    uncaptioned_as: Counter = field(default_factory=Counter)      # class token -> images without a caption
    transparent: list[str] = field(default_factory=list)          # images whose alpha was composited
    hashes: dict[Path, tuple] = field(default_factory=dict)       # image -> datacheck.signature

    @property
    def reg_image_count(self) -> int:
        return sum(f["img_count"] for f in self.reg_folders.values())

    @property
    def image_count(self) -> int:
        return sum(f["img_count"] for f in self.folders.values())

    def lines(self) -> list[str]:
        """Human-readable summary, one line per fact (the CLI prints it; the trainer logs it)."""
        total = self.captioned + self.uncaptioned
        out = [f"{self.image_count} images in {len(self.folders)} folder(s)"]
        out += [f"  {name}: {f['img_count']} images x {f['n_repeats']} repeats" for name, f in self.folders.items()]
        if self.reg_folders:
            out.append(f"{self.reg_image_count} regularization images in {len(self.reg_folders)} folder(s), "
                       "repeated to match the training images")
            out += [f"  {name}: {f['img_count']} images" for name, f in self.reg_folders.items()]
        if self.validation:
            out.append(f"validation: {len(self.validation)} images (" +
                       ", ".join(item.path.name for item in self.validation[:5]) +
                       (", ..." if len(self.validation) > 5 else "") + ")")
        out.append(f"captions: {self.captioned}/{total} images have a .txt caption")
        out.append("buckets: " + ", ".join(f"{k} ({v})" for k, v in self.buckets.items()))
        out += self.checks
        for name, tags in self.tag_frequency.items():
            top = ", ".join(f"{t} ({c})" for t, c in list(tags.items())[:10])
            out.append(f"top tags in {name}: {top}")
        out += [f"skipped {path}: {reason}" for path, reason in self.skipped]
        out += [f"converted {path}: {what}" for path, what in self.converted]
        return out


def _skip(summary: DatasetSummary, path: Path, reason: str) -> None:
    summary.skipped.append((str(path), reason))
    log.warning("%s: skipped: %s", path, reason)


def entry_problem(path: Path, want_dir: bool = False) -> str | None:
    """Why `path` is not a usable regular file (or folder, with `want_dir`); None when it is.

    Only stat()s the entry, never opens it: opening a FIFO would block the scan.
    """
    try:
        mode = path.stat().st_mode  # follows links; a loop gives ELOOP instead of recursing
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop"
        if path.is_symlink():
            return f"broken symbolic link (to {os.readlink(path)})"
        return f"unreadable ({err.strerror})"
    if want_dir:
        return None if stat.S_ISDIR(mode) else "not a folder"
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    return None if stat.S_ISREG(mode) else "not a regular file (a FIFO, socket or device)"


@dataclass
class CaptionedImage:
    """An image of a data set and its caption file, as the trainer pairs them (`caption_pairs`)."""

    image: Path
    caption: str | None  # the caption file's caption; None when the image has no caption file
    folder: str          # the data set folder's name, or the N_name subfolder's
    repeats: int
    class_token: str     # the caption the trainer uses without a caption file (N_name's name; "" at the top)

    @property
    def caption_file(self) -> Path:
        return caption_path(self.image)


def image_folders(root: Path, repeats: int = 1,
                  summary: DatasetSummary | None = None) -> list[tuple[Path, str, int, str]]:
    """(folder, name, repeats, class token) for each folder that may hold training images: `root` itself
    (`repeats` times), then its Kohya `N_name` subfolders (N times), each real folder once; other
    subfolders are ignored. Unusable `N_name` entries are named in `summary` when given."""
    summary = summary if summary is not None else DatasetSummary()
    found, seen = [(root, root.name, repeats, "")], {root.resolve(): root}
    for sub in sorted(root.iterdir()):
        match = _KOHYA_DIR.match(sub.name)
        if sub.name.startswith(".") or (not match and not sub.is_dir()):
            continue
        problem = entry_problem(sub, want_dir=True)
        if problem is not None:
            if match:  # looks like an image folder, so say why it is not used
                _skip(summary, sub, problem)
            continue
        if not match:
            log.warning("%s: ignored (Kohya image folders are named N_name, e.g. 10_mystyle)", sub)
            continue
        real = sub.resolve()
        if real in seen:
            _skip(summary, sub, f"the same folder as {seen[real]}; its images are used once")
            continue
        seen[real] = sub
        found.append((sub, sub.name, int(match.group(1)), match.group(2).strip()))
    return found


def folder_images(folder: Path, summary: DatasetSummary | None = None,
                  seen: dict[Path, Path] | None = None) -> list[Path]:
    """The image files of `folder` (IMAGE_SUFFIXES, any case), sorted; odd entries, repeats of an image
    already in `seen` (by resolved path) and captions without an image are left out (and named in
    `summary` when given)."""
    summary = summary if summary is not None else DatasetSummary()
    seen = seen if seen is not None else {}
    entries = sorted(folder.iterdir())
    stems = {p.stem for p in entries if p.suffix.lower() in IMAGE_SUFFIXES}
    images = []
    for path in entries:
        suffix = path.suffix.lower()
        if suffix == ".txt" and path.stem not in stems:
            _skip(summary, path, "a caption without an image of the same name")
        if suffix not in IMAGE_SUFFIXES:
            continue
        problem = entry_problem(path)
        real = path.resolve() if problem is None else None
        if problem is None and real in seen:
            problem = f"the same file as {seen[real]}"
        if problem is not None:
            _skip(summary, path, problem)
            continue
        seen[real] = path
        images.append(path)
    return images


def caption_pairs(root: str | Path, repeats: int = 1) -> list[CaptionedImage]:
    """Every image the trainer would consider under `root`, with its caption file's caption (images are not
    decoded: `scan_dataset` skips broken ones later). For caption editors.

    Raises:
        DatasetError: `root` is not a folder.
    """
    root = _data_root(root)
    pairs, seen = [], {}
    for folder, name, count, class_token in image_folders(root, repeats):
        for image in folder_images(folder, seen=seen):
            caption_file = caption_path(image)
            caption = read_caption(caption_file)[0] if caption_file.is_file() else None
            pairs.append(CaptionedImage(image, caption, name, count, class_token))
    return pairs


def write_captions(root: str | Path, captions: Mapping[str, str | None], backup: bool = False) -> list[Path]:
    """Write captions of images in data set `root`, given as {image path relative to root: caption}; returns
    the caption files written. Every entry is checked before any file is written. With `backup`, a caption
    file whose caption changes is first kept as `<stem>.txt.bak` (`backup_caption`).

    Raises:
        DatasetError: `root` is not a folder; a name is not an image `caption_pairs` lists (outside `root`,
            in a folder the trainer ignores, not an image); a caption has line breaks.
    """
    root = _data_root(root).resolve()
    folders = {folder.resolve() for folder, *_ in image_folders(root)}
    images = []
    for name, caption in captions.items():
        image = (root / name).resolve()
        if image.parent not in folders or image.suffix.lower() not in IMAGE_SUFFIXES or not image.is_file():
            raise DatasetError(f"{name!r} is not an image of the data set {root.name}/ (images sit in it or in "
                               "its N_name subfolders)")
        images.append((image, check_caption(caption, name)))
    if backup:
        for image, caption in images:
            if caption_path(image).is_file() and read_caption(caption_path(image))[0] != caption:
                backup_caption(image)
    return [write_caption(image, caption) for image, caption in images]


def _data_root(root: str | Path, key: str = "data.path") -> Path:
    path = Path(root).expanduser()
    if not str(root) or not path.is_dir():
        raise DatasetError(f"{key}: {str(path)!r} is not a folder; point it at a folder of images "
                           "with .txt captions or Kohya N_name subfolders")
    return path


def _caption_for(image: Path, class_token: str, summary: DatasetSummary) -> str | None:
    """The image's caption (the class token when it has no .txt); None when the caption exists but cannot
    be read: the image is skipped then, since training it under the wrong caption would teach the wrong thing."""
    caption_file = caption_path(image)
    if not os.path.lexists(caption_file):
        summary.uncaptioned += 1
        summary.uncaptioned_as[class_token] += 1
        return class_token
    problem = entry_problem(caption_file)
    if problem is None:
        try:
            caption, note = read_caption(caption_file)
        except OSError as err:
            problem = f"unreadable ({err.strerror or err})"
    if problem is not None:
        _skip(summary, caption_file, f"caption {problem}; its image {image.name} is skipped too")
        return None
    if note:
        summary.converted.append((str(caption_file), note))
        log.warning("%s: %s", caption_file, note)
    summary.captioned += 1
    return caption or class_token


def _scan_image(path: Path, cfg, summary: DatasetSummary) -> tuple[int, int] | None:
    try:
        img, notes = open_image(path, cfg.background, cfg.max_image_pixels)
    except ImageSkipped as err:
        _skip(summary, path, str(err))
        return None
    summary.hashes[path] = datacheck.signature(img)
    for note in notes:
        summary.converted.append((str(path), note))
        if "transparency" in note:  # open_image's note for a composited alpha channel
            summary.transparent.append(str(path))
    if max(img.size) > 2 * cfg.max_bucket:
        summary.converted.append((str(path), f"oversized {img.size[0]}x{img.size[1]}: scaled down to its bucket"))
    return img.size


def scan_dataset(cfg, on_progress: ProgressCallback | None = None, seed: int = 0,
                 base: str | None = None) -> tuple[list[ImageItem], DatasetSummary]:
    """Find, validate and caption every image under `cfg.path` (a `DataConfig`; unset sizes are filled as
    `sdlora.settings.resolution.fill_data_sizes` does without a base), plus the regularization images of `cfg.reg_path`.
    Validation images (`cfg.validation_path`, or `cfg.validation_split` of the training images, chosen by
    `seed`) go to `summary.validation`, not into the returned items. `on_progress` gets (images decoded,
    images found). The data set check (`sdlora.train.datacheck`) fills `summary.checks`; caption lengths
    are counted with `base`'s tokenizer (CLIP's when None).

    Raises:
        DatasetError: a folder is missing or holds no usable image; the split would leave no training image.
    """
    sized = cfg.resolution is not None  # else the size is a guess: no upscale check on it
    cfg = fill_data_sizes(cfg, None)
    root = _data_root(cfg.path or "")
    # every root is listed before any image is decoded, so a missing folder fails before the long part
    reg_root = _data_root(cfg.reg_path, "data.reg_path") if cfg.reg_path else None
    masks.check_mask_folder(cfg)
    val_root = _data_root(cfg.validation_path, "data.validation_path") if cfg.validation_path else None
    summary, seen = DatasetSummary(), {}
    folders = _listed_folders(root, cfg.repeats, summary, seen)
    reg_folders = _listed_folders(reg_root, 1, summary, seen) if reg_root is not None else []
    val_folders = _listed_folders(val_root, 1, summary, seen) if val_root is not None else []
    progress = _Progress(on_progress, sum(len(f[-1]) for f in folders + reg_folders + val_folders))
    items = _scan_folders(folders, cfg, summary, summary.folders, progress, is_reg=False)
    _require_images(items, root, summary, "data.path")
    if val_root is not None:
        summary.validation = _scan_folders(val_folders, cfg, summary, {}, progress, is_reg=False)
        _require_images(summary.validation, val_root, summary, "data.validation_path")
    elif cfg.validation_split:
        items, summary.validation = split_validation(items, cfg.validation_split, seed, summary)
    summary.tag_frequency.update({name: tag_frequency([i.caption for i in items if i.folder == name])
                                  for name in summary.folders})
    if reg_root is not None:
        reg_items = _scan_folders(reg_folders, cfg, summary, summary.reg_folders, progress, is_reg=True)
        _require_images(reg_items, reg_root, summary, "data.reg_path")
        items += balance_reg(items, reg_items)
    _assign_buckets(items, cfg, summary)
    _assign_buckets(summary.validation, cfg, DatasetSummary())  # the summary's buckets count trained images
    _check(items, cfg, summary, base, sized)
    return items, summary


def _check(items: list[ImageItem], cfg, summary: DatasetSummary, base: str | None, sized: bool) -> None:
    trained = [item for item in items if not item.is_reg]
    paths = {item.path for item in trained}
    tokenizer = datacheck.caption_tokenizer(base or "sd1")
    caption, summary.cut_captions = datacheck.caption_lines(
        trained, tokenizer, token_limit(tokenizer, chunk_count(cfg.max_token_length)), cfg.max_token_length)
    summary.checks = [
        *datacheck.duplicate_lines({path: h for path, h in summary.hashes.items() if path in paths}),
        *(datacheck.upscale_lines(trained) if sized else []),
        *caption,
        *datacheck.uncaptioned_lines(summary.uncaptioned_as, cfg.trigger),
        *datacheck.alpha_lines(summary.transparent, cfg.alpha_mask, cfg.background),
        *datacheck.mask_lines([item.path for item in trained if cfg.mask_path and masks.mask_file(item.path, cfg) is None],
                              cfg.mask_path),
    ]


def split_validation(items: list[ImageItem], fraction: float, seed: int,
                     summary: DatasetSummary) -> tuple[list[ImageItem], list[ImageItem]]:
    """(training, held out): `fraction` of the images (at least one) held out, chosen by `seed` alone, so
    that the same seed holds out the same files in every run and a resumed run trains on the same set.
    The folder counts in `summary` are lowered to what is trained on (ss_dataset_dirs counts those)."""
    count = max(1, round(fraction * len(items)))
    if count >= len(items):
        raise DatasetError(f"data.validation_split={fraction} would hold out {count} of {len(items)} images and "
                           "leave none to train on; lower it or use data.validation_path")
    chosen = set(random.Random(f"validation:{seed}").sample(range(len(items)), count))
    held = [item for i, item in enumerate(items) if i in chosen]
    for item in held:
        summary.folders[item.folder]["img_count"] -= 1
    summary.folders = {name: f for name, f in summary.folders.items() if f["img_count"]}
    return [item for i, item in enumerate(items) if i not in chosen], held


def _listed_folders(root: Path, repeats: int, summary: DatasetSummary, seen: dict) -> list[tuple]:
    """(folder, name, repeats, class token, image paths) of each image folder under `root`."""
    return [(*f, folder_images(f[0], summary, seen)) for f in image_folders(root, repeats, summary)]


@dataclass
class _Progress:
    callback: ProgressCallback | None
    total: int
    done: int = 0

    def advance(self, name: str) -> None:
        self.done += 1
        report(self.callback, self.done, self.total, name)


def _scan_folders(folders: list[tuple], cfg, summary: DatasetSummary, counts: dict, progress: _Progress,
                  is_reg: bool) -> list[ImageItem]:
    """Decode and caption the images of `folders`; `counts` gets {name: {"n_repeats", "img_count"}}."""
    items = []
    for _folder, name, repeats, class_token, images in folders:
        found = []
        for path in images:
            progress.advance(path.name)
            size = _scan_image(path, cfg, summary)
            caption = None if size is None else _caption_for(path, class_token, summary)
            if caption is not None:
                # reg captions get no trigger: they teach what the class looks like without it
                text = caption if is_reg else with_trigger(caption, cfg.trigger)
                found.append(ImageItem(path, text, name, repeats, size, is_reg=is_reg))
        if found:
            counts[name] = {"n_repeats": repeats, "img_count": len(found)}
        items += found
    return items


def _require_images(items: list[ImageItem], root: Path, summary: DatasetSummary, key: str) -> None:
    if items:
        return
    skipped = f" ({len(summary.skipped)} file(s) skipped: {summary.skipped[0][1]})" if summary.skipped else ""
    raise DatasetError(f"{key}: no usable images in {root}{skipped}; expected "
                       f"{', '.join(sorted(IMAGE_SUFFIXES))} files, directly or in N_name subfolders")


def balance_reg(train: list[ImageItem], reg: list[ImageItem]) -> list[ImageItem]:
    """The regularization items with repeats set so that an epoch draws as many reg samples as training
    samples (kohya sd-scripts' balancing): the reg images are taken in order with their own repeats until
    the count is reached (later ones are left out), then, while short, each gets one more repeat in turn."""
    wanted, count, used = sum(item.repeats for item in train), 0, []
    for item in reg:
        if count >= wanted:
            break
        used.append(item)
        count += item.repeats
    while count < wanted:
        for item in used:
            if count >= wanted:
                break
            item.repeats += 1
            count += 1
    return used


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
    import torch

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
