"""Caption files for editors (sdlora.train.data.caption_pairs / write_captions): the trainer's own folder and
image rules, atomic one-line writes, every entry checked before any is written."""

from __future__ import annotations

import pytest
from PIL import Image

from sdlora.errors import DatasetError
from sdlora.settings.config import load_config
from sdlora.train.captions import write_caption
from sdlora.train.data import caption_pairs, scan_dataset, write_captions


@pytest.fixture
def data(tmp_path):
    """A data set with what editors trip over: upper-case suffixes, N_name folders, ignored folders,
    a folder named like an image and a caption without an image."""
    root = tmp_path / "set"
    for folder in ("", "3_zkw style", "misc", ".cache", "dir.png"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for image in ("b.png", "A.JPG", "3_zkw style/c.webp", "misc/d.png", ".cache/e.png"):
        Image.new("RGB", (32, 32)).save(root / image)
    (root / "b.txt").write_text("\ufeffsquare, red\n\nsecond line ignored\n", encoding="utf-8")
    (root / "orphan.txt").write_text("no image")
    return root


def test_pairs_follow_the_trainers_rules(data):
    pairs = caption_pairs(data, repeats=2)
    assert [(p.image.relative_to(data).as_posix(), p.caption, p.folder, p.repeats, p.class_token) for p in pairs] == [
        ("A.JPG", None, "set", 2, ""),
        ("b.png", "square, red", "set", 2, ""),
        ("3_zkw style/c.webp", None, "3_zkw style", 3, "zkw style"),
    ]
    assert pairs[1].caption_file == data / "b.txt"
    cfg = load_config(None, [f"data.path={data}", "data.resolution=32", "data.min_bucket=32", "data.max_bucket=64",
                             "data.bucket_step=32"]).data
    items, _ = scan_dataset(cfg)
    assert [item.path for item in items] == [p.image for p in pairs]


def test_write_captions_then_read_them_back(data):
    written = write_captions(data, {"A.JPG": "  sks, blue  ", "3_zkw style/c.webp": ""})
    assert written == [data / "A.txt", data / "3_zkw style" / "c.txt"]
    assert (data / "A.txt").read_text(encoding="utf-8") == "sks, blue\n"
    assert {p.image.name: p.caption for p in caption_pairs(data)} == {"A.JPG": "sks, blue", "b.png": "square, red",
                                                                      "c.webp": ""}
    assert sorted(p.name for p in data.iterdir() if p.name.startswith(".A")) == []  # no temporary file left


@pytest.mark.parametrize(("name", "caption", "message"), [
    ("../outside.png", "x", "not an image of the data set"),
    ("misc/d.png", "x", "not an image of the data set"),  # a folder the trainer ignores
    ("orphan.txt", "x", "not an image of the data set"),
    ("dir.png", "x", "not an image of the data set"),
    ("missing.png", "x", "not an image of the data set"),
    ("b.png", "one\ntwo", "line breaks"),
])
def test_bad_entries_write_nothing(data, name, caption, message):
    (data.parent / "outside.png").write_bytes(b"")
    before = (data / "b.txt").read_bytes()
    with pytest.raises(DatasetError, match=message):
        write_captions(data, {"A.JPG": "first", name: caption})
    assert not (data / "A.txt").exists() and (data / "b.txt").read_bytes() == before


def test_missing_folder_and_missing_image(tmp_path):
    with pytest.raises(DatasetError, match="is not a folder"):
        caption_pairs(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no such image"):
        write_caption(tmp_path / "nope.png", "x")
    assert not (tmp_path / "nope.txt").exists()
