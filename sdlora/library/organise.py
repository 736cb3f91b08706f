"""Organising a library: filters (folder, tag, base model, favourites), tags and favourites kept in the
A1111 notes file `<stem>.json`, and moves that carry a LoRA's side files. Never imports torch.

A move never overwrites a file and never leaves the library roots: a LoRA whose file or any side file would
land on an existing name is skipped with the reason, and the others go on (docs/library.md).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sdlora.errors import ConfigError
from sdlora.library.scan import LibraryEntry, note_tags, read_notes, write_notes
from sdlora.progress import report
from sdlora.suffixes import IMAGE_SUFFIXES

# what tools keep beside a LoRA under its stem: A1111 notes and previews, Civitai Helper's info, Lora-Manager's
# metadata, kohya's training config and caption notes
SIDE_SUFFIXES = (".json", ".civitai.info", ".metadata.json", ".txt", ".yaml", ".toml",
                 *sorted(f".preview{s}" for s in IMAGE_SUFFIXES), *sorted(IMAGE_SUFFIXES))
ALL_FOLDERS = ""


@dataclass
class MoveResult:
    """`moved`: (old path, new path) of each LoRA file moved; `skipped`: (path, why) of those left in place."""

    moved: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def message(self) -> str:
        text = f"moved {len(self.moved)} LoRA(s)"
        if self.skipped:
            text += "; not moved: " + "; ".join(f"{Path(p).name} ({why})" for p, why in self.skipped[:5])
        return text


def side_files(lora_path) -> list[Path]:
    """The files beside a LoRA that belong to it (same stem, a known side-file suffix), in SIDE_SUFFIXES order."""
    path = Path(lora_path)
    stem = path.with_suffix("")
    return [Path(f"{stem}{suffix}") for suffix in SIDE_SUFFIXES if Path(f"{stem}{suffix}").is_file()]


def filter_entries(entries: Iterable[LibraryEntry], folder: str = ALL_FOLDERS, tag: str = "", base_model: str = "",
                   favourites: bool = False) -> list[LibraryEntry]:
    """The entries in `folder` (relative to their root, subfolders included; "" all), carrying `tag` (any case),
    of `base_model` ("" any) and, with `favourites`, marked favourite; the order is kept."""
    folder = folder.strip("/")
    tag = tag.strip().lower()
    found = []
    for entry in entries:
        if folder and entry.folder != folder and not entry.folder.startswith(folder + "/"):
            continue
        if tag and tag not in (t.lower() for t in entry.tags):
            continue
        if base_model and entry.base_model != base_model:
            continue
        if favourites and not entry.favourite:
            continue
        found.append(entry)
    return found


def folders(entries: Iterable[LibraryEntry]) -> list[str]:
    """Every folder holding LoRAs, and the folders above them, sorted (the folder tree, "" first)."""
    found = {ALL_FOLDERS}
    for entry in entries:
        parts = entry.folder.split("/") if entry.folder else []
        found.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
    return sorted(found)


def facets(entries: Iterable[LibraryEntry]) -> dict[str, list[str]]:
    """The values the filters offer: {"folders", "tags", "base_models"}, each sorted."""
    entries = list(entries)
    return {"folders": folders(entries),
            "tags": sorted({t for e in entries for t in e.tags}, key=str.lower),
            "base_models": sorted({e.base_model for e in entries if e.base_model})}


def set_favourite(lora_path, favourite: bool) -> dict:
    """Mark a LoRA favourite (or not) in its `<stem>.json`; returns the notes written."""
    return write_notes(lora_path, {"favourite": True if favourite else None})


def tag_files(paths: Iterable, add: Iterable[str] = (), remove: Iterable[str] = ()) -> int:
    """Add and remove the user's tags of several LoRAs (their `<stem>.json` "tags"); returns how many files
    changed. Civitai's tags (in `.civitai.info`) are never touched."""
    add = [t.strip() for t in add if t and t.strip()]
    drop = {t.strip().lower() for t in remove if t and t.strip()}
    for tag in add:
        if "," in tag:
            raise ConfigError(f"tag {tag!r}: a tag cannot contain a comma; give several tags as a list")
    changed = 0
    for path in paths:
        tags = note_tags(read_notes(path))
        wanted = [t for t in tags if t.lower() not in drop]
        wanted += [t for t in add if t.lower() not in {w.lower() for w in wanted}]
        if wanted != tags:
            write_notes(path, {"tags": wanted or None})
            changed += 1
    return changed


def parse_tags(text: str) -> list[str]:
    """Tags typed as one comma-separated string."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def move_loras(paths: Iterable, target, roots: Iterable, on_progress: Callable | None = None) -> MoveResult:
    """Move LoRA files, each with its side files, into folder `target` (created when missing).

    Args:
        paths: the LoRA files to move; each must lie inside one of `roots`.
        target: the destination folder; it must resolve inside one of `roots`.
        roots: the library roots.

    Raises:
        ConfigError: `target` is outside every root. A file that cannot move is skipped (in the result).
    """
    roots = [Path(r).resolve() for r in roots]
    folder = within_roots(target, roots, "the destination folder")
    paths = list(paths)
    result = MoveResult()
    for done, path in enumerate(paths, 1):
        try:
            source = within_roots(path, roots, "the LoRA")
            result.moved.append((str(path), str(move_with_side_files(source, folder))))
        except (ConfigError, OSError) as err:
            result.skipped.append((str(path), str(err)))
        report(on_progress, done, len(paths), str(path))
    return result


def within_roots(path, roots: list[Path], what: str) -> Path:
    """`path` resolved (links followed), when inside one of `roots` (resolved); else ConfigError."""
    resolved = Path(path).resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise ConfigError(f"{path}: {what} must be inside a library folder ({', '.join(map(str, roots))})")
    return resolved


def move_with_side_files(lora: Path, folder: Path, new_stem: str | None = None) -> Path:
    """Move `lora` and its side files into `folder` (as `new_stem` when given); nothing moves when any target
    exists (ConfigError naming it). Returns the LoRA's new path."""
    stem = new_stem or lora.stem
    files = [lora, *side_files(lora)]
    moves = [(f, folder / (stem + f.name[len(lora.stem):])) for f in files]
    if lora.parent == folder and stem == lora.stem:
        raise ConfigError(f"{lora.name} is already in {folder}")
    taken = [dst.name for _, dst in moves if dst.exists() or dst.is_symlink()]
    if taken:
        raise ConfigError(f"{', '.join(taken)} already exist(s) in {folder}; rename or remove it first")
    folder.mkdir(parents=True, exist_ok=True)
    for src, dst in moves:
        _move(src, dst)
    return moves[0][1]


def _move(src: Path, dst: Path) -> None:
    """Rename (same file system) or copy-then-delete (shutil.move), never over an existing file."""
    try:
        os.link(src, dst)  # fails when dst exists: no overwrite even if a file appeared since the check
        os.unlink(src)
    except OSError:
        if dst.exists():
            raise
        shutil.move(src, dst)  # another file system, or links not allowed
