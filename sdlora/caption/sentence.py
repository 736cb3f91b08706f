"""A sentence captioner: any image-to-text model transformers loads (BLIP, GIT, Florence-2, a
vision-encoder-decoder), from a local folder or, when online, a hub id."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from sdlora.errors import ConfigError

# Florence-2 answers a task prompt; this one asks for a caption of a few sentences.
_TASK_PROMPTS = {"florence2": "<DETAILED_CAPTION>"}


class SentenceCaptioner:
    """Captions images with a transformers image-to-text model."""

    kind = "sentence"

    def __init__(self, source: str | Path, device: str = "cpu", max_new_tokens: int = 40, prompt: str | None = None):
        import torch
        from transformers import AutoModelForImageTextToText

        self.source = str(source)
        self.device = torch.device(device)
        self.max_new_tokens = max_new_tokens
        try:
            self.processor = _processor(self.source)
            self.model = AutoModelForImageTextToText.from_pretrained(self.source).to(self.device).eval()
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"{self.source}: transformers cannot load an image-to-text model from it "
                              f"({str(err).splitlines()[0]}); give a model folder (config.json, weights and "
                              "processor files) or a hub id when online") from err
        self.prompt = prompt if prompt is not None else _TASK_PROMPTS.get(self.model.config.model_type)
        self.name = Path(self.source).name or self.source

    def caption(self, images: list[Image.Image]) -> list[str]:
        import torch

        kwargs = {"images": images, "return_tensors": "pt"}
        if self.prompt:
            kwargs["text"] = [self.prompt] * len(images)
        inputs = self.processor(**kwargs).to(self.device)
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
        return [_clean(text, self.prompt) for text in texts]


def _processor(source: str):
    """The model's processor; a vision-encoder-decoder folder has an image processor and a tokenizer instead."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, TypeError):
        return _SplitProcessor(AutoImageProcessor.from_pretrained(source), AutoTokenizer.from_pretrained(source))


class _SplitProcessor:
    """Image processor + tokenizer behind the one call a captioner needs (no text prompt)."""

    def __init__(self, image_processor, tokenizer):
        self.image_processor, self.tokenizer = image_processor, tokenizer

    def __call__(self, images, return_tensors="pt", text=None):
        if text is not None:
            raise ConfigError("this model takes no text prompt; leave the prompt empty")
        return self.image_processor(images=images, return_tensors=return_tensors)

    def batch_decode(self, tokens, skip_special_tokens=True):
        return self.tokenizer.batch_decode(tokens, skip_special_tokens=skip_special_tokens)


def _clean(text: str, prompt: str | None) -> str:
    """One line, without an echoed prompt and trailing full stop, as tags and captions are written."""
    text = " ".join(text.split())
    if prompt and text.startswith(prompt):
        text = text[len(prompt):].strip()
    return text.rstrip(". ").strip()
