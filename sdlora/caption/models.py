"""Choosing and loading a captioner: a folder with an `.onnx` model and `selected_tags.csv` is a WD14 tagger;
anything else is handed to transformers as an image-to-text model (a folder, or a hub id when online)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from PIL import Image

from sdlora.caption.tagger import TAGS_FILE, TaggerOptions, WD14Tagger
from sdlora.errors import ConfigError


class Captioner(Protocol):
    kind: str  # "tagger" or "sentence"
    name: str

    def caption(self, images: list[Image.Image]) -> list[str]: ...


def is_tagger_folder(folder: Path) -> bool:
    return folder.is_dir() and (folder / TAGS_FILE).is_file() and any(folder.glob("*.onnx"))


def load_captioner(source: str | Path, *, device: str = "cpu", tagger: TaggerOptions | None = None,
                   max_new_tokens: int = 40, prompt: str | None = None) -> Captioner:
    """A tagger for a tagger folder, else a sentence captioner.

    Raises:
        ConfigError: the source is empty, a missing local path, a damaged model, or lacks a library it needs.
    """
    text = str(source or "").strip()
    if not text:
        raise ConfigError("no captioner given: pass a WD14 tagger folder (model.onnx + selected_tags.csv) or an "
                          "image-to-text model folder or hub id (e.g. Salesforce/blip-image-captioning-base)")
    path = Path(text).expanduser()
    if is_tagger_folder(path):
        return WD14Tagger(path, tagger, device)
    if path.suffix.lower() == ".onnx" or (path.is_dir() and any(path.glob("*.onnx"))):
        raise ConfigError(f"{path}: an ONNX model without its {TAGS_FILE}; put both in one folder and pass the folder")
    if _looks_local(text) and not path.exists():
        raise ConfigError(f"{path}: no such folder; give a captioner folder or a hub id (owner/name)")
    from sdlora.caption.sentence import SentenceCaptioner  # imports torch and transformers: only when needed

    return SentenceCaptioner(path if path.exists() else text, device=device, max_new_tokens=max_new_tokens,
                             prompt=prompt)


def _looks_local(text: str) -> bool:
    """A path rather than a hub id ("owner/name" has exactly one slash and no leading dot or slash)."""
    return text.startswith((".", "/", "~")) or text.count("/") != 1
