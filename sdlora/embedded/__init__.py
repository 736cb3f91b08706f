"""The embedded model: a small text-to-image model with Stable Diffusion 1.x's architecture.

It ships in the package (`weights/`, a diffusers StableDiffusionPipeline folder, safetensors, a few MB)
and draws 32 x 32 images of one shape on a background from prompts such as
"a red circle on a blue background". It was trained from scratch by `python -m sdlora.embedded.pretrain`
on the synthetic data set in `shapes.py`; see docs/embedded-model.md.

    from sdlora.embedded import load_pipeline
    pipe = load_pipeline()
    image = pipe("a red circle on a blue background", num_inference_steps=15).images[0]
"""

from __future__ import annotations

from pathlib import Path

from sdlora.errors import SdloraError

NAME = "embedded"  # the base name that selects this model (`--base embedded`)
IMAGE_SIZE = 32


def weights_dir() -> Path:
    """The shipped pipeline folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    return Path(__file__).resolve().parent / "weights"


def load_pipeline(device: str = "cpu", dtype=None, folder: Path | None = None):
    """Load the embedded StableDiffusionPipeline (float32 on CPU by default).

    `folder` loads another pretraining output instead of the shipped weights.
    Raises sdlora.errors.SdloraError when the weights are missing.
    """
    import torch
    from diffusers import StableDiffusionPipeline

    folder = Path(folder) if folder is not None else weights_dir()
    if not (folder / "model_index.json").is_file():
        raise SdloraError(
            f"embedded model weights not found in {folder}: reinstall sdlora, or rebuild them with "
            "`python -m sdlora.embedded.pretrain --out <folder>`"
        )
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, dtype=dtype or torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
