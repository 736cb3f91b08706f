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


def _captions(count: int) -> list[str]:
    """Captions of the kinds data sets hold: tags, prose, weights, punctuation runs, digits, apostrophes,
    accents, CJK, emoji, odd whitespace, upper case and the special tokens' text."""
    import random

    pieces = ["1girl", "solo", "Long hair", "(masterpiece:1.2)", "best_quality", "a photo of sks dog", "it's",
              "we'll", "they're", "don't", "I'M", "café", "naïve", "Ünïcödé", "東京タワー", "猫", "🙂", "🐈‍⬛",
              "3.14159", "2024-01-02", "...", "!!!", "#tag", "@user", "e-mail", "state-of-the-art", "x\ty",
              "a\u00a0b", "line\nbreak", "  spaced  ", "<|endoftext|>", "<|startoftext|>", "<lora:foo:0.8>",
              "[BREAK]", "ﬁne", "Ⅻ", "①②", "x²", "e\u0301", "ß", "İstanbul", "ΑΒΓ", "привет", "مرحبا", "\\n",
              "'", "''quoted''", "a,b,c", "very, very, very long"]
    rng = random.Random(0)
    return ["".join(rng.choice((" ", ", ", "", "  ")) + rng.choice(pieces) for _ in range(rng.randint(1, 40)))
            for _ in range(count)] + pieces + ["", " ", "\n"]


def test_caption_token_counts_equal_cliptokenizer():
    """The dry-run counts tokens with the `tokenizers` library alone; the counts must be CLIPTokenizer's."""
    from transformers import CLIPTokenizer

    from sdlora.configs import tokenizers_root
    from sdlora.embedded import weights_dir
    from sdlora.train.datacheck import caption_tokenizer

    captions = _captions(600)
    for base, folder in (("embedded", weights_dir() / "tokenizer"),
                         ("sd1", tokenizers_root() / "clip-vit-large-patch14")):
        reference = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        light = caption_tokenizer(base)
        assert light.model_max_length == reference.model_max_length
        expected = [len(reference(c, add_special_tokens=False, verbose=False).input_ids) for c in captions]
        assert [light.count(c) for c in captions] == expected
        assert max(expected) > 77  # long captions are among them
