"""Data set intake: odd and broken files, Kohya folders, captions, buckets, batch order."""

import random

import numpy as np
import pytest
from PIL import Image

from sdlora.errors import DatasetError
from sdlora.settings.config import load_config
from sdlora.train.buckets import choose_bucket, crop_box, make_buckets
from sdlora.train.captions import process_caption, with_trigger
from sdlora.train.data import epoch_batches, load_pixels, sample_crop, scan_dataset
from sdlora.train.images import open_image


def _data_cfg(path, *extra):
    return load_config(None, [f"data.path={path}", "data.resolution=32", "data.min_bucket=32",
                              "data.max_bucket=64", "data.bucket_step=32", "data.max_image_pixels=100000",
                              *extra]).data


def _exif_rotated(path):
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    img.paste((0, 255, 0), (32, 0, 64, 32))      # stored: left red, right green
    exif = Image.Exif()
    exif[0x0112] = 6                              # display rotated 90 degrees clockwise
    img.save(path, exif=exif, quality=95)


@pytest.fixture
def messy(tmp_path):
    """A folder with one of each problem the issue lists, plus a normal image."""
    d = tmp_path / "messy"
    d.mkdir()
    Image.new("RGB", (48, 48), (10, 120, 200)).save(d / "good.png")
    (d / "good.txt").write_text("good, blue", encoding="utf-8")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(d / "whole.jpg", quality=95)
    (d / "corrupt.jpg").write_bytes((d / "whole.jpg").read_bytes()[:300])          # truncated JPEG
    (d / "junk.png").write_bytes(b"not an image at all")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(d / "cmyk.jpg", quality=95)  # pure red in CMYK
    Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16)).save(d / "deep.png")  # 16-bit mid grey
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))                               # invisible red...
    rgba.paste((0, 0, 255, 255), (20, 0, 40, 40))                                     # ...and opaque blue
    rgba.save(d / "rgba.png")
    _exif_rotated(d / "rotated.jpg")
    Image.new("RGB", (300, 200), (0, 128, 0)).save(d / "big.png")                    # oversized, usable
    Image.new("RGB", (400, 400), (0, 0, 0)).save(d / "bomb.png")                     # over max_image_pixels
    Image.new("RGB", (32, 32), (90, 90, 90)).save(d / "latin.png")
    (d / "latin.txt").write_bytes("café, red".encode("cp1252"))                    # not UTF-8
    return d


def test_messy_folder_summary_names_skipped_and_converted(messy):
    items, summary = scan_dataset(_data_cfg(messy))
    skipped = {p.rsplit("/", 1)[-1]: why for p, why in summary.skipped}
    assert set(skipped) == {"corrupt.jpg", "junk.png", "bomb.png"}
    assert "truncated" in skipped["corrupt.jpg"] and "not a readable image" in skipped["junk.png"]
    assert "decompression-bomb" in skipped["bomb.png"]
    converted = {}
    for path, what in summary.converted:
        converted.setdefault(path.rsplit("/", 1)[-1], []).append(what)
    assert "CMYK" in converted["cmyk.jpg"][0]
    assert "8 bit" in converted["deep.png"][0]
    assert "transparency composited on white" in converted["rgba.png"][0]
    assert "EXIF orientation 6" in converted["rotated.jpg"][0]
    assert "oversized 300x200" in converted["big.png"][0]
    assert "not UTF-8" in converted["latin.txt"][0]
    assert sorted(i.path.name for i in items) == ["big.png", "cmyk.jpg", "deep.png", "good.png", "latin.png",
                                                  "rgba.png", "rotated.jpg", "whole.jpg"]
    assert next(i for i in items if i.path.name == "latin.png").caption == "café, red"
    text = "\n".join(summary.lines())
    assert "skipped" in text and "bomb.png" in text and "captions: 2/8" in text


def test_each_conversion_is_right_on_pixels(messy):
    cmyk, _ = open_image(messy / "cmyk.jpg")
    assert np.allclose(np.asarray(cmyk)[20, 20], (255, 0, 0), atol=8)
    deep, _ = open_image(messy / "deep.png")
    assert np.allclose(np.asarray(deep)[5, 5], (128, 128, 128), atol=1)     # not white
    rgba, _ = open_image(messy / "rgba.png", background="white")
    assert tuple(np.asarray(rgba)[5, 5]) == (255, 255, 255) and tuple(np.asarray(rgba)[5, 30]) == (0, 0, 255)
    black, _ = open_image(messy / "rgba.png", background="#000000")
    assert tuple(np.asarray(black)[5, 5]) == (0, 0, 0)
    rotated, _ = open_image(messy / "rotated.jpg")
    assert rotated.size == (32, 64)
    top, bottom = np.asarray(rotated)[8, 16], np.asarray(rotated)[56, 16]
    assert np.allclose(top, (255, 0, 0), atol=30) and np.allclose(bottom, (0, 255, 0), atol=30)


