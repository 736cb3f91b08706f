"""LoRA library: scan a folder tree of LoRA files, with a header cache. Never imports torch.

Per file: name (file stem, as A1111 shows it), family, rank, trigger words (`modelspec.trigger_phrase`,
which sdlora's trainer writes from `data.trigger`), top tags (the most frequent `ss_tag_frequency` caption
tags: what the captions said most, not words the LoRA needs), a preview image beside it (same stem, .png/.jpg/
.jpeg/.webp, or A1111's `<stem>.preview.png`), user notes from a same-stem `.json` (A1111 fields:
"activation text", "preferred weight", "notes", "description", ...), and the tensor-data hash whose
first 12 hex characters A1111 prints as `Lora hashes` (FORMATS §2.11).

Only safetensors headers are read. The cache (JSON) maps each path to (size, mtime) and the
tensor-data SHA-256, and each SHA-256 to what was read from the header, so a rescan of an unchanged
folder reads no file at all and a copy or move of a file reuses the header data. A damaged file is
reported in the scan result; the scan goes on.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sdlora.errors import ConfigError, SdloraError
from sdlora.progress import report

log = logging.getLogger(__name__)

CACHE_VERSION = 1
PREVIEW_SUFFIXES = (".preview.png", ".preview.jpg", ".preview.jpeg", ".preview.webp",
                    ".png", ".jpg", ".jpeg", ".webp")
NOTE_FIELDS = ("activation text", "preferred weight", "notes", "description", "sd version", "negative text")
TOP_TAGS = 5
_RANK_SUFFIXES = (".lora_down.weight", ".lora_A.weight", ".hada_w1_b", ".lokr_w1_b", ".lokr_w2_b")


@dataclass
class LibraryEntry:
    """One LoRA file of the library (`error` is set, and the rest mostly empty, for a damaged file)."""

    name: str
    path: str
    size: int = 0
    family: str | None = None
    rank: int | None = None  # the most common rank
    ranks: list[int] = field(default_factory=list)  # every distinct rank (several after a dynamic resize)
    trigger_words: list[str] = field(default_factory=list)  # modelspec.trigger_phrase, comma-separated
    top_tags: list[str] = field(default_factory=list)       # most frequent training caption tags
    preview: str | None = None
    notes: dict = field(default_factory=dict)
    sha256: str = ""
    title: str = ""
    error: str | None = None

    @property
    def short_hash(self) -> str:
        """First 12 hex characters of the tensor-data SHA-256 (A1111 `Lora hashes`)."""
        return self.sha256[:12]


@dataclass
class ScanResult:
    """`entries` (readable files, sorted by name) and `errors` (damaged files, with the reason)."""

    entries: list[LibraryEntry] = field(default_factory=list)
    errors: list[LibraryEntry] = field(default_factory=list)
    files_read: int = 0  # files whose header had to be read (0 on an unchanged rescan)

    def __iter__(self):
        return iter(self.entries)

    def names(self) -> dict[str, str]:
        """{name: path} of the readable entries (for `<lora:name>` prompt tags)."""
        return {entry.name: entry.path for entry in self.entries}


def default_cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "sdlora" / "library-cache.json"


def scan(folder, cache_path=None, on_progress: Callable | None = None) -> ScanResult:
    """Scan `folder` (recursively) for `.safetensors` LoRAs.

    Args:
        folder: the LoRA folder.
        cache_path: the JSON header cache (default: ~/.cache/sdlora/library-cache.json); it is
            updated atomically after the scan. Pass False to use no cache.
        on_progress: called with `Progress(done, total, path)` per file.

    Raises:
        ConfigError: `folder` is not a folder. Damaged files do not raise; they are in `.errors`.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder; give the folder that holds your LoRA files")
    cache_file = None if cache_path is False else Path(cache_path or default_cache_path())
    cache = _read_cache(cache_file)
    files = sorted(p for p in root.rglob("*.safetensors") if p.is_file())
    result = ScanResult()
    for done, path in enumerate(files, 1):
        entry = _scan_file(path, cache, result)
        (result.errors if entry.error else result.entries).append(entry)
        report(on_progress, done, len(files), str(path))
    result.entries.sort(key=lambda e: e.name.lower())
    if cache_file is not None and result.files_read:
        _write_cache(cache_file, cache)
    return result


