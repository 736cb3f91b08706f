"""A WD14-family tagger: an ONNX image classifier with one sigmoid output per tag, and its tag list.

A tagger folder holds `model.onnx` (or one other `.onnx` file) and `selected_tags.csv` with the columns
`tag_id,name,category,count`; category 0 is a general tag, 4 a character, 9 a rating (docs/training.md,
"Captioning"). The model takes a batch of square BGR images, 0-255 floats, channels last (N, S, S, 3),
and returns one probability per tag. Images are padded to a square with white and resized to S, as the
taggers were trained.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sdlora.errors import ConfigError

GENERAL, CHARACTER, RATING = 0, 4, 9
TAGS_FILE = "selected_tags.csv"
# Tags of up to three characters are emoticons ("o_o", "^_^", ">_<"): their underscores are the face.
_EMOTICON_LENGTH = 3


@dataclass
class TaggerOptions:
    general_threshold: float = 0.35    # a general tag is kept at or above this probability
    character_threshold: float = 0.85  # a character tag likewise (characters are named only when sure)
    exclude: tuple[str, ...] = ()      # tags never written (either spelling, "long_hair" or "long hair")
    underscores_to_spaces: bool = True
    rating_tags: bool = False          # add the most likely rating tag ("general", "sensitive", ...) last

    def check(self) -> None:
        for key in ("general_threshold", "character_threshold"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{key.replace('_', '-')} {value} is not a probability; give a value "
                                  "between 0 and 1 (0.35 and 0.85 are the usual ones)")


@dataclass
class Tag:
    name: str
    category: int


def read_tags(path: Path) -> list[Tag]:
    """The tag list, in the model's output order.

    Raises:
        ConfigError: the file is missing, or lacks the `name`/`category` columns, or has a bad category.
    """
    if not path.is_file():
        raise ConfigError(f"{path.parent}: no {TAGS_FILE}; a WD14 tagger folder holds the model (.onnx) and "
                          f"its {TAGS_FILE} (download both from the tagger's page)")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise ConfigError(f"{path}: not a tagger tag list (expected the columns tag_id,name,category,count)")
    try:
        return [Tag(row["name"], int(row["category"])) for row in rows]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: a category is not a number ({err})") from err


def find_model_file(folder: Path) -> Path:
    """`model.onnx`, else the folder's only `.onnx` file."""
    preferred = folder / "model.onnx"
    if preferred.is_file():
        return preferred
    found = sorted(folder.glob("*.onnx"))
    if len(found) != 1:
        what = "no .onnx file" if not found else f"{len(found)} .onnx files and none named model.onnx"
        raise ConfigError(f"{folder}: {what}; a WD14 tagger folder holds model.onnx and {TAGS_FILE}")
    return found[0]


def clean_tag(name: str, underscores_to_spaces: bool) -> str:
    if underscores_to_spaces and len(name) > _EMOTICON_LENGTH:
        return name.replace("_", " ")
    return name


def to_square_bgr(image: Image.Image, size: int) -> np.ndarray:
    """Pad `image` (RGB) to a white square, resize to `size` and return it as BGR float32, 0-255."""
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    canvas = canvas.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(canvas, dtype=np.float32)[:, :, ::-1]


class WD14Tagger:
    """Tags images with a WD14-family ONNX model (onnxruntime)."""

    kind = "tagger"

    def __init__(self, folder: str | Path, options: TaggerOptions | None = None, device: str = "cpu"):
        self.folder = Path(folder)
        self.options = options or TaggerOptions()
        self.options.check()
        self.tags = read_tags(self.folder / TAGS_FILE)
        self.session = _session(find_model_file(self.folder), device)
        self.size = _input_size(self.session, self.folder)
        outputs = self.session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != len(self.tags):
            raise ConfigError(f"{self.folder}: the model scores {outputs} tags but {TAGS_FILE} lists "
                              f"{len(self.tags)}; the two files are from different taggers")
        self.name = self.folder.name

    def caption(self, images: list[Image.Image]) -> list[str]:
        batch = np.stack([to_square_bgr(image, self.size) for image in images])
        name = self.session.get_inputs()[0].name
        scores = np.asarray(self.session.run(None, {name: batch})[0], dtype=np.float64)
        if scores.min() < 0.0 or scores.max() > 1.0:  # an export that ends in logits, not probabilities
            scores = 1.0 / (1.0 + np.exp(-scores))
        return [", ".join(self.select(row)) for row in scores]

    def select(self, scores: np.ndarray) -> list[str]:
        """Character tags first, then general tags, each by falling probability; the rating last if asked."""
        opts = self.options
        excluded = {clean_tag(tag.strip(), True).lower() for tag in opts.exclude}
        picked = {CHARACTER: [], GENERAL: []}
        for index in np.argsort(-scores, kind="stable"):
            tag = self.tags[index]
            threshold = opts.character_threshold if tag.category == CHARACTER else opts.general_threshold
            if tag.category not in picked or scores[index] < threshold:
                continue
            if clean_tag(tag.name, True).lower() not in excluded:
                picked[tag.category].append(clean_tag(tag.name, opts.underscores_to_spaces))
        names = picked[CHARACTER] + picked[GENERAL]
        ratings = [i for i, tag in enumerate(self.tags) if tag.category == RATING]
        if opts.rating_tags and ratings:
            names.append(clean_tag(self.tags[max(ratings, key=lambda i: scores[i])].name, opts.underscores_to_spaces))
        return names


def _session(model: Path, device: str):
    try:
        import onnxruntime
    except ImportError as err:
        raise ConfigError("the WD14 tagger needs onnxruntime: pip install 'sdlora[caption]' "
                          "(or onnxruntime-gpu for a GPU)") from err
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise ConfigError("device cuda: this onnxruntime has no CUDA provider; install onnxruntime-gpu "
                              "or tag on the CPU (--device cpu)")
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return onnxruntime.InferenceSession(str(model), providers=providers)
    except Exception as err:  # onnxruntime raises its own untyped errors for a damaged model
        raise ConfigError(f"{model}: onnxruntime cannot load it ({str(err).splitlines()[0]}); the file may be "
                          "damaged or incomplete: download it again") from err


def _input_size(session, folder: Path) -> int:
    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
        raise ConfigError(f"{folder}: the model's input is {shape}, not a batch of square channels-last "
                          "RGB images as WD14 taggers take")
    return shape[1]
