"""Checks for uploaded files: size and type limits, then a copy into an allowed folder.

Gradio already caps the request size (`max_file_size` at launch); these checks run again on the
server side on every file a handler receives, by extension AND by content (a `.safetensors` file
must start with a valid safetensors header, an image must open with Pillow), so a renamed pickle
or an HTML file dressed as a PNG is refused before anything reads it. A refused file is deleted from
gradio's upload folder at once (gradio would keep it until the server stops).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sdlora.suffixes import IMAGE_SUFFIXES
from sdlora_webui.paths import AccessError, safe_filename, unique_path

LORA_SUFFIXES = frozenset({".safetensors"})
CAPTION_SUFFIXES = frozenset({".txt"})
KOHYA_SUFFIXES = frozenset({".json", ".toml"})  # kohya_ss GUI presets, sd-scripts configs
MiB = 1024 * 1024


class UploadError(AccessError):
    """An uploaded file is too big, of a type the app does not take, or not what its name says."""


@dataclass(frozen=True)
class UploadLimits:
    """Per-file size limits in bytes (the defaults suit SD1.x LoRAs and training images)."""

    lora_bytes: int = 1024 * MiB
    image_bytes: int = 20 * MiB
    caption_bytes: int = 64 * 1024
    config_bytes: int = 1 * MiB  # a kohya preset is a few KiB; anything near this is not one

    @property
    def largest(self) -> int:
        return max(self.lora_bytes, self.image_bytes, self.caption_bytes)


def gradio_upload_folder() -> Path:
    """Where gradio stores uploads (the rule of gradio.utils.get_upload_folder, without importing gradio)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def discard_upload(path: Path) -> None:
    """Delete a refused upload, and its per-upload folder when that is left empty, but only inside
    gradio's upload folder: a path given some other way (a test, the API) is never the app's to delete."""
    folder = gradio_upload_folder()
    target = Path(path).absolute()
    if not target.parent.resolve().is_relative_to(folder) or target.is_symlink() or not target.is_file():
        return
    target.unlink(missing_ok=True)
    parent = target.parent
    if parent.resolve() != folder:
        try:
            parent.rmdir()  # gradio puts each upload in a folder of its own; gone when empty
        except OSError:
            pass  # not empty (other files of the same upload): leave it


def _discarded_when_refused(check):
    """Decorate a check so that a refused file is deleted (see `discard_upload`)."""

    @functools.wraps(check)
    def wrapper(path, limits):
        try:
            return check(path, limits)
        except UploadError:
            discard_upload(Path(path))
            raise

    return wrapper


@_discarded_when_refused
def check_lora_upload(path: Path, limits: UploadLimits) -> Path:
    """Refuse anything but a `.safetensors` file within the size limit with a sane header."""
    path = Path(path)
    _check_suffix(path, LORA_SUFFIXES, "a LoRA")
    _check_size(path, limits.lora_bytes)
    _check_safetensors_header(path)
    return path


@_discarded_when_refused
def check_image_upload(path: Path, limits: UploadLimits) -> Path:
    """Refuse anything but a png/jpg/webp/bmp image within the size limit that Pillow can open."""
    path = Path(path)
    _check_suffix(path, IMAGE_SUFFIXES | CAPTION_SUFFIXES, "a training image or caption")
    if path.suffix.lower() in CAPTION_SUFFIXES:
        _check_size(path, limits.caption_bytes)
        return path
    _check_size(path, limits.image_bytes)
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as err:  # Pillow raises many types for bad files; all mean "not an image"
        raise UploadError(f"{_name(path)} is not a readable image ({err})") from err
    return path


@_discarded_when_refused
def check_config_upload(path: Path, limits: UploadLimits) -> Path:
    """Refuse anything but a UTF-8 text `.json`/`.toml` file within the size limit (the importer parses it)."""
    path = Path(path)
    _check_suffix(path, KOHYA_SUFFIXES, "a kohya config")
    _check_size(path, limits.config_bytes)
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UploadError(f"{_name(path)} is not a text file ({err.reason} at byte {err.start})") from err
    return path


def store_upload(path: Path, folder: Path, original_name: str | None = None) -> Path:
    """Copy an already checked upload into `folder` under a safe, unique name; return the copy."""
    folder.mkdir(parents=True, exist_ok=True)
    name = safe_filename(original_name or Path(path).name, default="upload")
    target = unique_path(folder, name)
    tmp = target.with_name(target.name + ".part")
    shutil.copyfile(path, tmp)
    tmp.replace(target)  # atomic: a failed copy never leaves a half file under the real name
    return target


def upload_name(file) -> tuple[Path, str]:
    """(path on disk, name the user gave) for a gradio upload value (a path string or FileData)."""
    if isinstance(file, str | Path):
        return Path(file), Path(file).name
    path = Path(getattr(file, "path", None) or getattr(file, "name", ""))
    return path, getattr(file, "orig_name", None) or path.name


def _check_suffix(path: Path, allowed: frozenset[str], what: str) -> None:
    if path.suffix.lower() not in allowed:
        kinds = ", ".join(sorted(allowed))
        raise UploadError(f"{_name(path)} is not {what}: only {kinds} files are accepted")


def _check_size(path: Path, limit: int) -> None:
    size = path.stat().st_size
    if size > limit:
        raise UploadError(f"{_name(path)} is {size / MiB:.1f} MiB; the limit is {limit / MiB:.1f} MiB")
    if size == 0:
        raise UploadError(f"{_name(path)} is empty")


def _check_safetensors_header(path: Path) -> None:
    """A safetensors file starts with a little-endian u64 header length and a JSON object."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise UploadError(f"{_name(path)} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length < 2 or length > min(size - 8, 100 * MiB):
            raise UploadError(f"{_name(path)} is not a safetensors file (bad header length {length})")
        header = fh.read(length)
    try:
        parsed = json.loads(header)
    except (UnicodeDecodeError, ValueError) as err:
        raise UploadError(f"{_name(path)} is not a safetensors file (header is not JSON)") from err
    if not isinstance(parsed, dict):
        raise UploadError(f"{_name(path)} is not a safetensors file (header is not a JSON object)")


def _name(path: Path) -> str:
    return repr(Path(path).name)