def _scan_file(path: Path, cache: dict, result: ScanResult) -> LibraryEntry:
    stat = path.stat()
    entry = LibraryEntry(name=path.stem, path=str(path), size=stat.st_size)
    key = str(path.resolve())
    known = cache["files"].get(key)
    if known and known["size"] == stat.st_size and known["mtime_ns"] == stat.st_mtime_ns:
        info = cache["headers"].get(known["sha256"])
    else:
        info = None
    if info is None:
        result.files_read += 1
        try:
            info = read_file_info(path)
        except (SdloraError, OSError) as err:
            entry.error = str(err)
            return entry
        cache["files"][key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": info["sha256"]}
        cache["headers"][info["sha256"]] = info
    if "error" in info:
        entry.error = info["error"]
        return entry
    for name in ("family", "rank", "ranks", "trigger_words", "sha256", "title"):
        setattr(entry, name, info[name])
    if "top_tags" in info:
        entry.top_tags = info["top_tags"]
    else:  # a cache written before top tags were kept apart: its trigger words mixed both in
        entry.trigger_words, entry.top_tags = [], []
    entry.preview = find_preview(path)
    entry.notes = read_notes(path)
    return entry


def read_file_info(path) -> dict:
    """What the library keeps from one file's header (+ the tensor-data hash); raises FormatError."""
    from sdlora.family import detect_family
    from sdlora.header import check_is_lora, read_header, tensor_data_sha256

    header = read_header(path)
    check_is_lora(header)
    shapes = {key: tuple(info.shape) for key, info in header.tensors.items()}
    try:
        family = detect_family(shapes, header.metadata)
    except SdloraError as err:  # another architecture (FLUX, SD3, ...): listed, flagged
        family = f"unsupported: {err}"
    ranks = Counter(shape[0] for key, shape in shapes.items() if key.endswith(_RANK_SUFFIXES) and shape)
    meta = header.metadata
    return {
        "sha256": tensor_data_sha256(path, header.data_offset),
        "family": family,
        "rank": ranks.most_common(1)[0][0] if ranks else None,
        "ranks": sorted(ranks),
        "trigger_words": trigger_words(meta),
        "top_tags": top_tags(meta),
        "title": meta.get("modelspec.title") or meta.get("ss_output_name") or "",
    }


def trigger_words(metadata: dict[str, str]) -> list[str]:
    """The trigger words the LoRA was trained with: `modelspec.trigger_phrase`, split at commas."""
    return [w.strip() for w in metadata.get("modelspec.trigger_phrase", "").split(",") if w.strip()]


def top_tags(metadata: dict[str, str], top: int = TOP_TAGS) -> list[str]:
    """The `top` most frequent training caption tags (`ss_tag_frequency`, summed over folders), trigger
    words left out. They describe the captions, so they are shown as top tags, never as trigger words."""
    counts: Counter = Counter()
    try:
        frequency = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except json.JSONDecodeError:
        frequency = {}
    if isinstance(frequency, dict):
        for tags in frequency.values():
            if isinstance(tags, dict):
                counts.update({str(t).strip(): int(c) for t, c in tags.items() if isinstance(c, int | float)})
    triggers = set(trigger_words(metadata))
    ranked = [tag for tag, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    return [tag for tag in ranked if tag and tag not in triggers][:top]


def find_preview(path) -> str | None:
    """The preview image beside a LoRA file (A1111 naming), or None."""
    path = Path(path)
    stem = path.with_suffix("")
    for suffix in PREVIEW_SUFFIXES:
        candidate = Path(f"{stem}{suffix}")
        if candidate.is_file():
            return str(candidate)
    return None


def notes_path(path) -> Path:
    return Path(path).with_suffix(".json")


def read_notes(path) -> dict:
    """The user notes beside a LoRA (A1111 `<stem>.json`); {} when none. A damaged file gives {} + a log line."""
    sidecar = notes_path(path)
    if not sidecar.is_file():
        return {}
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("%s: unreadable notes file (%s); ignored", sidecar, err)
        return {}
    return data if isinstance(data, dict) else {}


def write_notes(path, notes: dict) -> dict:
    """Update the user notes beside a LoRA (A1111 fields) and return the full notes written.

    Keys not given are kept; a value None removes the key. "preferred weight" must be a number.
    The file is written atomically. Raises ConfigError for a bad value.
    """
    merged = read_notes(path)
    for key, value in notes.items():
        if value is None:
            merged.pop(key, None)
            continue
        if key == "preferred weight":
            from sdlora.blocks import check_strength

            value = check_strength(value, "preferred weight")
        merged[key] = value
    _write_json_atomic(notes_path(path), merged)
    return merged


# ----- cache -----------------------------------------------------------------------------------


def _read_cache(path: Path | None) -> dict:
    empty = {"version": CACHE_VERSION, "files": {}, "headers": {}}
    if path is None or not path.is_file():
        return empty
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        log.warning("%s: library cache unreadable; rebuilding it", path)
        return empty
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return empty
    return data


def _write_cache(path: Path, cache: dict) -> None:
    try:
        _write_json_atomic(path, cache)
    except OSError as err:  # a read-only cache location must not break the scan
        log.warning("%s: could not write the library cache (%s)", path, err)


def _write_json_atomic(path: Path, data: dict) -> None:
    from sdlora.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, fsync=False) as tmp:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")


def entry_dict(entry: LibraryEntry) -> dict:
    """A JSON-friendly dict of an entry (for the web UI and `--json` outputs)."""
    data = asdict(entry)
    data["short_hash"] = entry.short_hash
    return data
