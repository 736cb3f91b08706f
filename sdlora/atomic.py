"""Atomic outputs: write to a temporary sibling, then rename over the target. Depends on nothing.

Nothing is lost on failure: until the rename, the old file (or folder) is untouched, and a failed or
interrupted write removes its temporary entry. `tempfile` makes owner-only (0600/0700) entries; the
renamed result gets the permissions a plain `open`/`mkdir` would give under the user's umask, so a
LoRA or image sdlora writes is as readable as any other file the user saves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp", fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on a clean exit it replaces `path`.

    >>> with atomic_path("out.safetensors") as tmp:
    ...     save_file(tensors, tmp)
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        usual_permissions(Path(tmp), folder=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on a clean exit it is renamed to `path` (which must not
    exist, or be an empty folder; with `replace`, an existing folder is moved aside first and deleted only
    once the new one is in place, so a failure leaves it as it was)."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        usual_permissions(tmp, folder=True)
        if replace and path.is_dir():
            _swap_folder(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_folder(new: Path, path: Path) -> None:
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
    os.replace(path, old / path.name)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old / path.name, path)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_bytes_atomic(path: str | os.PathLike, blob: bytes) -> None:
    """`path.write_bytes(blob)`, atomically and fsynced."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)


def usual_permissions(path: Path, folder: bool) -> None:
    """What a plain open/mkdir would give under the current umask (tempfile's entries are owner-only)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only set it, and a
    set-and-restore would briefly loosen it for other threads, e.g. the web UI's)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
