"""Look LoRA files up on Civitai by hash and keep what it says beside each file (docs/civitai.md).

For one file: its whole-file SHA-256 (cached by path, size and mtime in `sdlora.filehash`) is asked for at
`/api/v1/model-versions/by-hash/`; when Civitai does not know it and the header holds a tensor-data hash
(`sshs_model_hash`, what Civitai calls AutoV3), that is asked too. A hit writes, beside the LoRA:
- `<stem>.civitai.info`: the version answer, as Civitai Helper keeps it, its `model` completed with the
  model's description and tags (from `/api/v1/models/{id}`);
- `<stem>.json` (A1111's notes): "activation text" from `trainedWords`, "sd version", "description", each only
  where the user left the field empty, so nothing the user wrote (or "preferred weight", "notes") changes;
- `<stem>.preview.png`: the first image allowed by the NSFW setting, unless the LoRA already has a preview.
A miss (404) is remembered for a week (`misses`).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from sdlora.atomic import atomic_path
from sdlora.civitai.client import CivitaiClient
from sdlora.civitai.errors import CivitaiError, NotOnCivitai, Offline, TokenNeeded
from sdlora.civitai.info import info_path, summary
from sdlora.civitai.misses import MissMemory
from sdlora.civitai.settings import NSFW_LEVELS
from sdlora.errors import ConfigError, FormatError, SdloraError
from sdlora.filehash import FileHashCache, autov2
from sdlora.header import read_header
from sdlora.library import find_preview, read_notes, set_preview, stored_hash, write_notes
from sdlora.progress import report

log = logging.getLogger(__name__)

MAX_REQUESTS = 4  # a scan's requests in flight at once (Civitai rate-limits bursts)
# Civitai's older `nsfw` image labels, as levels (docs/civitai.md §Images)
_NSFW_LABELS = {"none": 1, "soft": 2, "mature": 4, "x": 8}
FOUND, MISS, REMEMBERED, SKIPPED, FAILED = "found", "not on Civitai", "not on Civitai (remembered)", "skipped", "failed"


@dataclass
class LookupResult:
    path: str
    status: str             # FOUND, MISS, REMEMBERED, SKIPPED or FAILED
    message: str = ""
    version: dict | None = None


def lookup_file(path, client: CivitaiClient, hashes: FileHashCache, misses: MissMemory,
                refresh: bool = False) -> LookupResult:
    """Look one LoRA file up and write what was found beside it. Raises Offline/TokenNeeded (they would
    fail every other file too); any other failure is the result's FAILED status.

    A miss is remembered under the whole-file SHA-256 (every hash of the file was asked), so a file Civitai
    did not know is not even opened again for a week: its hash comes from the cache."""
    path = Path(path)
    try:
        sha256 = hashes.sha256(path)
        day = None if refresh else misses.missed_on(sha256)
        if day is not None:
            return LookupResult(str(path), REMEMBERED, f"Civitai did not know it on {day.isoformat()}; --refresh "
                                                      "asks again")
        for file_hash in _candidates(path, sha256):
            try:
                version = client.version_by_hash(file_hash)
            except NotOnCivitai:
                continue
            misses.forget(sha256)
            save_version(path, version, client)
            name = summary(version)
            return LookupResult(str(path), FOUND, f"{name['model_name']} {name['version_name']}".strip(), version)
    except (Offline, TokenNeeded):
        raise
    except (SdloraError, OSError) as err:
        return LookupResult(str(path), FAILED, str(err))
    misses.add(sha256)
    return LookupResult(str(path), MISS, f"hash {autov2(sha256)} is not on Civitai")


def _candidates(path: Path, sha256: str):
    """The hashes to ask for, in order; the header is read only when the whole-file hash missed."""
    yield sha256
    yield from tensor_hash(path, sha256)


def tensor_hash(path: Path, sha256: str) -> list[str]:
    """[the header's tensor-data hash (`sshs_model_hash`, Civitai's AutoV3)] when it holds one, else []."""
    try:
        found = stored_hash(read_header(path).metadata)
    except FormatError:
        return []  # not a readable safetensors file: the whole-file hash still names it
    return [found] if found and found != sha256 else []


def save_version(path: Path, version: dict, client: CivitaiClient) -> list[str]:
    """Write `<stem>.civitai.info`, fill `<stem>.json` and fetch a preview for a found version; returns
    notes on what could not be done (a missing preview never fails the lookup)."""
    problems = []
    version = complete_model(version, client)
    with atomic_path(info_path(path), fsync=False) as tmp:
        tmp.write_text(json.dumps(version, indent=1, ensure_ascii=False), encoding="utf-8")
    merge_notes(path, version)
    if find_preview(path) is None:
        try:
            fetch_preview(path, version, client)
        except (CivitaiError, FormatError, OSError) as err:
            problems.append(f"no preview: {err}")
            log.info("%s: %s", path.name, problems[-1])
    return problems


def complete_model(version: dict, client: CivitaiClient) -> dict:
    """The version with its `model` given the model's description and tags (a version answer lacks them)."""
    model_id = version.get("modelId")
    if not isinstance(model_id, int):
        return version
    try:
        model = client.model(model_id)
    except (NotOnCivitai, CivitaiError) as err:
        log.info("model %s: %s", model_id, err)
        return version
    merged = dict(version)
    merged["model"] = {**(version.get("model") or {}), "description": model.get("description"),
                       "tags": model.get("tags") or []}
    return merged


