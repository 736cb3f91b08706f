"""Recipes: an image's generation parameters read back into prompt, settings and LoRA stack. No torch.

Where the text is (docs/library.md "Recipes"): a PNG's `parameters` text chunk (A1111, sdlora), or the EXIF
UserComment of a JPEG or WebP (A1111 writes "UNICODE\\0" + UTF-16, or "ASCII\\0\\0\\0" + text). The text is
A1111's infotext (docs/formats.md §2.12): prompt lines, an optional `Negative prompt:` line, then one line
of `Key: value` pairs; `<lora:name:w>` tags in the prompt give the stack and `Lora hashes: "name: hash, ..."`
the first 12 hex characters of each LoRA's tensor-data SHA-256.

LoRAs are matched to the library by hash first (the same weights under any name), then by name; what is
not found is listed with its hash (what a "download by hash" needs). Named recipes are a JSON file per
recipe (the parameters text, its name, when it was saved) and a PNG thumbnail beside it.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sdlora.atomic import atomic_path
from sdlora.errors import ConfigError, FormatError
from sdlora.library import LibraryEntry, file_hash
from sdlora.prompt import parse_prompt
from sdlora.strength import Strength

EXIF_IFD, USER_COMMENT = 0x8769, 0x9286  # the Exif sub-IFD and its UserComment tag
THUMBNAIL_SIDE = 256
# one `Key: value` pair of the settings line; a value is "quoted" (commas allowed) or runs to the next comma
_PAIR = re.compile(r'\s*([A-Za-z][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_NAME = re.compile(r"^[\w][\w .()-]*$")
MIN_PAIRS = 3  # a last line with fewer pairs is still prompt text (A1111 reads it the same way)


@dataclass
class RecipeLora:
    """One LoRA of a recipe: its name in the prompt tag, strength and short hash ("" when not given)."""

    name: str
    strength: Strength = field(default_factory=Strength)
    hash: str = ""


@dataclass
class Recipe:
    """What an image was drawn with. `prompt` has the LoRA tags taken out (they are in `loras`); None: not given."""

    prompt: str
    negative_prompt: str = ""
    steps: int | None = None
    sampler: str = ""
    cfg: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    model: str = ""
    loras: list[RecipeLora] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)  # every pair of the settings line, as written
    text: str = ""  # the parameters text it was read from


@dataclass
class LoraMatch:
    """A recipe LoRA and the library entry that holds it (None: missing); `by` is "hash", "name" or ""."""

    lora: RecipeLora
    entry: LibraryEntry | None = None
    by: str = ""


def read_image_parameters(path) -> str:
    """The generation parameters text of an image file (PNG text chunk, JPEG/WebP EXIF UserComment).

    Raises FormatError when the file is not an image or carries no parameters.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            text = image.info.get("parameters") or _user_comment(image)
    except (OSError, UnidentifiedImageError) as err:
        raise FormatError(f"{path}: not an image sdlora can read ({err}); give a PNG, JPEG or WebP") from err
    if not isinstance(text, str) or not text.strip():
        raise FormatError(f"{path}: the image carries no generation parameters (no PNG 'parameters' text, no EXIF "
                          "UserComment); it was not saved by A1111, sdlora or a tool that writes them")
    return text


def _user_comment(image) -> str:
    raw = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    return decode_user_comment(raw) if isinstance(raw, bytes) else (raw or "")


def decode_user_comment(raw: bytes) -> str:
    """An EXIF UserComment: an 8-byte character-code prefix, then the text (A1111: UNICODE, UTF-16 big-endian)."""
    prefix, body = raw[:8], raw[8:]
    if prefix.startswith(b"UNICODE"):
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return body.decode("utf-16")
        # no byte-order mark: ASCII text has its zero bytes first in big-endian (what A1111 writes)
        big = body[0:1] == b"\x00" if body else True
        return body.decode("utf-16-be" if big else "utf-16-le", errors="replace")
    if prefix.startswith(b"ASCII") or prefix == b"\x00" * 8:
        return body.decode("utf-8", errors="replace").rstrip("\x00")
    return raw.decode("utf-8", errors="replace").rstrip("\x00")


def parse_parameters(text: str) -> Recipe:
    """A Recipe from A1111 infotext. Raises ConfigError for a malformed `<lora:...>` tag or value."""
    lines = text.strip().replace("\r\n", "\n").split("\n")
    settings = _pairs(lines[-1]) if lines else {}
    if len(settings) >= MIN_PAIRS:
        lines = lines[:-1]
    else:
        settings = {}
    prompt_lines, negative_lines, into = [], [], None
    for line in lines:
        if line.startswith("Negative prompt:"):
            into = negative_lines
            line = line[len("Negative prompt:"):].strip()
        (prompt_lines if into is None else into).append(line)
    prompt, requests = parse_prompt("\n".join(prompt_lines))
    hashes = lora_hashes(settings.get("Lora hashes", ""))
    recipe = Recipe(prompt=prompt, negative_prompt="\n".join(negative_lines).strip(), settings=settings, text=text,
                    model=settings.get("Model", ""), sampler=settings.get("Sampler", ""))
    recipe.loras = [RecipeLora(r.name, r.strength, hashes.get(r.name, "")) for r in requests]
    recipe.loras += [RecipeLora(name, Strength(), h) for name, h in hashes.items()
                     if name not in {r.name for r in requests}]  # a tool that lists hashes without tags
    _numbers(recipe, settings)
    return recipe


def _pairs(line: str) -> dict[str, str]:
    found = {}
    for match in _PAIR.finditer(line):
        key, value = match.group(1).strip(), match.group(2).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        found[key] = value
    return found


