"""LoRA library scan: one or several folder trees of LoRA files, with a header cache. Never imports torch.

Per file: name (file stem, as A1111 shows it), family, rank, trigger words (`modelspec.trigger_phrase`,
which sdlora's trainer writes from `data.trigger`), top tags (the most frequent `ss_tag_frequency` caption
tags: what the captions said most, not words the LoRA needs), a preview image beside it (same stem, .png/.jpg/
.jpeg/.webp, or A1111's `<stem>.preview.png`), user notes from a same-stem `.json` (A1111 fields:
"activation text", "preferred weight", "notes", "description", ...), and the tensor-data hash whose
first 12 hex characters A1111 prints as `Lora hashes` (docs/formats.md §2.11).

A scan reads safetensors headers only: the hash is taken from `sshs_model_hash` when the header holds
it (as A1111 does); otherwise `file_hash` computes it on demand (it reads the whole file) and caches it.
The cache (JSON) maps each path to (size, mtime) and what was read from its header, plus the hash once
known, so a rescan of an unchanged folder reads no file at all. A damaged file is reported in the scan
result; the scan goes on. Files under a root's `.trash/` folder (where `sdlora.library.dupes` puts the copies
a user did not keep) are not listed.

Organising data (docs/library.md): `tags` (the user's own from `<stem>.json` "tags", plus Civitai's from
`<stem>.civitai.info`), `favourite` ("favourite" in `<stem>.json`), `base_model` (Civitai's `baseModel` when a
`.civitai.info` is there, else the header's family), `folder` (the file's folder relative to its root).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sdlora.arch.blocks import check_strength
from sdlora.arch.family import describe_family
from sdlora.atomic import atomic_path
from sdlora.civitai.info import info_path, read_info
from sdlora.errors import ConfigError, SdloraError
from sdlora.header import check_is_lora, read_header, tensor_data_sha256
from sdlora.progress import report
from sdlora.suffixes import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

CACHE_VERSION = 4  # 4: the embedded family named; 3: keyed by absolute path, links not followed; 2: header info
# per file, the hash optional
# A1111 looks for `<stem>.preview.<ext>` first, then `<stem>.<ext>`
PREVIEW_SUFFIXES = tuple(f".preview{s}" for s in sorted(IMAGE_SUFFIXES)) + tuple(sorted(IMAGE_SUFFIXES))
PREVIEW_NAME = ".preview.png"  # what set_preview writes (A1111 looks for it first)
PREVIEW_MAX_SIDE = 512  # A1111's cards are about 256 px wide; 512 stays sharp on a dense screen
SORT_KEYS = ("name", "date", "size")
TRASH = ".trash"  # where duplicates a user did not keep are moved, in each library root
NOTE_FIELDS = ("activation text", "preferred weight", "notes", "description", "sd version", "negative text")
TOP_TAGS = 5
_RANK_SUFFIXES = (".lora_down.weight", ".lora_A.weight", ".hada_w1_b", ".lokr_w1_b", ".lokr_w2_b")


@dataclass
class LibraryEntry:
    """One LoRA file of the library (`error` is set, and the rest mostly empty, for a damaged file)."""

    name: str
    path: str
    size: int = 0
    mtime: float = 0.0  # seconds since the epoch (sort by date)
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
    root: str = ""    # the library root the file was found under
    folder: str = ""  # its folder relative to that root ("" at the root; "/" separated)
    tags: list[str] = field(default_factory=list)  # the user's tags, then Civitai's (no repeats)
    base_model: str = ""  # Civitai's base model ("SD 1.5", "SDXL 1.0", "Pony", ...), else the family
    favourite: bool = False

    @property
    def short_hash(self) -> str:
        """First 12 hex characters of the tensor-data SHA-256 (A1111 `Lora hashes`); "" while not known."""
        return self.sha256[:12]

    def search_text(self) -> str:
        """What a library search looks in: name, title, trigger words, top tags and the notes' values, lower case."""
        notes = " ".join(str(v) for v in self.notes.values())
        return " ".join([self.name, self.title, self.folder, self.base_model, *self.trigger_words, *self.top_tags,
                         *self.tags, notes]).lower()


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


