"""A small CLIP BPE vocabulary for the embedded model, learned from the data set's words.

CLIP's tokenizer needs `vocab.json` (symbol -> id) and `merges.txt` (BPE merge rules in rank order).
We learn the merges with plain BPE (repeatedly merge the most frequent adjacent pair, each word counted
once) until every known word is one symbol, so each known word is exactly one token. Every single
character (with and without the end-of-word mark `</w>`) is also in the vocabulary, so any other text
still tokenizes, character by character. The start/end tokens come last, as in CLIP's own vocabulary.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from itertools import pairwise
from pathlib import Path

from sdlora.embedded import shapes

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
TRIGGER = "zqx"  # the style trigger word used by sample_data/; known to the tokenizer, unseen in training
EXTRA_WORDS = ("style", TRIGGER, "an", "of", "with", "and", "picture", "image", "shape")
CHARACTERS = string.ascii_lowercase + string.digits + ",.:;!?'\"()[]<>-_/+*=&%#@"


def known_words() -> list[str]:
    return sorted(set(shapes.vocabulary()) | set(EXTRA_WORDS))


def _split(word: str) -> tuple[str, ...]:
    return (*word[:-1], word[-1] + "</w>")


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges (in rank order) that turn every word in `words` into a single symbol."""
    pieces = {w: _split(w) for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        for seq in pieces.values():
            counts.update(pairwise(seq))
        if not counts:
            return merges
        # most frequent pair; ties broken alphabetically so the result is deterministic
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        pieces = {w: _apply(seq, pair) for w, seq in pieces.items()}


def _apply(seq: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(seq):
        if i + 1 < len(seq) and (seq[i], seq[i + 1]) == pair:
            out.append(seq[i] + seq[i + 1])
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return tuple(out)


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = list(CHARACTERS) + [c + "</w>" for c in CHARACTERS]
    symbols += [a + b for a, b in merges]
    ordered = list(dict.fromkeys(symbols)) + [BOS, EOS]
    return {s: i for i, s in enumerate(ordered)}


def write_tokenizer_files(folder: Path, max_length: int) -> dict[str, int]:
    """Write vocab.json, merges.txt and tokenizer_config.json into `folder`; return the vocabulary."""
    folder.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(known_words())
    vocab = build_vocab(merges)
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    return vocab
