"""Download a LoRA by Civitai URL, model id, version id or plain https URL into the library (docs/civitai.md).

The bytes go to `<name>.part` in the target folder; a connection cut while they arrive is resumed with an HTTP
`Range` request (and so is a later call after a cancel). Then, in order: a web page (HTML) where a file was
expected is refused; the SHA-256 of the bytes must equal the one Civitai lists in `files[].hashes` (a mismatch
keeps nothing); the file is renamed atomically to its cleaned `Content-Disposition` name (made unique) in the
folder the template names; sdlora's loader must read it as a LoRA (a pickle or a full checkpoint is refused
and removed); last, the Civitai info and preview are written beside it (`lookup.save_version`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from sdlora.civitai.client import CivitaiClient, where
from sdlora.civitai.errors import CivitaiError, HashMismatch, Offline
from sdlora.civitai.lookup import save_version
from sdlora.civitai.names import DEFAULT_TEMPLATE, clean_name, disposition_name, folder_for, unique_path
from sdlora.errors import ConfigError, FormatError, Interrupted
from sdlora.filehash import FileHashCache
from sdlora.progress import Cancel, Progress, cancelled
from sdlora.suffixes import PICKLE_SUFFIXES

log = logging.getLogger(__name__)

RESUMES = 5  # connection cuts resumed within one download before giving up (the .part stays)
PART = ".part"


@dataclass
class DownloadProgress(Progress):
    """`done` and `total` in bytes (total 0 while unknown), `speed` in bytes/s, `eta` in seconds (None: unknown)."""

    speed: float = 0.0
    eta: float | None = None


@dataclass
class Source:
    """What to download: the file URL, a name for it, the SHA-256 to check and the Civitai version (if any)."""

    url: str
    name: str
    sha256: str = ""
    version: dict | None = None
    fields: dict = field(default_factory=dict)  # folder template values


@dataclass
class Downloaded:
    path: Path
    sha256: str
    version: dict | None
    notes: list[str] = field(default_factory=list)  # what went wrong after the file was in place (no preview)


def parse_target(text: str, client: CivitaiClient) -> tuple[str, object]:
    """("version", id), ("model", id) or ("url", url) for what the user typed.

    A bare number is a version id (what a Civitai download link carries); `model:N` a model id (its newest
    version); `version:N` a version id. A Civitai page or download URL (on civitai.com or the configured
    host) names its model or version; any other https URL is a plain file (plain http only on the configured
    host, which the person running sdlora chose).
    """
    text = str(text or "").strip()
    if not text:
        raise ConfigError("nothing to download: give a Civitai URL, a version id, model:ID or an https URL")
    if text.isdigit():
        return "version", int(text)
    prefixed = re.fullmatch(r"(model|version):\s*(\d+)", text, re.IGNORECASE)
    if prefixed:
        return prefixed.group(1).lower(), int(prefixed.group(2))
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{text!r}: not a URL or an id; give a Civitai URL, a version id, model:ID or an https URL")
    host = parts.netloc.lower()
    if host in (client.settings.host, "civitai.com") or host.endswith(".civitai.com"):
        named = _civitai_page(parts)
        if named is not None:
            return named
    if parts.scheme != "https" and host != client.settings.host:  # the configured host: a mirror, a test server
        raise ConfigError(f"{where(text)}: plain http is not downloaded (anyone on the way could change the file); "
                          "use an https URL")
    return "url", text


def _civitai_page(parts) -> tuple[str, int] | None:
    query = parse_qs(parts.query)
    version = query.get("modelVersionId", [""])[0]
    path = parts.path
    if match := re.match(r"^/api/download/models/(\d+)", path):
        return "version", int(match.group(1))
    if match := re.match(r"^/api/v1/model-versions/(\d+)", path):
        return "version", int(match.group(1))
    if match := re.match(r"^/models/(\d+)", path):
        return ("version", int(version)) if version.isdigit() else ("model", int(match.group(1)))
    return None


def resolve_source(text: str, client: CivitaiClient) -> Source:
    """The file to fetch for `text` (asks Civitai for a model or version first)."""
    kind, value = parse_target(text, client)
    if kind == "url":
        name = clean_name(urlsplit(str(value)).path.rsplit("/", 1)[-1])
        return Source(url=str(value), name=name)
    if kind == "model":
        versions = client.model(int(value)).get("modelVersions") or []
        if not versions or not isinstance(versions[0], dict) or not isinstance(versions[0].get("id"), int):
            raise CivitaiError(f"model {value}: Civitai lists no version of it to download")
        value = versions[0]["id"]  # Civitai lists the newest version first
    version = client.version(int(value))
    return source_of_version(version)


def source_of_version(version: dict) -> Source:
    """The version's model file: the primary one, a .safetensors file before a pickled one."""
    files = [f for f in version.get("files") or [] if isinstance(f, dict) and f.get("downloadUrl")]
    models = [f for f in files if f.get("type", "Model") == "Model"] or files
    safe = [f for f in models if not str(f.get("name", "")).lower().endswith(PICKLE_SUFFIXES)
            and (f.get("metadata") or {}).get("format", "SafeTensor") == "SafeTensor"]
    if not safe:
        what = f"model version {version.get('id')}"
        if models:
            raise FormatError(f"{what}: only a pickled file ({models[0].get('name')}) is offered; sdlora downloads "
                              ".safetensors files only (a pickle can run code when loaded)")
        raise CivitaiError(f"{what}: Civitai lists no file to download")
    chosen = next((f for f in safe if f.get("primary")), safe[0])
    model = version.get("model") if isinstance(version.get("model"), dict) else {}
    creator = (model.get("creator") or {}) if isinstance(model.get("creator"), dict) else {}
    fields = {"base_model": version.get("baseModel"), "model_name": model.get("name"), "model_id": version.get("modelId"),
              "version_name": version.get("name"), "version_id": version.get("id"), "type": model.get("type"),
              "creator": creator.get("username")}
    sha = str((chosen.get("hashes") or {}).get("SHA256") or "").lower()
    return Source(url=str(chosen["downloadUrl"]), name=clean_name(str(chosen.get("name") or "")), sha256=sha,
                  version=version, fields=fields)