def scan(folder, cache_path=None, on_progress: Callable | None = None,
         keep: Callable[[Path], bool] | None = None) -> ScanResult:
    """Scan `folder` (recursively) for `.safetensors` LoRAs.

    Args:
        folder: the LoRA folder, or a list of library roots (scanned in order).
        cache_path: the JSON header cache (default: ~/.cache/sdlora/library-cache.json); it is
            updated atomically after the scan. Pass False to use no cache.
        on_progress: called with `Progress(done, total, path)` per file.
        keep: which files to scan at all (default: every `.safetensors` file); the web UI leaves out files
            that link outside its allowed folders, whose header it must not read.

    Raises:
        ConfigError: `folder` is not a folder. Damaged files do not raise; they are in `.errors`.
    """
    roots = [Path(f) for f in folder] if isinstance(folder, list | tuple) else [Path(folder)]
    for root in roots:
        if not root.is_dir():
            raise ConfigError(f"{root}: not a folder; give the folder that holds your LoRA files")
    cache_file = None if cache_path is False else Path(cache_path or default_cache_path())
    cache = _read_cache(cache_file)
    files = [(root, path, names) for root in roots for path, names in _walk(root) if keep is None or keep(path)]
    result = ScanResult()
    for done, (root, path, names) in enumerate(files, 1):
        try:
            entry = _scan_file(path, cache, result, names)
        except OSError:  # gone since the listing, or a link to nothing: not a file to list
            continue
        entry.root, entry.folder = str(root), path.parent.relative_to(root).as_posix().strip(".")
        (result.errors if entry.error else result.entries).append(entry)
        report(on_progress, done, len(files), str(path))
    result.entries.sort(key=lambda e: e.name.lower())
    if cache_file is not None and result.files_read:
        _write_cache(cache_file, cache)
    return result


def library_files(root: Path) -> list[Path]:
    """The `.safetensors` files under `root`, sorted, those in its `.trash/` folder left out."""
    return [path for path, _ in _walk(Path(root))]


def _walk(root: Path) -> list[tuple[Path, set[str]]]:
    """(file, the names in its folder) of every `.safetensors` file under `root` but in `root/.trash/`, sorted by
    path. The names let a scan find side files without one file-system call per candidate name (a warm scan of
    1,000 files is mostly such look-ups: benchmarks/library.py)."""
    found = []
    for folder, subfolders, files in os.walk(root):
        if Path(folder) == root and TRASH in subfolders:
            subfolders.remove(TRASH)
        names = set(files)
        found += [(Path(folder) / name, names) for name in files if name.endswith(".safetensors")]
    return sorted(found, key=lambda item: item[0])


def _scan_file(path: Path, cache: dict, result: ScanResult, names: set[str] | None = None) -> LibraryEntry:
    stat = path.stat()
    entry = LibraryEntry(name=path.stem, path=str(path), size=stat.st_size, mtime=stat.st_mtime)
    known = _cached(cache, path, stat)
    if known is None:
        result.files_read += 1
        try:
            info = read_file_info(path)
        except (SdloraError, OSError) as err:
            entry.error = str(err)
            return entry
        known = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "info": info}
        cache["files"][_key(path)] = known
    info = known["info"]
    for name in ("family", "rank", "ranks", "trigger_words", "title"):
        setattr(entry, name, info[name])
    entry.sha256 = info["sha256"] or known.get("sha256", "")
    if "top_tags" in info:
        entry.top_tags = info["top_tags"]
    else:  # a cache written before top tags were kept apart: its trigger words mixed both in
        entry.trigger_words, entry.top_tags = [], []
    entry.preview = find_preview(path, names)
    entry.notes = read_notes(path) if names is None or notes_path(path).name in names else {}
    civitai = (read_info(path) or {}) if names is None or info_path(path).name in names else {}
    entry.tags = _unique([*note_tags(entry.notes), *civitai_tags(civitai)])
    entry.favourite = entry.notes.get("favourite") is True
    entry.base_model = str(civitai.get("baseModel") or "") or (entry.family or "").split(":")[0]
    return entry


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(item for item in items if item))


def note_tags(notes: dict) -> list[str]:
    """The user's tags in a notes dict ("tags": a list of strings, or one comma-separated string)."""
    tags = notes.get("tags")
    if isinstance(tags, str):
        tags = tags.split(",")
    if not isinstance(tags, list):
        return []
    return _unique([tag.strip() for tag in tags if isinstance(tag, str)])


def civitai_tags(info: dict) -> list[str]:
    """Civitai's tags in a `.civitai.info` (`sdlora.civitai.info`): `tags` or `model.tags` (strings, or objects
    with a "name", as Civitai's model answers give them)."""
    model = info.get("model") if isinstance(info.get("model"), dict) else {}
    found = []
    for tags in (info.get("tags"), model.get("tags")):
        for tag in tags if isinstance(tags, list) else []:
            name = tag.get("name") if isinstance(tag, dict) else tag
            if isinstance(name, str) and name.strip():
                found.append(name.strip())
    return _unique(found)


def _key(path: Path) -> str:
    """A file's cache key: its absolute path (links not followed: size and mtime are the target's anyway)."""
    return os.path.abspath(path)


def _cached(cache: dict, path: Path, stat) -> dict | None:
    """The cache record of `path` when its size and mtime are unchanged, else None."""
    known = cache["files"].get(_key(path))
    if known and known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
        return known
    return None


