"""Text-to-image with a LoRA stack and A1111-style parameters text. torch/diffusers imported lazily.

`generate(pipeline, settings, stack=None, library=None)` takes `<lora:...>` tags out of the prompt,
applies them for this image only (on top of what the stack already holds), runs the pipeline with a
seeded generator and returns the image with the parameters text A1111 writes into its PNGs
(`parameters` tEXt chunk), including `Lora hashes: "name: shorthash"` where shorthash is the first
12 hex characters of the SHA-256 over the tensor data after the safetensors header (docs/formats.md §2.11).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sdlora import __version__
from sdlora.atomic import atomic_path
from sdlora.errors import ConfigError, Interrupted
from sdlora.header import tensor_data_sha256
from sdlora.progress import ProgressCallback, report
from sdlora.prompt import parse_prompt, resolve_name
from sdlora.samplers import make_scheduler, resolve_sampler, sampler_name


@dataclass
class GenerateSettings:
    """What to draw. Sizes must be multiples of 8 (the VAE's downsampling)."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    cfg: float = 7.0
    width: int = 512
    height: int = 512
    model_name: str = ""
    sampler: str = ""  # an A1111 sampler name (sdlora.samplers.SAMPLERS); "" keeps the model's own

    def check(self) -> None:
        if self.sampler:
            self.sampler = resolve_sampler(self.sampler)
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be a whole number >= 1, got {self.steps!r}")
        for what, value in (("width", self.width), ("height", self.height)):
            if not isinstance(value, int) or value < 8 or value % 8:
                raise ConfigError(f"{what} must be a multiple of 8 (>= 8), got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a whole number >= 0, got {self.seed!r}")


@dataclass
class GenerateResult:
    image: object  # PIL.Image.Image
    parameters: str
    loras: dict[str, str] = field(default_factory=dict)  # name -> short hash


def short_hash(path) -> str:
    """First 12 hex characters of the tensor-data SHA-256 of a `.safetensors` file ("" without a file)."""
    if not path or not Path(path).is_file():
        return ""
    return tensor_data_sha256(path)[:12]


def check_prompt_loras(prompt: str, lora_files: list[str | Path], library: dict[str, str] | None = None) -> None:
    """Check the prompt's `<lora:...>` tags before any model loads: each must be well formed and name one of
    `lora_files` (by file stem, as the stack names them) or a `library` entry.

    Raises:
        ConfigError: a malformed tag or an unknown name (with the closest known names).
    """
    names = sorted({*(Path(f).stem for f in lora_files), *(library or {})})
    parse_prompt(prompt, known=names)


def generate(pipeline, settings: GenerateSettings, stack=None, library: dict[str, str] | None = None,  # noqa: PLR0913
             on_progress: ProgressCallback | None = None, *, should_stop: Callable[[], bool] | None = None,
             on_preview: Callable[[int, object], None] | None = None, preview_every: int = 0) -> GenerateResult:
    """Draw one image.

    Args:
        pipeline: a diffusers text-to-image pipeline (its weights are patched by `stack`).
        settings: prompt, seed, steps, ...
        stack: the LoraStack on `pipeline` (one is made for prompt tags when None).
        library: {name: path} that `<lora:name>` tags may use (e.g. `library.scan(folder).names()`).
        on_progress: called once per denoising step.
        should_stop: asked after every step; True stops the image there (Interrupted is raised, the stack
            is put back as for a finished image).
        on_preview: called with (step, PIL image) every `preview_every` steps with the latents decoded so far
            (a VAE decode each time: cheap on small models, costly on SDXL).

    Raises:
        ConfigError: bad settings, or a tag names a LoRA that is neither stacked nor in the library.
        Interrupted: `should_stop` said so.
    """
    settings.check()
    if stack is None:
        from sdlora.stack import LoraStack  # stack imports torch; settings and parameters text need none

        stack = LoraStack(pipeline)
    prompt, requests = parse_prompt(settings.prompt)
    undo = _apply_requests(stack, requests, library or {})
    try:
        with _sampler(pipeline, settings.sampler):
            watch = _StepWatch(pipeline, settings.steps, on_progress, should_stop, on_preview, preview_every)
            image = _run(pipeline, prompt, settings, watch)
            sampler = sampler_name(pipeline.scheduler)
        hashes = {e.name: short_hash(e.lora.path) for e in stack.entries if e.enabled}
        text = parameters_text(settings, sampler, hashes, _extra_tags(stack, requests))
    finally:
        _undo(stack, undo)
    return GenerateResult(image, text, hashes)


def _apply_requests(stack, requests, library: dict[str, str]) -> list[tuple]:
    """Add / re-strength the LoRAs the tags ask for; returns how to put the stack back exactly."""
    undo = []
    stacked = {entry.name: entry for entry in stack.entries}
    for request in requests:
        request.name = _tag_target(request.name, list(stacked), library)
        entry = stacked.get(request.name)
        if entry is not None:
            # the tag's whole strength replaces the slot's (te included) for this image only
            undo.append(("restore", entry.name, entry.strength))
            stack.set_strength(entry.name, request.strength)
            continue
        stack.add(library[request.name], request.strength, name=request.name)
        undo.append(("remove", request.name))
    return undo


def _tag_target(name: str, stacked: list[str], library: dict[str, str]) -> str:
    """The stacked LoRA a tag names (exactly, else ignoring case), else the library entry it names."""
    try:
        return resolve_name(name, stacked)
    except ConfigError:
        return resolve_name(name, sorted({*library, *stacked}))


def _undo(stack, undo) -> None:
    for action in reversed(undo):
        if action[0] == "remove":
            stack.remove(action[1])
        else:
            _, name, strength = action
            stack.set_strength(name, strength)


class _StepWatch:
    """diffusers' `callback_on_step_end`: progress, the stop check and previews, once per step."""

    def __init__(self, pipeline, steps, on_progress, should_stop, on_preview, preview_every):
        self.pipeline, self.steps = pipeline, steps
        self.on_progress, self.should_stop = on_progress, should_stop
        self.on_preview, self.every = on_preview, preview_every

    def __call__(self, pipe, step, timestep, kwargs):
        done = step + 1
        report(self.on_progress, done, self.steps, f"step {done}")
        if self.should_stop is not None and self.should_stop():
            raise Interrupted(f"stopped after step {done} of {self.steps}; nothing was drawn")
        if self.on_preview is not None and self.every > 0 and done % self.every == 0 and done < self.steps:
            self.on_preview(done, decode_preview(self.pipeline, kwargs["latents"]))
        return kwargs


def decode_preview(pipeline, latents):
    """The latents decoded with the pipeline's VAE into a PIL image (the first of the batch)."""
    import torch

    vae = pipeline.vae
    with torch.inference_mode():
        pixels = vae.decode(latents[:1] / vae.config.scaling_factor, return_dict=False)[0]
    return pipeline.image_processor.postprocess(pixels, output_type="pil")[0]


def random_seed() -> int:
    """A seed for "seed -1" (A1111: a random one, written into the parameters like any other)."""
    import secrets

    return secrets.randbelow(2**32)


def _run(pipeline, prompt: str, settings: GenerateSettings, step_end):
    import torch

    from sdlora.long_prompt import prompt_embedding_kwargs

    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    if hasattr(pipeline, "set_progress_bar_config"):  # progress goes through on_progress: no second bar
        pipeline.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        embeds = prompt_embedding_kwargs(pipeline, prompt, settings.negative_prompt, pipeline.device)
        texts = {} if embeds else {"prompt": prompt, "negative_prompt": settings.negative_prompt or None}
        output = pipeline(
            **texts, **embeds,
            num_inference_steps=settings.steps, guidance_scale=settings.cfg,
            width=settings.width, height=settings.height, generator=generator,
            callback_on_step_end=step_end,
        )
    return output.images[0]


@contextmanager
def _sampler(pipeline, name: str):
    """Draw with sampler `name` ("" = the pipeline's own), then give the pipeline its scheduler back."""
    own = pipeline.scheduler
    if name:
        pipeline.scheduler = make_scheduler(name, own.config)
    try:
        yield
    finally:
        pipeline.scheduler = own


def _extra_tags(stack, requests) -> str:
    """`<lora:name:s>` tags for stacked LoRAs the prompt does not mention (so A1111 can redo the image)."""
    mentioned = {r.name for r in requests}
    tags = []
    for entry in stack.entries:
        if entry.enabled and entry.name not in mentioned:
            tags.append(f"<lora:{entry.name}:{entry.strength.text()}>")
    return " ".join(tags)


def parameters_text(settings: GenerateSettings, sampler: str, hashes: dict[str, str], extra_tags: str = "") -> str:
    """The A1111 infotext: prompt line, `Negative prompt:` line, then `Key: value` pairs."""
    prompt = f"{settings.prompt} {extra_tags}".strip() if extra_tags else settings.prompt
    lines = [prompt]
    if settings.negative_prompt:
        lines.append(f"Negative prompt: {settings.negative_prompt}")
    pairs = [f"Steps: {settings.steps}", f"Sampler: {sampler}", f"CFG scale: {settings.cfg:g}",
             f"Seed: {settings.seed}", f"Size: {settings.width}x{settings.height}"]
    if settings.model_name:
        pairs.append(f"Model: {settings.model_name}")
    known = {name: value for name, value in hashes.items() if value}
    if known:
        pairs.append('Lora hashes: "' + ", ".join(f"{n}: {h}" for n, h in known.items()) + '"')
    pairs.append(f"Version: sdlora {__version__}")
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def save_png(image, path, parameters: str) -> Path:
    """Write `image` as PNG with the parameters text in a `parameters` tEXt chunk (atomically)."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{path}: the output must be a .png file (the parameters live in a PNG text chunk)")
    info = PngInfo()
    info.add_text("parameters", parameters)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png", fsync=False) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def dtype_name(pipeline) -> str:
    """The dtype the pipeline's UNet computes in, as a user reads it ("float32", "float16")."""
    return str(pipeline.unet.dtype).removeprefix("torch.")
