"""The `<stem>.civitai.info` beside a LoRA (Civitai Helper's name): where it is, reading it, and the few
fields a user wants from it. Standard library only, below the library in the layers, so that the library
listing (base-model filter, tags) can read it without the Civitai client (docs/civitai.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

INFO_SUFFIX = ".civitai.info"


def info_path(lora_path) -> Path:
    path = Path(lora_path)
    return path.with_name(path.stem + INFO_SUFFIX)


def read_info(lora_path) -> dict | None:
    """The `<stem>.civitai.info` beside a LoRA (None when there is none or it is unreadable)."""
    path = info_path(lora_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("%s: unreadable Civitai info (%s); ignored", path, err)
        return None
    return data if isinstance(data, dict) else None


def summary(version: dict) -> dict:
    """What a user wants from a version answer: names, ids, base model, trigger words, tags, page."""
    model = version.get("model") if isinstance(version.get("model"), dict) else {}
    return {
        "model_name": str(model.get("name") or ""),
        "version_name": str(version.get("name") or ""),
        "model_id": version.get("modelId"),
        "version_id": version.get("id"),
        "base_model": str(version.get("baseModel") or ""),
        "trained_words": [str(w).strip() for w in version.get("trainedWords") or [] if str(w).strip()],
        "tags": [str(t) for t in model.get("tags") or []],
        "type": str(model.get("type") or ""),
    }