def read_file_info(path) -> dict:
    """What the library keeps from one file's header (the hash only when the header holds it); raises
    FormatError."""
    header = read_header(path)
    check_is_lora(header)
    shapes = {key: tuple(info.shape) for key, info in header.tensors.items()}
    try:
        family = describe_family(shapes, header.metadata)
    except SdloraError as err:  # another architecture (FLUX, SD3, ...): listed, flagged
        family = f"unsupported: {err}"
    ranks = Counter(shape[0] for key, shape in shapes.items() if key.endswith(_RANK_SUFFIXES) and shape)
    meta = header.metadata
    return {
        "sha256": stored_hash(meta),
        "family": family,
        "rank": ranks.most_common(1)[0][0] if ranks else None,
        "ranks": sorted(ranks),
        "trigger_words": trigger_words(meta),
        "top_tags": top_tags(meta),
        "title": meta.get("modelspec.title") or meta.get("ss_output_name") or "",
    }


def stored_hash(metadata: dict[str, str]) -> str:
    """The tensor-data SHA-256 a writer stored in the header (`sshs_model_hash`), or "" when absent or not
    a SHA-256 (a few tools write other things there)."""
    value = str(metadata.get("sshs_model_hash", "")).strip().lower()
    return value if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else ""


def file_hash(entry: LibraryEntry, cache_path=None) -> str:
    """The entry's tensor-data SHA-256, computed when the header did not hold it (this reads the whole
    file) and kept in the cache by (path, size, mtime); also set on `entry`. Raises OSError when the
    file cannot be read."""
    if entry.sha256:
        return entry.sha256

    path = Path(entry.path)
    stat = path.stat()
    entry.sha256 = tensor_data_sha256(path)
    cache_file = None if cache_path is False else Path(cache_path or default_cache_path())
    cache = _read_cache(cache_file)
    known = _cached(cache, path, stat)
    if cache_file is not None and known is not None:  # a file not scanned yet is not cached half-way
        known["sha256"] = entry.sha256
        _write_cache(cache_file, cache)
    return entry.sha256


def search(entries, query: str = "", sort: str = "name") -> list[LibraryEntry]:
    """The entries whose name, title, trigger words, top tags or notes contain every word of `query` (any case),
    sorted by `sort`: "name" (A-Z), "date" (newest first) or "size" (largest first)."""
    if sort not in SORT_KEYS:
        raise ConfigError(f"sort {sort!r}: use one of {', '.join(SORT_KEYS)}")
    words = (query or "").lower().split()
    found = [e for e in entries if all(word in e.search_text() for word in words)]
    by_name = sorted(found, key=lambda e: (e.name.lower(), e.path))
    if sort == "date":
        return sorted(by_name, key=lambda e: -e.mtime)  # stable: equal dates stay in name order
    if sort == "size":
        return sorted(by_name, key=lambda e: -e.size)
    return by_name


def preview_path(lora_path) -> Path:
    """Where set_preview writes the preview of a LoRA file: A1111's `<stem>.preview.png`."""
    path = Path(lora_path)
    return path.with_name(path.stem + PREVIEW_NAME)


def set_preview(lora_path, image, max_side: int = PREVIEW_MAX_SIDE) -> Path:
    """Make `image` (a file path or a PIL image) the preview of the LoRA at `lora_path`.

    Writes `<stem>.preview.png` beside it, atomically (a reader never sees half a file), downscaled so
    that its longer side is at most `max_side`. Returns the preview path. Raises ConfigError when the
    LoRA file does not exist, FormatError when the image cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    from sdlora.atomic import atomic_path
    from sdlora.errors import FormatError

    lora_path = Path(lora_path)
    if not lora_path.is_file():
        raise ConfigError(f"{lora_path}: no such LoRA file; pick a LoRA of the library")
    try:
        picture = image if isinstance(image, Image.Image) else Image.open(image)
        picture.load()
    except (OSError, UnidentifiedImageError) as err:
        raise FormatError(f"{image}: not an image sdlora can read ({err}); use a PNG, JPEG or WebP") from err
    picture = picture.convert("RGBA" if "A" in picture.getbands() else "RGB")
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)  # keeps the aspect; never enlarges
    target = preview_path(lora_path)
    with atomic_path(target, fsync=False) as tmp:
        picture.save(tmp, format="PNG")
    return target


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


def find_preview(path, names: set[str] | None = None) -> str | None:
    """The preview image beside a LoRA file (A1111 naming), or None; `names`: the folder's file names when
    known (no file-system call then)."""
    path = Path(path)
    stem = path.with_suffix("")
    for suffix in PREVIEW_SUFFIXES:
        candidate = Path(f"{stem}{suffix}")
        if candidate.name in names if names is not None else candidate.is_file():
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
            value = check_strength(value, "preferred weight")
        merged[key] = value
    _write_json_atomic(notes_path(path), merged)
    return merged


# ----- cache -----------------------------------------------------------------------------------


def _read_cache(path: Path | None) -> dict:
    empty = {"version": CACHE_VERSION, "files": {}}
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, fsync=False) as tmp:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")


def entry_dict(entry: LibraryEntry) -> dict:
    """A JSON-friendly dict of an entry (`sdlora library list --json`)."""
    data = asdict(entry)
    data["short_hash"] = entry.short_hash
    return data