def download(text: str, library: str | os.PathLike, client: CivitaiClient, *, template: str = DEFAULT_TEMPLATE,  # noqa: PLR0913 - keyword-only options
             hashes: FileHashCache | None = None, cancel: Cancel = None,
             on_progress: Callable[[DownloadProgress], None] | None = None, fetch_info: bool = True,
             lookup_by_hash: bool = True) -> Downloaded:
    """Download what `text` names into the library folder `library` (see the module text for the steps).

    With `fetch_info`, the version's info and preview are written beside the file; for a plain URL (no
    version known) the file's SHA-256 is looked up on Civitai first, unless `lookup_by_hash` is False.

    Raises ConfigError (bad input, template), the `sdlora.civitai.errors` types, FormatError (not a LoRA,
    removed) and Interrupted (cancelled: the `.part` stays and a later call resumes it).
    """
    root = Path(library)
    if not root.is_dir():
        raise ConfigError(f"{root}: the library folder does not exist")
    source = resolve_source(text, client)
    folder = folder_for(root, template, source.fields)
    part = folder / (source.name + PART)
    digest, served_name = fetch(source, part, client, cancel, on_progress)
    check_bytes(part, digest, source)
    target = place(part, folder, served_name or source.name)
    validate(target)
    if hashes is not None:
        hashes.remember(target, digest)
    result = Downloaded(target, digest, source.version)
    if fetch_info:
        try:
            if result.version is None and lookup_by_hash:
                result.version = client.version_by_hash(digest)
            if result.version is not None:
                result.notes += save_version(target, result.version, client)
        except (CivitaiError, OSError) as err:  # the file is in place and valid: only its info is missing
            result.notes.append(f"no Civitai info: {err}")
    return result


