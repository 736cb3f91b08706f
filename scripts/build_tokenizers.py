"""Rebuild the CLIP BPE tokenizer files (vocab.json, merges.txt) from open_clip's bpe_simple_vocab_16e6.txt.gz.

Usage (see README.md in this folder for provenance):
    pip download --no-deps open-clip-torch -d /tmp/oc && cd /tmp/oc && unzip -o open_clip_torch-*.whl \
        open_clip/bpe_simple_vocab_16e6.txt.gz
    python scripts/build_tokenizers.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz

The vocabulary is built the way CLIP's own tokenizer builds it (openai/CLIP simple_tokenizer.py): the 256
byte symbols, the same with the end-of-word marker, one token per merge of the first 48,894 merges, then
the two special tokens: 49,408 tokens in all.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent / "sdlora" / "configs" / "tokenizers"
MERGES = 49152 - 256 - 2  # CLIP's vocabulary size minus byte symbols and specials: 48,894 merges
FOLDERS = {
    # SD1.x text_encoder / SDXL text_encoder: OpenAI CLIP ViT-L/14 pads with <|endoftext|>
    "clip-vit-large-patch14": "<|endoftext|>",
    # SD2.x text_encoder / SDXL text_encoder_2: OpenCLIP ViT-H/14 and ViT-bigG/14 pad with "!"
    "open-clip": "!",
}


def byte_symbols() -> list[str]:
    """The printable stand-in for each byte value (GPT-2/CLIP byte-level BPE), in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    # CLIP orders the list as: the printable bytes first, then the remapped ones
    ordered = [b for b in range(256) if b in printable] + [b for b in range(256) if b not in printable]
    return [symbols[b] for b in ordered]


def build(gz_path: Path) -> tuple[dict[str, int], list[str]]:
    with gzip.open(gz_path) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = lines[1:MERGES + 1]
    vocab = byte_symbols()
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}, merges


def tokenizer_config(pad: str) -> dict:
    return {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "pad_token": pad, "errors": "replace", "clean_up_tokenization_spaces": True}


def main(gz_path: str) -> None:
    vocab, merges = build(Path(gz_path))
    assert len(vocab) == 49408, len(vocab)
    for folder, pad in FOLDERS.items():
        out = HERE / folder
        out.mkdir(exist_ok=True)
        (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(pad), indent=2) + "\n")
        special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                   "pad_token": pad}
        (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
