"""sample_data/ is what scripts/make_sample_data.py writes, and it is a style the base never saw."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from sdlora.embedded import shapes, showcase
from sdlora.embedded.tokenizer import TRIGGER

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data"


def _script():
    spec = importlib.util.spec_from_file_location(
        "make_sample_data", ROOT / "scripts" / "make_sample_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_sample_data_is_the_scripts_output(tmp_path):
    prompts = tmp_path.parent / f"{tmp_path.name}-prompts.txt"
    assert _script().main(["--out", str(tmp_path), "--prompts", str(prompts)]) == 0
    committed = sorted(p.name for p in SAMPLE.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == committed
    assert prompts.read_text() == (ROOT / "scripts" / "sample_prompts.txt").read_text()
    assert np.array_equal(showcase.load_images(tmp_path), showcase.load_images(SAMPLE))
    for txt in SAMPLE.glob("*.txt"):
        assert (tmp_path / txt.name).read_text() == txt.read_text()


def test_sample_data_has_captions_with_the_trigger_word():
    images = sorted(SAMPLE.glob("*.png"))
    assert 20 <= len(images) <= 40
    for image in images:
        caption = image.with_suffix(".txt").read_text().strip()
        assert caption.startswith(f"{TRIGGER} style, a ")
    prompts = [p for p in (SAMPLE.parent / "scripts" / "sample_prompts.txt").read_text().splitlines() if p.strip()]
    assert prompts and all(TRIGGER in p for p in prompts)


def test_style_is_far_from_the_pretraining_images():
    style = showcase.load_images(SAMPLE)
    base, _ = shapes.make_dataset(len(style), seed=123)
    # two halves of the style set are close; the pretraining images are far in palette and texture
    assert showcase.style_distance(style[::2], style[1::2])["total"] < 0.1
    far = showcase.style_distance(base, style)
    assert far["colour"] > 0.6 and far["texture"] > 0.3


def test_style_distance_is_zero_for_the_same_set_and_symmetric():
    style = showcase.load_images(SAMPLE)
    base, _ = shapes.make_dataset(16, seed=1)
    assert showcase.style_distance(style, style)["total"] == 0.0
    assert showcase.style_distance(base, style) == showcase.style_distance(style, base)
