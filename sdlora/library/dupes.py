"""Duplicate LoRAs: files whose tensor data is byte-for-byte the same (equal tensor-data SHA-256, the hash A1111
prints as `Lora hashes`), whatever their names, headers or folders. Never imports torch.

Grouping is by the tensor hash only, never by file name or Civitai version (two files with different metadata
but the same weights are the same LoRA; two versions on Civitai may share nothing). Keeping one moves the others,
with their side files, to the `.trash/` folder of their library root, under the same relative folder; nothing
is deleted (docs/library.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sdlora.errors import ConfigError
from sdlora.library.organise import MoveResult, move_with_side_files, side_files, within_roots
from sdlora.library.scan import TRASH, LibraryEntry, file_hash
from sdlora.progress import report


@dataclass
class DuplicateGroup:
    """Files with the same tensor data; `entries` sorted by path."""

    sha256: str
    entries: list[LibraryEntry]

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]


def find_duplicates(entries: Iterable[LibraryEntry], cache_path=None,
                    on_progress: Callable | None = None) -> list[DuplicateGroup]:
    """Groups of two or more entries with equal tensor hashes, largest groups first.

    Hashes missing from the headers are computed (the whole file is read once, then cached by path, size and
    mtime: see `sdlora.library.file_hash`); `on_progress` gets one call per file. A file that cannot be read
    is left out (it cannot be compared).
    """
    entries = list(entries)
    groups: dict[str, list[LibraryEntry]] = defaultdict(list)
    for done, entry in enumerate(entries, 1):
        try:
            groups[file_hash(entry, cache_path=cache_path)].append(entry)
        except OSError:
            pass  # gone or unreadable since the scan: nothing to compare
        report(on_progress, done, len(entries), entry.path)
    found = [DuplicateGroup(sha, sorted(group, key=lambda e: e.path)) for sha, group in groups.items()
             if len(group) > 1]
    return sorted(found, key=lambda g: (-len(g.entries), g.entries[0].path))


def trash_folder(entry: LibraryEntry) -> Path:
    """Where `keep_one` moves `entry`: `<its root>/.trash/<its folder>`."""
    if not entry.root:
        raise ConfigError(f"{entry.path}: not from a library scan (its root is unknown)")
    return Path(entry.root) / TRASH / entry.folder


def keep_one(group: DuplicateGroup, keep: str, roots: Iterable) -> MoveResult:
    """Keep the entry of `group` at path `keep`; move every other one, with its side files, to its root's trash.

    A name already taken in the trash gets `-2`, `-3`, ... (the same suffix for the LoRA and its side files).
    Raises ConfigError when `keep` is not in the group.
    """
    roots = [Path(r).resolve() for r in roots]
    paths = [e.path for e in group.entries]
    if keep not in paths:
        raise ConfigError(f"{keep}: not one of the duplicates of {group.short_hash} ({', '.join(paths)})")
    result = MoveResult()
    for entry in group.entries:
        if entry.path == keep:
            continue
        try:
            source = within_roots(entry.path, roots, "the duplicate")
            folder = trash_folder(entry)
            within_roots(folder, roots, "the trash folder")
            stem = free_stem(source, folder)
            result.moved.append((entry.path, str(move_with_side_files(source, folder, stem))))
        except (ConfigError, OSError) as err:
            result.skipped.append((entry.path, str(err)))
    return result


def free_stem(lora: Path, folder: Path) -> str:
    """`lora`'s stem, or `stem-2`, `stem-3`, ... so that neither it nor any of its side files exists in `folder`."""
    suffixes = [lora.suffix] + [f.name[len(lora.stem):] for f in side_files(lora)]
    stem, n = lora.stem, 2
    while any((folder / (stem + s)).exists() for s in suffixes):
        stem, n = f"{lora.stem}-{n}", n + 1
    return stem
