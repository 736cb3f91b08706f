"""Names and folders of downloaded files: a server's name made safe, and a folder template kept inside the
library.

A server chooses the `Content-Disposition` file name, so it is treated as untrusted text: path parts, control
characters and characters Windows refuses are removed, and it is cut to at most 250 UTF-8 bytes (so that the
`.part` name beside it stays within the usual 255-byte limit). A folder template such as `{base_model}/` is
filled with values from Civitai, each made one safe folder name, and the result must lie inside the library.
"""

from __future__ import annotations

import re
import string
import unicodedata
from email.message import Message
from pathlib import Path

from sdlora.errors import ConfigError

MAX_NAME_BYTES = 250  # + ".part" = 255, the file-name limit of common file systems
DEFAULT_TEMPLATE = "{base_model}/"
TEMPLATE_FIELDS = ("base_model", "model_name", "model_id", "version_name", "version_id", "type", "creator")
_UNSAFE = re.compile(r'[<>:"|?*\x00-\x1f\x7f]')


def disposition_name(header: str | None) -> str:
    """The file name in a `Content-Disposition` header (RFC 6266, incl. `filename*=UTF-8''...`); "" if none."""
    if not header:
        return ""
    message = Message()
    message["Content-Disposition"] = header
    try:
        return message.get_filename() or ""
    except (ValueError, LookupError):
        return ""


def clean_name(raw: str, fallback: str = "download.safetensors") -> str:
    """`raw` as one safe file name: no folder parts, no control or reserved characters, no leading dots,
    at most MAX_NAME_BYTES bytes with its suffix kept; `fallback` (a safe name) when nothing is left."""
    name = unicodedata.normalize("NFC", str(raw)).replace("\\", "/").split("/")[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf"))
    name = _UNSAFE.sub("_", name).strip().lstrip(".").rstrip(". ")
    if not name:
        return fallback
    return fit_bytes(name)


def fit_bytes(name: str, limit: int = MAX_NAME_BYTES) -> str:
    """Cut the stem of `name` (on a character boundary) until the name is at most `limit` UTF-8 bytes."""
    if len(name.encode("utf-8")) <= limit:
        return name
    suffix = Path(name).suffix if len(Path(name).suffix.encode("utf-8")) <= 32 else ""
    stem = name[: len(name) - len(suffix)]
    while stem and len((stem + suffix).encode("utf-8")) > limit:
        stem = stem[:-1]
    return stem + suffix


def unique_path(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/<stem>-2<suffix>`, `-3`, ... for the first name not taken."""
    candidate = folder / name
    suffix = Path(name).suffix
    stem = name[: len(name) - len(suffix)]
    number = 2
    while candidate.exists() or candidate.is_symlink():
        candidate = folder / fit_bytes(f"{stem}-{number}{suffix}")
        number += 1
    return candidate


def folder_for(root: Path, template: str, fields: dict) -> Path:
    """The folder `template` names under the library `root`, created; never outside `root`.

    Every `{field}` value becomes one folder name (a "/" in a value cannot add a level); an empty value drops
    its level. Raises ConfigError for an unknown field or a template that would leave the library.
    """
    template = str(template or "")
    if template.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", template):
        raise ConfigError(f"folder template {template!r}: must be relative to the library folder, e.g. {DEFAULT_TEMPLATE}")
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None and name not in TEMPLATE_FIELDS:
            raise ConfigError(f"folder template {template!r}: unknown field {{{name}}}; use "
                              + ", ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS))
    values = {key: _folder_name(fields.get(key)) for key in TEMPLATE_FIELDS}
    parts = [part.strip() for part in re.split(r"[/\\]+", template.format_map(values))]
    if any(part in (".", "..") for part in parts):
        raise ConfigError(f"folder template {template!r}: '.' and '..' are not allowed (downloads stay in the library)")
    root = Path(root).resolve()
    folder = root.joinpath(*[part for part in parts if part])
    folder.mkdir(parents=True, exist_ok=True)
    if not folder.resolve().is_relative_to(root):  # a folder that is a link leading elsewhere
        raise ConfigError(f"folder template {template!r}: {folder} leads outside the library {root}")
    return folder


def _folder_name(value) -> str:
    if value is None:
        return ""
    text = clean_name(str(value).replace("/", "_").replace("\\", "_"), fallback="")
    return "" if text in ("", ".", "..") else text
