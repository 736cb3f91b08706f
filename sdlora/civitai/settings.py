"""Where sdlora talks to Civitai and as whom: base URL, API token, offline switch, NSFW level, consent.

Each value comes from the first of: a command-line flag, an environment variable (`SDLORA_CIVITAI_URL`,
`CIVITAI_API_TOKEN`, `SDLORA_OFFLINE`), the user settings file (`$XDG_CONFIG_HOME/sdlora/civitai.json`, written
readable by its owner only, 0600), the default. The token is kept out of `repr`, logs and error messages.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from sdlora.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_URL = "https://civitai.com"
DEFAULT_TIMEOUT = 30.0  # seconds without a byte before a request is given up (then retried)
# Civitai's image levels are flags 1, 2, 4, 8, 16 (docs/civitai.md §Images); a setting allows up to one of them
NSFW_LEVELS = {"pg": 1, "pg13": 2, "r": 4, "x": 8, "xxx": 16}
DEFAULT_NSFW = "pg"
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class CivitaiSettings:
    base_url: str = DEFAULT_URL
    token: str = field(default="", repr=False)  # never shown
    offline: bool = False
    timeout: float = DEFAULT_TIMEOUT
    nsfw: str = DEFAULT_NSFW  # the highest image level a preview may have

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc.lower()

    def api(self, path: str) -> str:
        return f"{self.base_url}/api/v1/{path.lstrip('/')}"


def settings_path() -> Path:
    root = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(root) / "sdlora" / "civitai.json"


def load_settings(*, url: str | None = None, token: str | None = None, offline: bool | None = None,
                  timeout: float | None = None, nsfw: str | None = None) -> CivitaiSettings:
    """The settings from flags (the arguments), then the environment, then the user settings file."""
    stored = read_user_settings()
    env_offline = os.environ.get("SDLORA_OFFLINE", "").strip().lower() in _TRUE
    settings = CivitaiSettings(
        base_url=check_url(url or os.environ.get("SDLORA_CIVITAI_URL") or stored.get("url") or DEFAULT_URL),
        token=(token or os.environ.get("CIVITAI_API_TOKEN") or stored.get("token") or "").strip(),
        offline=bool(offline) or env_offline,
        nsfw=check_nsfw(nsfw or stored.get("nsfw") or DEFAULT_NSFW),
    )
    return settings if timeout is None else replace(settings, timeout=check_timeout(timeout))


def check_url(url: str) -> str:
    parts = urlsplit(str(url).strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"Civitai URL {url!r}: give an http(s) address such as {DEFAULT_URL}")
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


def check_nsfw(level: str) -> str:
    level = str(level).strip().lower()
    if level not in NSFW_LEVELS:
        raise ConfigError(f"NSFW level {level!r}: use one of {', '.join(NSFW_LEVELS)}")
    return level


def check_timeout(seconds: float) -> float:
    if not seconds > 0:
        raise ConfigError(f"timeout {seconds}: give a number of seconds above 0")
    return float(seconds)


def read_user_settings() -> dict:
    """The user settings file's fields ({} when there is none or it is unreadable, with a log line)."""
    path = settings_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("%s: unreadable Civitai settings (%s); ignored", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def update_user_settings(**values) -> Path:
    """Set fields of the user settings file (a value None removes the field); written atomically, 0600,
    because it may hold the API token."""
    path = settings_path()
    data = read_user_settings()
    for key, value in values.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def hash_consent() -> bool:
    """Whether the user agreed to send file hashes to Civitai (asked once, by the web UI)."""
    return read_user_settings().get("hash_consent") is True


def set_hash_consent(allowed: bool) -> None:
    update_user_settings(hash_consent=True if allowed else None)
