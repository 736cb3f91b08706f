"""Hashes Civitai answered 404 for, with the date: not asked again for a week (unless a refresh is asked).

A library holds many files that are not on Civitai (own trainings, merges); asking for each of them on every
scan would waste the rate limit. The memory is a small JSON file {sha256: "YYYY-MM-DD"} in the cache folder.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from pathlib import Path

from sdlora.atomic import atomic_path

log = logging.getLogger(__name__)

REMEMBER_DAYS = 7


def default_misses_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "sdlora" / "civitai-misses.json"


class MissMemory:
    """`path=None` remembers in memory only; `today` is a parameter so tests can move the clock."""

    def __init__(self, path: str | os.PathLike | None = None, today: datetime.date | None = None):
        self.path = Path(path) if path is not None else None
        self.today = today or datetime.date.today()
        self._lock = threading.Lock()
        self._misses = self._load()
        self._changed = False

    def missed_on(self, sha256: str) -> datetime.date | None:
        """The date Civitai last answered 404 for `sha256`, when that is under a week ago."""
        with self._lock:
            text = self._misses.get(sha256)
        try:
            day = datetime.date.fromisoformat(text) if text else None
        except ValueError:
            return None
        return day if day is not None and (self.today - day).days < REMEMBER_DAYS else None

    def add(self, sha256: str) -> None:
        with self._lock:
            self._misses[sha256] = self.today.isoformat()
            self._changed = True

    def forget(self, sha256: str) -> None:
        with self._lock:
            if self._misses.pop(sha256, None) is not None:
                self._changed = True

    def save(self) -> None:
        """Write the list atomically when it changed (a scan calls this every few dozen files and at the end)."""
        with self._lock:
            if self.path is None or not self._changed:
                return
            self._changed = False
            text = json.dumps(self._misses, indent=0)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(self.path, fsync=False) as tmp:
                    tmp.write_text(text, encoding="utf-8")
            except OSError as err:
                log.warning("%s: could not write the Civitai miss list (%s)", self.path, err)

    def _load(self) -> dict[str, str]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            log.warning("%s: Civitai miss list unreadable; starting a new one", self.path)
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
