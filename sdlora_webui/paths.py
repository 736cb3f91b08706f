"""Confinement of user-typed paths to the folders the app was started with.

Every path the web UI reads or writes goes through `resolve_within` first: paths a user types, and the
files behind library names (`AppState.library_path`) alike. A path is accepted only when its fully resolved form (symlinks followed, `..` removed)
lies inside one of the allowed roots, so `../../etc/passwd`, `/etc/passwd` and a symlink inside a
root that points outside are all refused. Relative paths are taken relative to a default root.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from sdlora.errors import SdloraError


class AccessError(SdloraError, PermissionError):
    """A path typed in the web UI points outside the folders the app may use."""


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")
NAME_MAX = 255    # bytes per file name on ext4, XFS, btrfs, APFS, NTFS (in UTF-16 units)
PATH_MAX = 4096   # bytes per path on Linux


def check_name_lengths(text: str) -> None:
    """Refuse a path with a name over NAME_MAX bytes or a total over PATH_MAX, with a message (the file
    system would raise ENAMETOOLONG from somewhere deep, which the UI can only call an internal error)."""
    if len(os.fsencode(text)) > PATH_MAX:
        raise AccessError(f"path too long ({len(os.fsencode(text))} bytes; at most {PATH_MAX})")
    for part in Path(text).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise AccessError(f"name too long: {part[:40]!r}... is {size} bytes; a file or folder name can have "
                              f"at most {NAME_MAX}")


def resolve_within(
    user_path: str | os.PathLike,
    roots: Sequence[Path],
    *,
    default_root: Path | None = None,
    must_exist: bool = True,
) -> Path:
    """Resolve `user_path` and return it only if it lies inside one of `roots`.

    Relative paths are joined to `default_root` (the first root when not given). Raises
    `AccessError` for paths outside every root and `FileNotFoundError`-like `AccessError` when
    `must_exist` and nothing is there.
    """
    text = str(user_path).strip()
    if not text:
        raise AccessError("no path given: type a file or folder name inside the allowed folders")
    if "\x00" in text:
        raise AccessError("a path cannot contain a NUL character")
    try:
        check_name_lengths(text)
    except UnicodeEncodeError as err:  # a lone surrogate: no file system name can hold it
        raise AccessError("a path cannot contain unpaired surrogate characters") from err
    if not roots:
        raise AccessError("this app has no folders configured for files")
    resolved_roots = [Path(r).resolve() for r in roots]
    base = Path(default_root).resolve() if default_root is not None else resolved_roots[0]
    candidate = Path(text).expanduser() if text.startswith("~") else Path(text)
    if not candidate.is_absolute():
        candidate = base / candidate
    # resolve() follows every symlink, so a link inside a root that points outside is caught here
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python 3.11)
        raise AccessError(f"{text!r} cannot be resolved ({err})") from err
    if not any(resolved == root or resolved.is_relative_to(root) for root in resolved_roots):
        allowed = ", ".join(str(r) for r in resolved_roots)
        raise AccessError(f"{text!r} is outside the folders this app may use ({allowed})")
    if must_exist and not resolved.exists():
        raise AccessError(f"{text!r} does not exist (looked for {resolved})")
    return resolved


def safe_filename(name: str, *, default: str = "file") -> str:
    """A file name with no folder part and only harmless characters (for uploads and outputs)."""
    base = Path(str(name).replace("\\", "/")).name
    cleaned = _SAFE_NAME.sub("_", base).strip(" .")
    check_name_lengths(cleaned)
    return cleaned or default


def unique_path(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/stem-2.ext`, `-3`, ... when that file already exists."""
    target = folder / name
    stem, suffix = Path(name).stem, "".join(Path(name).suffixes[-1:])
    n = 2
    while target.exists():
        target = folder / f"{stem}-{n}{suffix}"
        n += 1
    return target


def display_path(path: Path, roots: Sequence[Path]) -> str:
    """`path` relative to the first root containing it (what the UI shows), else the full path."""
    resolved = Path(path).resolve()
    for root in roots:
        root = Path(root).resolve()
        if resolved.is_relative_to(root):
            rel = resolved.relative_to(root)
            return f"{root.name}/{rel}" if str(rel) != "." else root.name
    return str(resolved)