def lora_hashes(value: str) -> dict[str, str]:
    """`Lora hashes` ("name: hash, name2: hash2") as {name: lower-case hash}."""
    found = {}
    for part in value.split(","):
        name, sep, digest = part.rpartition(":")
        if sep and name.strip() and digest.strip():
            found[name.strip()] = digest.strip().lower()
    return found


def _numbers(recipe: Recipe, settings: dict[str, str]) -> None:
    try:
        if "Steps" in settings:
            recipe.steps = int(settings["Steps"])
        if "CFG scale" in settings:
            recipe.cfg = float(settings["CFG scale"])
        if "Seed" in settings:
            recipe.seed = int(settings["Seed"])
        if "Size" in settings:
            width, _, height = settings["Size"].partition("x")
            recipe.width, recipe.height = int(width), int(height)
    except ValueError as err:
        raise ConfigError(f"the image's parameters hold a value that is not a number ({err})") from err


def read_recipe(path) -> Recipe:
    """The recipe of an image file (see `read_image_parameters`)."""
    return parse_parameters(read_image_parameters(path))


# ----- matching --------------------------------------------------------------------------------


def match_loras(recipe: Recipe, entries: list[LibraryEntry], cache_path=None) -> list[LoraMatch]:
    """Each recipe LoRA with its library entry: by hash first (hashes not in the headers are computed once and
    cached; only when a recipe hash is not found among the known ones), then by name (exact, then any case)."""
    matches = [LoraMatch(lora) for lora in recipe.loras]
    wanted = [m for m in matches if m.lora.hash]
    if wanted and not all(_by_hash(m, entries) for m in wanted):
        for entry in entries:
            if not entry.sha256:
                try:
                    file_hash(entry, cache_path=cache_path)
                except OSError:
                    continue
        for match in wanted:
            _by_hash(match, entries)
    for match in matches:
        if match.entry is None:
            _by_name(match, entries)
    return matches


def _by_hash(match: LoraMatch, entries: list[LibraryEntry]) -> bool:
    if match.entry is None:
        digest = match.lora.hash
        match.entry = next((e for e in entries if e.sha256 and e.sha256.startswith(digest)), None)
        match.by = "hash" if match.entry else ""
    return match.entry is not None


def _by_name(match: LoraMatch, entries: list[LibraryEntry]) -> None:
    name = match.lora.name
    found = [e for e in entries if e.name == name] or [e for e in entries if e.name.lower() == name.lower()]
    if found:
        match.entry, match.by = found[0], "name"


def missing(matches: list[LoraMatch]) -> list[RecipeLora]:
    """The recipe LoRAs not in the library (each with its hash, for a download by hash)."""
    return [m.lora for m in matches if m.entry is None]


def missing_text(matches: list[LoraMatch]) -> str:
    """One line naming the missing LoRAs and their hashes ("" when none)."""
    gone = missing(matches)
    if not gone:
        return ""
    return "not in the library: " + ", ".join(f"{m.name} (hash {m.hash})" if m.hash else m.name for m in gone)


# ----- named recipes ---------------------------------------------------------------------------


def default_recipes_dir() -> Path:
    import os

    root = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(root) / "sdlora" / "recipes"


def check_recipe_name(name: str) -> str:
    name = (name or "").strip()
    if not _NAME.match(name) or len(name.encode()) > 200:
        raise ConfigError(f"recipe name {name!r}: use letters, digits, spaces, '.', '-', '_' or '()' "
                          "(at most 200 bytes), starting with a letter or digit")
    return name


def save_recipe(folder, name: str, text: str, image=None) -> Path:
    """Save recipe `name` (its parameters text) as `<folder>/<name>.json`, with `image` (a path or PIL image)
    as a `<name>.png` thumbnail; an existing recipe of that name is replaced. Returns the JSON path.
    Raises ConfigError for a bad name or a text that is no recipe."""
    name = check_recipe_name(name)
    parse_parameters(text)  # refuse what cannot be loaded back
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if image is not None:
        _write_thumbnail(image, folder / f"{name}.png")
    data = {"name": name, "parameters": text, "saved": datetime.datetime.now().isoformat(timespec="seconds")}
    target = folder / f"{name}.json"
    with atomic_path(target, fsync=False) as tmp:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    return target


def _write_thumbnail(image, target: Path) -> None:
    from PIL import Image

    picture = image if isinstance(image, Image.Image) else Image.open(image)
    picture = picture.convert("RGB")
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    with atomic_path(target, fsync=False) as tmp:
        picture.save(tmp, format="PNG")


def list_recipes(folder) -> list[str]:
    """The names of the saved recipes in `folder`, sorted."""
    folder = Path(folder)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_recipe(folder, name: str) -> Recipe:
    """Saved recipe `name`; ConfigError when there is none (with the saved names)."""
    path = Path(folder) / f"{check_recipe_name(name)}.json"
    if not path.is_file():
        known = list_recipes(folder)
        raise ConfigError(f"no recipe named {name!r} in {folder}" + (f"; saved: {', '.join(known)}" if known else ""))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        text = data["parameters"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise FormatError(f"{path}: not a recipe file sdlora can read ({err}); save the recipe again") from err
    return parse_parameters(text)


def recipe_from(value: str, folder=None) -> Recipe:
    """The recipe an image path, a recipe .json path or a saved recipe name gives (what `--recipe` takes)."""
    path = Path(value)
    if path.is_file():
        if path.suffix.lower() == ".json":
            return load_recipe(path.parent, path.stem)
        return read_recipe(path)
    return load_recipe(folder or default_recipes_dir(), value)
