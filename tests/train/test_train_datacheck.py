"""The data set check: near-duplicates, upscaled images, cut captions, uncaptioned and transparent images."""

from __future__ import annotations

import shutil

from PIL import Image
from tests_train_helpers import write_images

from sdlora.cli import main
from sdlora.settings.config import load_config
from sdlora.train.data import scan_dataset
from sdlora.train.datacheck import difference_hash, near_duplicates, signature


def _pattern(size: int, shift: int = 0) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    for x in range(size):
        for y in range(size):
            if (x + shift) * 3 // size != y * 2 // size:
                image.putpixel((x, y), (20, 40, 200))
    return image


def test_difference_hash_finds_resized_copies_not_other_images():
    first, resized = _pattern(64), _pattern(64).resize((48, 48))
    other = _pattern(64).transpose(Image.Transpose.ROTATE_90)
    recoloured = Image.eval(_pattern(64), lambda v: 255 - v)  # inverted: other colours, mirrored hash
    hashes = {"a.png": signature(first), "b.png": signature(resized), "c.png": signature(other),
              "d.png": signature(recoloured)}
    assert [(a, b) for a, b, _ in near_duplicates(hashes)] == [("a.png", "b.png")]
    assert difference_hash(first) != difference_hash(other)


def test_dry_run_names_duplicate_small_image_and_long_caption(tmp_path, capsys):
    data = write_images(tmp_path / "data", count=3, size=(64, 64))
    _pattern(64).save(data / "pattern.png")
    shutil.copy(data / "pattern.png", data / "copy.png")
    _pattern(16).save(data / "tiny.png")
    (data / "img2.txt").write_text(", ".join(["a very red circle on the left"] * 40))  # ~300 tokens
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(data / "clear.png")
    args = ["train", "--data", str(data), "--base", "embedded", "--dry-run", "--set", "data.resolution=64"]
    assert main(args) == 0
    out = capsys.readouterr().out
    checks = [line for line in out.splitlines() if line.startswith("check:")]
    assert any("near-duplicate" in line and "copy.png ~ pattern.png" in line for line in checks)
    assert any("upscaled" in line and "tiny.png (16x16 -> 64x64)" in line for line in checks)
    assert any("longer than the 30 tokens" in line and "img2.png" in line for line in checks)
    assert any("no caption file" in line for line in checks)
    assert any("transparency" in line and "clear.png" in line for line in checks)


def test_clean_data_set_has_no_findings_and_long_captions_fit_at_225(tmp_path):
    data = write_images(tmp_path / "data", count=3, size=(32, 32))
    _, summary = scan_dataset(load_config(None, [f"data.path={data}", "data.resolution=32"]).data, base="sd1")
    assert summary.checks == [] and summary.cut_captions == 0
    (data / "img0.txt").write_text(", ".join(["a very red circle on the left"] * 12))  # ~95 tokens
    cfg = load_config(None, [f"data.path={data}", "data.resolution=32"]).data
    assert scan_dataset(cfg, base="sd1")[1].cut_captions == 1
    cfg = load_config(None, [f"data.path={data}", "data.resolution=32", "data.max_token_length=225"]).data
    assert scan_dataset(cfg, base="sd1")[1].cut_captions == 0
