"""Captioning a data set folder: which images need a caption, composing it, writing it safely.

The images are the ones the trainer would use (`sdlora.train.data.caption_pairs`: the folder and its Kohya
`N_name` subfolders). An image whose caption file has a caption is skipped unless `overwrite` is set; then
the old caption file is kept beside it as `<stem>.txt.bak` (an existing `.bak` is left alone: it holds the
oldest caption). `caption_folder` writes each batch as soon as it is captioned, so a run that stops (cancel,
error, power) keeps what it did and a second run goes on where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sdlora.caption.models import Captioner
from sdlora.errors import ConfigError
from sdlora.progress import Cancel, ProgressCallback, cancelled, report
from sdlora.train.captions import BACKUP_SUFFIX, backup_caption, check_caption, with_trigger, write_caption
from sdlora.train.data import CaptionedImage, caption_pairs
from sdlora.train.images import ImageSkipped, open_image


@dataclass
class CaptionOptions:
    trigger: str = ""        # first tag of every caption (e.g. "zqx style")
    prefix: str = ""         # text after the trigger, before the model's caption
    suffix: str = ""         # text after the model's caption
    batch_size: int = 4
    overwrite: bool = False  # replace existing captions (the old file is kept as .txt.bak)

    def check(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch size {self.batch_size}: give 1 or more")
        for key in ("trigger", "prefix", "suffix"):
            check_caption(getattr(self, key), key)


@dataclass
class Proposal:
    image: Path
    name: str              # the image's path relative to the data set folder
    old: str | None        # the caption file's caption, None without one
    new: str


@dataclass
class CaptionResult:
    proposals: list[Proposal] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    backups: list[Path] = field(default_factory=list)
    skipped: int = 0       # images that already had a caption (kept)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # images that could not be read, and why
    cancelled: bool = False

    def summary(self) -> str:
        parts = [f"{len(self.written) or len(self.proposals)} captioned"]
        if self.skipped:
            parts.append(f"{self.skipped} already captioned (kept; overwrite to redo)")
        if self.backups:
            parts.append(f"{len(self.backups)} old captions kept as {BACKUP_SUFFIX}")
        if self.failed:
            parts.append(f"{len(self.failed)} unreadable images skipped")
        if self.cancelled:
            parts.append("cancelled")
        return ", ".join(parts)


def compose(text: str, options: CaptionOptions) -> str:
    """trigger, prefix, the model's text, suffix: joined as comma-separated tags, empty parts left out."""
    parts = [part.strip().strip(",").strip() for part in (options.prefix, text, options.suffix)]
    caption = ", ".join(part for part in parts if part)
    return with_trigger(caption, options.trigger.strip()) if options.trigger.strip() else caption


def to_caption(root: str | Path, overwrite: bool = False) -> tuple[list[CaptionedImage], int]:
    """(images that will be captioned, how many are skipped because they have a caption)."""
    pairs = caption_pairs(root)
    todo = [pair for pair in pairs if overwrite or not pair.caption]
    return todo, len(pairs) - len(todo)


def propose_captions(root: str | Path, captioner: Captioner, options: CaptionOptions | None = None,
                     on_progress: ProgressCallback | None = None, cancel: Cancel = None) -> CaptionResult:
    """Caption the images that need it without writing anything (for an editor that shows them first)."""
    return _caption(root, captioner, options or CaptionOptions(), on_progress, cancel, write=False)


def caption_folder(root: str | Path, captioner: Captioner, options: CaptionOptions | None = None,
                   on_progress: ProgressCallback | None = None, cancel: Cancel = None) -> CaptionResult:
    """Caption the images that need it and write each batch's caption files as it is done."""
    return _caption(root, captioner, options or CaptionOptions(), on_progress, cancel, write=True)


def apply_proposals(proposals: list[Proposal], result: CaptionResult | None = None) -> CaptionResult:
    """Write proposals' captions; a caption file that exists is first kept as `.txt.bak`."""
    result = result or CaptionResult()
    for proposal in proposals:
        text = check_caption(proposal.new, proposal.name)
        backup = backup_caption(proposal.image)
        if backup is not None:
            result.backups.append(backup)
        result.written.append(write_caption(proposal.image, text))
    return result


def _caption(root, captioner: Captioner, options: CaptionOptions, on_progress, cancel, write: bool) -> CaptionResult:
    options.check()
    todo, skipped = to_caption(root, options.overwrite)
    result = CaptionResult(skipped=skipped)
    base = Path(root)
    report(on_progress, 0, len(todo), "captioning")
    for start in range(0, len(todo), options.batch_size):
        if cancelled(cancel):
            result.cancelled = True
            break
        batch = _proposals(todo[start:start + options.batch_size], base, captioner, options, result)
        result.proposals.extend(batch)
        if write:
            apply_proposals(batch, result)
        done = min(start + options.batch_size, len(todo))
        report(on_progress, done, len(todo), todo[done - 1].image.name)
    return result


def _proposals(pairs: list[CaptionedImage], root: Path, captioner: Captioner, options: CaptionOptions,
               result: CaptionResult) -> list[Proposal]:
    images, kept = [], []
    for pair in pairs:
        try:
            images.append(open_image(pair.image)[0])
            kept.append(pair)
        except ImageSkipped as err:
            result.failed.append((pair.image, str(err)))
    texts = captioner.caption(images) if images else []
    return [Proposal(pair.image, pair.image.relative_to(root).as_posix(), pair.caption, compose(text, options))
            for pair, text in zip(kept, texts, strict=True)]