def fetch(source: Source, part: Path, client: CivitaiClient, cancel, on_progress) -> tuple[str, str]:
    """Stream `source.url` into `part`, resuming what is there; returns (SHA-256, the server's file name)."""
    meter = _Meter(on_progress, source.name)
    for attempt in range(RESUMES + 1):
        digest = _digest_of(part)
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with client.stream(source.url, f"download of {source.name}", headers=headers, accept=(416,)) as response:
                served = clean_name(disposition_name(response.headers.get("Content-Disposition")), fallback="")
                if response.status_code == 416:  # the part is already whole
                    return digest.hexdigest(), served
                if offset and response.status_code != 206:  # the server ignored the Range: start again
                    offset, digest = 0, hashlib.sha256()
                length = int(response.headers.get("Content-Length") or 0)
                meter.start(offset, offset + length if length else 0)
                with open(part, "ab" if offset else "wb") as handle:
                    for chunk in response.iter_bytes():  # as they arrive: a cut loses nothing received
                        if cancelled(cancel):
                            raise Interrupted(f"download of {source.name} cancelled; {part.name} is kept, download "
                                              "again to resume")
                        handle.write(chunk)
                        digest.update(chunk)
                        meter.add(len(chunk))
                return digest.hexdigest(), served
        except (httpx.TransportError, httpx.StreamError) as err:
            if attempt == RESUMES:
                raise Offline(f"download of {source.name}: the connection kept breaking ({type(err).__name__}); "
                              f"{part.name} is kept, download again to resume") from None
            log.info("download of %s cut at %d bytes (%s); resuming", source.name, part.stat().st_size, type(err).__name__)
    raise AssertionError("unreachable")


def _digest_of(part: Path):
    digest = hashlib.sha256()
    if part.exists():
        with open(part, "rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
    return digest


def check_bytes(part: Path, digest: str, source: Source) -> None:
    """Refuse a web page saved as a file, and bytes whose SHA-256 is not Civitai's; the part is removed."""
    with open(part, "rb") as handle:
        head = handle.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        part.unlink()
        raise FormatError(f"download of {source.name}: the server sent a web page, not a model file (an expired "
                          "link, a login page or an error); nothing was kept")
    if source.sha256 and digest != source.sha256:
        part.unlink()
        raise HashMismatch(f"download of {source.name}: SHA-256 {digest[:10].upper()} is not the {source.sha256[:10].upper()} "
                           "Civitai lists; the file was damaged or changed on the way, nothing was kept")


def place(part: Path, folder: Path, name: str) -> Path:
    """Rename the finished part to its final name (`.safetensors` added when missing), never over a file."""
    name = clean_name(name, fallback="download.safetensors")
    if not name.lower().endswith((".safetensors", *PICKLE_SUFFIXES)):
        name = clean_name(name + ".safetensors")
    target = unique_path(folder, name)
    os.replace(part, target)
    return target


def validate(target: Path) -> None:
    """sdlora's loader must read the file as a LoRA; otherwise it is removed and the reason raised."""
    import sdlora  # the loader imports torch: only once a file is here

    try:
        sdlora.load_lora(target)
    except FormatError as err:
        target.unlink(missing_ok=True)
        raise FormatError(f"{err} (the download was removed)") from None


class _Meter:
    """Bytes, speed and time left for `on_progress`, at most ~4 reports a second (and the last one)."""

    def __init__(self, on_progress, name: str):
        self.on_progress, self.name = on_progress, name
        self.done = self.total = self.first = 0
        self.began = self.last = 0.0

    def start(self, done: int, total: int) -> None:
        self.done, self.first, self.total = done, done, total
        self.began = self.last = time.monotonic()
        self._report(force=True)

    def add(self, count: int) -> None:
        self.done += count
        self._report(force=self.total and self.done >= self.total)

    def _report(self, force: bool) -> None:
        now = time.monotonic()
        if self.on_progress is None or (not force and now - self.last < 0.25):
            return
        self.last = now
        speed = (self.done - self.first) / (now - self.began) if now > self.began else 0.0
        eta = (self.total - self.done) / speed if speed > 0 and self.total else None
        self.on_progress(DownloadProgress(self.done, self.total, self.name, speed=speed, eta=eta))
