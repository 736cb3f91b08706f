"""The shapes data set, the judge (colour/shape classifier) and the small CLIP tokenizer."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from sdlora.embedded import judge, shapes, tokenizer


def test_make_dataset_is_reproducible_from_seed():
    a_images, a_captions = shapes.make_dataset(40, seed=3, texture=0.5)
    b_images, b_captions = shapes.make_dataset(40, seed=3, texture=0.5)
    c_images, _ = shapes.make_dataset(40, seed=4, texture=0.5)
    assert a_images.shape == (40, shapes.SIZE, shapes.SIZE, 3) and a_images.dtype == np.uint8
    assert np.array_equal(a_images, b_images) and a_captions == b_captions
    assert not np.array_equal(a_images, c_images)


def test_scenes_are_balanced_over_colour_and_shape():
    n_pairs = len(shapes.COLOURS) * len(shapes.SHAPES)
    scenes = shapes.sample_scenes(3 * n_pairs, np.random.default_rng(0))
    counts = Counter((s.colour, s.shape) for s in scenes)
    assert len(counts) == n_pairs and set(counts.values()) == {3}
    assert all(s.background != s.colour for s in scenes)


def test_caption_names_colour_shape_and_background():
    scene = shapes.Scene("triangle", "red", "blue", "big", "on the left")
    assert scene.caption() == "a big red triangle on the left on a blue background"
    short = shapes.Scene(
        "circle", "green", "white", "small", "at the top", say_size=False, say_position=False
    )
    assert short.caption() == "a green circle on a white background"


def test_judge_reads_the_data_set_it_was_written_for():
    rng = np.random.default_rng(7)
    scenes = shapes.sample_scenes(240, rng)
    verdicts = [judge.classify(shapes.render(s, rng)) for s in scenes]
    colour = np.mean([v.colour == s.colour for v, s in zip(verdicts, scenes, strict=True)])
    shape = np.mean([v.shape == s.shape for v, s in zip(verdicts, scenes, strict=True)])
    background = np.mean([v.background == s.background for v, s in zip(verdicts, scenes, strict=True)])
    assert colour >= 0.98 and shape >= 0.98 and background >= 0.98


def test_judge_finds_nothing_on_a_flat_image_and_is_not_fooled_by_noise():
    flat = np.full((32, 32, 3), 128, np.uint8)
    assert judge.classify(flat).shape is None
    noise = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    assert all(judge.classify(img).shape is None for img in noise)
    # a blob that is no shape: two separate small squares side by side fit no template well
    blob = np.zeros((32, 32, 3), np.uint8)
    blob[4:10, 4:10] = blob[22:28, 22:28] = 255
    assert judge.classify(blob).shape is None


def test_eval_prompts_cover_every_colour_with_every_shape_once():
    triples = judge.eval_prompts()
    assert len(triples) == 24
    assert Counter((c, s) for c, s, _ in triples) == Counter(
        {(c, s): 1 for c in shapes.COLOURS for s in shapes.SHAPES}
    )
    assert all(b != c for c, _, b in triples)


def test_tokenizer_has_one_token_per_known_word(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer.write_tokenizer_files(tmp_path, 32)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    for word in tokenizer.known_words():
        assert len(tok(word).input_ids) == 3, word  # <start> word <end>
    ids = tok("a red circle on a blue background", padding="max_length", max_length=32).input_ids
    assert len(ids) == 32 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    # an unknown word still tokenizes (character by character) instead of failing
    assert len(tok("dog").input_ids) == 2 + 3


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_shape_mask_is_inside_its_box(shape):
    mask = shapes.shape_mask(shape, (0.5, 0.5), 0.25)
    assert mask.max() == pytest.approx(1.0) and mask[:6].sum() == 0 and mask[-6:].sum() == 0
