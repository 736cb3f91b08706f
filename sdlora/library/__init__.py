"""The LoRA library (docs/library.md): `scan` (folders, header cache, notes and side files), `organise`
(filters, tags, favourites, moves with side files) and `dupes` (equal tensor hashes, keep one, the rest to
`.trash/`). Never imports torch. The names most callers use are re-exported here."""

from sdlora.library.scan import (
    CACHE_VERSION,
    NOTE_FIELDS,
    PREVIEW_NAME,
    PREVIEW_SUFFIXES,
    SORT_KEYS,
    TRASH,
    LibraryEntry,
    ScanResult,
    civitai_tags,
    default_cache_path,
    entry_dict,
    file_hash,
    find_preview,
    library_files,
    note_tags,
    notes_path,
    preview_path,
    read_file_info,
    read_notes,
    scan,
    search,
    set_preview,
    stored_hash,
    top_tags,
    trigger_words,
    write_notes,
)

__all__ = [
    "CACHE_VERSION", "NOTE_FIELDS", "PREVIEW_NAME", "PREVIEW_SUFFIXES", "SORT_KEYS", "TRASH", "LibraryEntry",
    "ScanResult", "civitai_tags", "default_cache_path", "entry_dict", "file_hash",
    "find_preview", "library_files", "note_tags", "notes_path", "preview_path",
    "read_file_info", "read_notes", "scan", "search", "set_preview", "stored_hash", "top_tags", "trigger_words",
    "write_notes",
]
