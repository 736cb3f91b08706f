"""Whole-file SHA-256s with a cache keyed by (path, size, mtime). Standard library only.

Civitai and most model sites name a file by the SHA-256 of all its bytes (its "AutoV2" is the first 10 hex
characters; docs/civitai.md). Hashing a library of large files takes minutes, so every digest is kept in a
JSON cache: a file whose size and modification time are unchanged is never read again, and a second scan
of an unchanged library opens none of its files. The cache may be shared by threads (a lock guards it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from sdlora.atomic import atomic_path

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CHUNK = 1024 * 1024


def default_cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "sdlora" / "file-hashes.json"


def sha256_file(path: str | os.PathLike, on_bytes: Callable[[int], None] | None = None) -> str:
    """The SHA-256 (lower-case hex) of every byte of `path`; `on_bytes(n)` after each chunk read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest.hexdigest()


def autov2(sha256: str) -> str:
    """Civitai's short hash: the first 10 hex characters of the whole-file SHA-256, upper case."""
    return sha256[:10].upper()


class FileHashCache:
    """Whole-file SHA-256s by (resolved path, size, mtime); `path=None` keeps them in memory only.

    `sha256(file)` answers from the cache when the file is unchanged, else reads it; `save()` writes the
    cache atomically when something changed (a read-only cache location only logs a warning).
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        self.files: dict[str, dict] = self._load()
        self.files_read = 0  # files hashed (read) since this cache was opened
        self._changed = False
        self._lock = threading.Lock()

    def sha256(self, file: str | os.PathLike, on_bytes: Callable[[int], None] | None = None) -> str:
        key, stat = str(Path(file).resolve()), os.stat(file)
        with self._lock:
            known = self.files.get(key)
        if known and known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
            return known["sha256"]
        digest = sha256_file(file, on_bytes)
        with self._lock:
            self.files[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
            self.files_read += 1
            self._changed = True
        return digest

    def remember(self, file: str | os.PathLike, sha256: str) -> None:
        """Record a digest computed elsewhere (a download hashes its bytes while they arrive)."""
        stat = os.stat(file)
        with self._lock:
            self.files[str(Path(file).resolve())] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                                     "sha256": sha256}
            self._changed = True

    def save(self) -> None:
        with self._lock:
            if self.path is None or not self._changed:
                return
            data = {"version": CACHE_VERSION, "files": dict(self.files)}
            self._changed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path, fsync=False) as tmp:
                tmp.write_text(json.dumps(data), encoding="utf-8")
        except OSError as err:  # a read-only cache location must not stop a scan
            log.warning("%s: could not write the file-hash cache (%s)", self.path, err)

    def _load(self) -> dict[str, dict]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            log.warning("%s: file-hash cache unreadable; rebuilding it", self.path)
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("files"), dict):
            return {}
        return data["files"]