def merge_notes(path: Path, version: dict) -> dict:
    """Fill A1111's `<stem>.json` from a version, only where the user's field is empty or missing."""
    found = summary(version)
    description = plain_text(version.get("description") or (version.get("model") or {}).get("description") or "")
    offered = {"activation text": ", ".join(found["trained_words"]), "sd version": sd_version(found["base_model"]),
               "description": description}
    notes = read_notes(path)
    updates = {key: value for key, value in offered.items() if value and not str(notes.get(key) or "").strip()}
    return write_notes(path, updates) if updates else notes


def sd_version(base_model: str) -> str:
    """Civitai's base model as A1111's "sd version" (SD1, SD2, SDXL or Unknown)."""
    text = base_model.lower()
    if text.startswith("sd 1"):
        return "SD1"
    if text.startswith("sd 2"):
        return "SD2"
    if text.startswith("sdxl") or text in ("pony", "illustrious", "noobai"):  # the last three are SDXL models
        return "SDXL"
    return "Unknown" if base_model else ""


def fetch_preview(path: Path, version: dict, client: CivitaiClient) -> Path | None:
    """Save the first image the NSFW setting allows as `<stem>.preview.png`; None when none is allowed."""
    from PIL import Image, UnidentifiedImageError

    url = first_allowed_image(version.get("images") or [], client.settings.nsfw)
    if url is None:
        return None
    blob = client.get_bytes(url, f"preview of {path.name}")
    try:
        picture = Image.open(io.BytesIO(blob))
        picture.load()
    except (OSError, UnidentifiedImageError) as err:
        raise FormatError(f"the preview image of {path.name} is not an image ({err})") from None
    return set_preview(path, picture)


def first_allowed_image(images: list, nsfw: str) -> str | None:
    """The URL of the first still image at or under the `nsfw` level; an image without a level is not shown."""
    limit = NSFW_LEVELS[nsfw]
    for image in images:
        if not isinstance(image, dict) or image.get("type", "image") != "image" or not image.get("url"):
            continue
        level = image.get("nsfwLevel")
        if not isinstance(level, int):
            label = image.get("nsfw")
            level = _NSFW_LABELS.get(str(label).lower()) if isinstance(label, str) else (1 if label is False else None)
        if isinstance(level, int) and 0 < level <= limit:
            return str(image["url"])
    return None


def plain_text(html: str) -> str:
    """Civitai's descriptions are HTML; A1111's notes hold text."""
    parser = _Text()
    parser.feed(str(html))
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    return "\n".join(line for line in lines if line)


class _Text(HTMLParser):
    BREAKS = frozenset({"p", "br", "li", "div", "h1", "h2", "h3", "h4", "tr"})

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.BREAKS:
            self.parts.append("\n")

    def handle_data(self, data):
        self.parts.append(data)


def scan(folder, client: CivitaiClient, hashes: FileHashCache, misses: MissMemory, *, refresh: bool = False,  # noqa: PLR0913 - keyword-only options
         on_progress: Callable | None = None, workers: int = MAX_REQUESTS) -> list[LookupResult]:
    """Look up every `.safetensors` under `folder` with at most `workers` requests at a time.

    A file that already has a `<stem>.civitai.info` is skipped unless `refresh`: each result is written as it
    arrives, so a scan cut short goes on where it stopped when run again. Raises Offline or TokenNeeded (the
    other requests would fail the same way); the hash cache and the miss list are saved either way.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder; give the folder that holds your LoRA files")
    if not 1 <= workers <= MAX_REQUESTS:
        raise ConfigError(f"{workers} requests at a time: use 1 to {MAX_REQUESTS}")
    files = sorted(p for p in root.rglob("*.safetensors") if p.is_file())
    results = [LookupResult(str(p), SKIPPED, "has Civitai info") for p in files if not refresh and info_path(p).is_file()]
    todo = [p for p in files if refresh or not info_path(p).is_file()]
    done = len(results)
    report(on_progress, done, len(files), "")
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="civitai")
    try:
        futures = [pool.submit(lookup_file, p, client, hashes, misses, refresh) for p in todo]
        for future in as_completed(futures):
            results.append(future.result())
            done += 1
            report(on_progress, done, len(files), Path(results[-1].path).name)
            if done % 50 == 0:  # a scan cut short keeps the hashes it computed and the misses it heard
                hashes.save()
                misses.save()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        hashes.save()
        misses.save()
    return sorted(results, key=lambda r: r.path)
