"""`sdlora generate --prompt ... [--base MODEL] [--lora FILE[:STRENGTH]] ... --out PNG`."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdlora.cli.loraargs import lora_with_strength, progress_bar
from sdlora.samplers import SAMPLERS

DESCRIPTION = """\
Draw one image with a stack of LoRAs. --base defaults to sdlora's embedded model. Prompt tags
<lora:NAME:0.8>, <lora:NAME:TE:UNET> and <lora:NAME:te=0.5:unet=1> work (A1111 syntax); NAME is a
--lora file's stem or a file in --lora-dir. The PNG carries A1111-style parameters text (tEXt chunk
"parameters"), including Lora hashes, so A1111/Civitai read the settings back."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("generate", help="text-to-image with LoRAs",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", "--negative_prompt", default="")
    parser.add_argument("--base", help='base model: "embedded" (default), a diffusers folder or a checkpoint')
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                        help="stack this LoRA (repeat for several)")
    parser.add_argument("--lora-dir", "--lora_dir", type=Path, help="folder of LoRAs that prompt tags may name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0, help="classifier-free guidance scale (default 7)")
    parser.add_argument("--sampler", default="", metavar="NAME",
                        help=f"A1111 sampler name, default: the model's own; one of: {', '.join(SAMPLERS)}")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--out", type=Path, required=True, help="the .png to write")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sdlora.generate import GenerateSettings, check_prompt_loras, generate, load_base, save_png
    from sdlora.samplers import resolve_sampler

    # typos fail before torch and the model load (seconds to minutes): the sampler, the <lora:...> names
    sampler = resolve_sampler(args.sampler) if args.sampler else ""
    library = _library(args.lora_dir)
    check_prompt_loras(args.prompt, [path for path, _ in map(lora_with_strength, args.lora)], library)
    from sdlora.stack import LoraStack

    pipeline, model_name = load_base(args.base)
    size = _default_size(pipeline)
    settings = GenerateSettings(args.prompt, args.negative_prompt, args.seed, args.steps, args.cfg,
                                args.width or size, args.height or size, model_name, sampler)
    settings.check()
    stack = LoraStack(pipeline)
    with stack.batch():
        for path, strength in map(lora_with_strength, args.lora):
            stack.add(path, strength)
    result = generate(pipeline, settings, stack=stack, library=library, on_progress=progress_bar("generate"))
    save_png(result.image, args.out, result.parameters)
    print(f"wrote {args.out}\n{result.parameters}")
    return 0


def _default_size(pipeline) -> int:
    unet = pipeline.unet
    return int(unet.config.sample_size) * int(getattr(pipeline, "vae_scale_factor", 8))


def _library(folder) -> dict[str, str] | None:
    if folder is None:
        return None
    from sdlora.library import scan

    return scan(folder).names()