def test_bucketed_pixels_of_16_bit_image_stay_grey(messy):
    items, _ = scan_dataset(_data_cfg(messy))
    deep = next(i for i in items if i.path.name == "deep.png")
    pixels = load_pixels(deep, _data_cfg(messy), sample_crop(deep, _data_cfg(messy), None), flip=False)
    assert pixels.shape == (3, deep.bucket[1], deep.bucket[0])
    assert abs(pixels.mean().item() - (128 / 127.5 - 1)) < 0.01


@pytest.mark.slow
def test_messy_folder_trains(messy, tmp_path):
    from tests_train_helpers import make_tiny_components, tiny_config

    from sdlora.train import train

    cfg = tiny_config(messy, tmp_path / "out", "optim.steps=2", "data.max_image_pixels=100000",
                      "data.batch_size=2")
    result = train(cfg, make_tiny_components(tmp_path))
    assert result.steps == 2 and result.files[0].is_file()
    assert len(result.summary.skipped) == 3


def test_empty_and_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="is not a folder"):
        scan_dataset(_data_cfg(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match="no usable images"):
        scan_dataset(_data_cfg(tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"xx")
    with pytest.raises(DatasetError, match="1 file.*skipped"):
        scan_dataset(_data_cfg(tmp_path / "broken"))


def test_kohya_folders_give_repeats_and_class_token(tmp_path):
    root = tmp_path / "img"
    (root / "10_zkw style").mkdir(parents=True)
    (root / "notes").mkdir()
    Image.new("RGB", (32, 32)).save(root / "10_zkw style" / "a.png")
    Image.new("RGB", (32, 32)).save(root / "10_zkw style" / "b.png")
    (root / "10_zkw style" / "b.txt").write_text("zkw style, tree")
    items, summary = scan_dataset(_data_cfg(root, "data.trigger=zkw"))
    assert summary.folders == {"10_zkw style": {"n_repeats": 10, "img_count": 2}}
    assert {i.path.name: i.caption for i in items} == {"a.png": "zkw, zkw style", "b.png": "zkw, zkw style, tree"}
    assert summary.tag_frequency["10_zkw style"]["zkw style"] == 2
    assert sum(len(b) for b in epoch_batches(items, 2, 0, 0)) == 20


def test_caption_processing_keeps_tokens_and_drops():
    rng = random.Random(0)
    caption = with_trigger("a, b, c, d, e, f", "zkw")
    assert caption == "zkw, a, b, c, d, e, f"
    shuffled = {process_caption(caption, rng, keep_tokens=2, shuffle=True) for _ in range(20)}
    assert len(shuffled) > 1 and all(s.startswith("zkw, a, ") for s in shuffled)
    assert process_caption(caption, rng, caption_dropout=1.0) == ""
    assert process_caption(caption, rng, keep_tokens=1, tag_dropout=1.0) == "zkw"
    assert with_trigger("zkw, a", "zkw") == "zkw, a"


def test_buckets_keep_area_and_step():
    buckets = make_buckets(512, 256, 1024, 64)
    assert (512, 512) in buckets and (768, 320) in buckets and (320, 768) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in buckets)
    assert choose_bucket(1920, 1080, buckets)[0] > choose_bucket(1920, 1080, buckets)[1]
    assert choose_bucket(1000, 1000, buckets) == (512, 512)
    scale, box = crop_box((1000, 500), (768, 320), "center")
    assert box[2] - box[0] == 768 and box[3] - box[1] == 320 and scale == pytest.approx(0.768)


def test_small_resolution_below_bucket_step_is_kept(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    Image.new("RGB", (50, 40)).save(root / "a.png")
    for extra in (["data.buckets=false"], ["data.bucket_step=64", "data.min_bucket=64"]):
        cfg = load_config(None, [f"data.path={root}", "data.resolution=32", *extra]).data
        items, _ = scan_dataset(cfg)
        assert items[0].bucket == (32, 32), extra


def test_batch_order_is_deterministic_and_bucket_pure(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    for i, size in enumerate([(32, 32), (64, 32), (32, 32), (64, 32), (32, 64)]):
        Image.new("RGB", size).save(root / f"{i}.png")
    items, _ = scan_dataset(_data_cfg(root, "data.repeats=2"))
    first, again, other = (epoch_batches(items, 2, 0, 0), epoch_batches(items, 2, 0, 0),
                           epoch_batches(items, 2, 0, 1))
    assert first == again and first != other
    assert all(len({items[i].bucket for i in batch}) == 1 for batch in first)
    assert sorted(i for b in first for i in b) == sorted(list(range(5)) * 2)
