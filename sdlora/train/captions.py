"""Caption files and caption processing (trigger, shuffle with keep-tokens, caption/tag dropout). Stdlib only
(plus sdlora.atomic for writing a caption).

Captions are comma-separated tags, as sd-scripts treats them (docs/formats.md §3, `process_caption`): the
trigger word goes first, the first `keep_tokens` tags (the trigger counts as one) never move or drop, the
rest may be shuffled and dropped, and the result is re-joined with ", ".
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from sdlora.atomic import write_bytes_atomic
from sdlora.errors import DatasetError


def read_caption(path: Path) -> tuple[str, str | None]:
    """Return (caption, note). Non-UTF-8 files are read as cp1252 (then Latin-1) and noted, never fatal.

    The caption is the first non-empty line, as sd-scripts reads it.
    """
    raw = path.read_bytes()
    note = None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = raw.decode("cp1252")
            note = "caption is not UTF-8; read as Windows-1252"
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
            note = "caption is not UTF-8; read as Latin-1"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else ""), note


def caption_path(image: Path) -> Path:
    """The caption file of an image: the same stem with `.txt` (img0.png -> img0.txt), as sd-scripts pairs them."""
    return Path(image).with_suffix(".txt")


def check_caption(caption: str | None, where: str) -> str:
    """The caption as it will be written (stripped); `where` names the image in the error.

    Raises:
        DatasetError: the caption has line breaks (the trainer reads only its first line).
    """
    text = str(caption or "").strip()
    if len(text.splitlines()) > 1:  # the line rule of read_caption
        raise DatasetError(f"{where}: the caption has line breaks, but only its first line is read as the "
                           "caption; join the lines (tags are separated by commas)")
    return text


def write_caption(image: Path, caption: str | None) -> Path:
    """Write `caption` (stripped, one line, UTF-8) to the image's caption file atomically; returns that file.

    Raises:
        DatasetError: `image` is not a file, or the caption has line breaks (see `check_caption`).
    """
    image = Path(image)
    if not image.is_file():
        raise DatasetError(f"{image}: no such image; a caption is written beside its image")
    target = caption_path(image)
    write_bytes_atomic(target, (check_caption(caption, image.name) + "\n").encode("utf-8"))
    return target


BACKUP_SUFFIX = ".txt.bak"


def backup_caption(image: Path) -> Path | None:
    """Keep the image's caption file as `<stem>.txt.bak` before it is replaced; returns the backup made, or
    None when there is no caption file or a backup exists already (it holds the oldest caption)."""
    source, backup = caption_path(image), Path(image).with_suffix(BACKUP_SUFFIX)
    if not source.is_file() or backup.exists():
        return None
    write_bytes_atomic(backup, source.read_bytes())
    return backup


def split_tags(caption: str) -> list[str]:
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def with_trigger(caption: str, trigger: str) -> str:
    """Prepend the trigger word unless the caption already starts with it."""
    if not trigger:
        return caption
    tags = split_tags(caption)
    if tags and tags[0] == trigger:
        return caption
    return ", ".join([trigger, *tags])


def process_caption(caption: str, rng: random.Random, *, keep_tokens: int = 0, shuffle: bool = False,
                    caption_dropout: float = 0.0, tag_dropout: float = 0.0) -> str:
    """Apply caption dropout, then shuffle and tag dropout to the tags after the first `keep_tokens`."""
    if caption_dropout > 0 and rng.random() < caption_dropout:
        return ""
    tags = split_tags(caption)
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    if shuffle:
        rng.shuffle(rest)
    if tag_dropout > 0:
        rest = [tag for tag in rest if rng.random() >= tag_dropout]
    return ", ".join(kept + rest)


def tag_frequency(captions: list[str]) -> dict[str, int]:
    """{tag (lower-cased): count}, as sd-scripts' `ss_tag_frequency` counts them."""
    counts = Counter(tag.lower() for caption in captions for tag in split_tags(caption))
    return dict(counts.most_common())


def chunk_count(max_token_length: int) -> int:
    """Text-encoder windows per caption for `data.max_token_length` (75 -> 1, 150 -> 2, 225 -> 3)."""
    return max(1, max_token_length // 75)


def token_limit(tokenizer, chunks: int) -> int:
    """Caption tokens that fit in `chunks` windows (each window keeps two places for its BOS and EOS)."""
    return chunks * (tokenizer.model_max_length - 2)
