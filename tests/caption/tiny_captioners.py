"""Tiny captioners built offline, for tests: a WD14-style ONNX tagger exported from torch and a BLIP model."""

from __future__ import annotations

import warnings
from pathlib import Path

# name, category (0 general, 4 character, 9 rating); the tagger below scores them from the mean colour
TAGS = [("general", 9), ("sensitive", 9), ("red_hair", 0), ("blue_sky", 0), ("zqx_girl", 4), ("o_o", 0),
        ("long_hair", 0)]


def tiny_tagger_module():
    """Scores: ratings 0.8/0.1, red_hair = red mean, blue_sky = blue mean, zqx_girl = red mean, o_o 0.9,
    long_hair 0.5. Input N,S,S,3 BGR 0-255 as WD14 taggers take it."""
    import torch

    class Tagger(torch.nn.Module):
        def forward(self, x):
            mean = x.mean(dim=(1, 2)) / 255.0             # N, 3 in B, G, R order
            blue, red = mean[:, 0:1], mean[:, 2:3]
            const = torch.ones_like(red)
            return torch.cat([0.8 * const, 0.1 * const, red, blue, red, 0.9 * const, 0.5 * const], dim=1)

    return Tagger()


def build_tagger(folder: Path) -> Path:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(tiny_tagger_module(), (torch.zeros(1, 16, 16, 3),), str(folder / "model.onnx"),
                          input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "batch"}},
                          dynamo=False)
    lines = ["tag_id,name,category,count"] + [f"{i},{name},{cat},1" for i, (name, cat) in enumerate(TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(lines) + "\n")
    return folder


def build_blip(folder: Path) -> Path:
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    words = ["a", "red", "blue", "circle", "square", "on", "the", "background", "style", "picture", "of"]
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *words]) + "\n")
    tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]")
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = {"vocab_size": 6 + len(words), "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "encoder_hidden_size": 32, "max_position_embeddings": 64,
            "bos_token_id": 5, "sep_token_id": 3, "pad_token_id": 0}
    vision = {"hidden_size": 32, "image_size": 32, "patch_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 64}
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    vocab.unlink()  # the saved tokenizer.json carries it
    return folder
