"""`sdlora generate --prompt ... [--base MODEL] [--lora FILE[:STRENGTH]] ... --out PNG`, or `--recipe IMAGE|NAME`."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdlora.cli.loraargs import add_allow_pickle, lora_with_strength, progress_bar, stage
from sdlora.samplers import SAMPLERS

DESCRIPTION = """\
Draw one image with a stack of LoRAs. --base defaults to sdlora's embedded model. Prompt tags
<lora:NAME:0.8>, <lora:NAME:TE:UNET> and <lora:NAME:te=0.5:unet=1> work (A1111 syntax); NAME is a
--lora file's stem or a file in --lora-dir. The PNG carries A1111-style parameters text (tEXt chunk
"parameters"), including Lora hashes, so A1111/Civitai read the settings back.

--recipe IMAGE|NAME draws again what an image was drawn with (its PNG text or JPEG/WebP EXIF parameters,
or a recipe saved in the web UI): prompt, negative prompt, steps, sampler, CFG, seed, size and the
LoRA stack, each LoRA found in --lora-dir by its hash first, then by name. Options given on the command
line replace the recipe's values. A LoRA the library lacks is named with its hash, and nothing is drawn."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("generate", help="text-to-image with LoRAs",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", help="what to draw (required without --recipe)")
    parser.add_argument("--negative-prompt", "--negative_prompt", default=None)
    parser.add_argument("--recipe", metavar="IMAGE|NAME",
                        help="take prompt, settings and stack from an image's parameters or a saved recipe")
    parser.add_argument("--recipes-dir", "--recipes_dir", type=Path, default=None,
                        help="where saved recipes are (default ~/.local/share/sdlora/recipes)")
    parser.add_argument("--base", help='base model: "embedded" (default), a diffusers folder or a checkpoint')
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                        help="stack this LoRA (repeat for several)")
    parser.add_argument("--lora-dir", "--lora_dir", type=Path, action="append", default=[],
                        help="a folder of LoRAs that prompt tags and recipes may name (repeat for several)")
    parser.add_argument("--seed", type=int, default=None,
                        help="default 0; -1: a random seed (written into the PNG's parameters)")
    parser.add_argument("--steps", type=int, default=None, help="default 20")
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default 7)")
    parser.add_argument("--sampler", default=None, metavar="NAME",
                        help=f"A1111 sampler name, default: the model's own; one of: {', '.join(SAMPLERS)}")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--out", type=Path, required=True, help="the .png to write")
    parser.add_argument("--grid-x", "--grid_x", metavar="NAME:VALUES",
                        help="draw a strength grid instead of one image: the columns are the strengths of the "
                             "--lora NAME (its file stem), e.g. style:0,0.5,1")
    parser.add_argument("--grid-y", "--grid_y", metavar="NAME:VALUES", default=None,
                        help="the grid's rows: seed:1,2,3 (default: --seed and --seed + 1) or another --lora's "
                             "strengths, e.g. pose:0,1")
    add_allow_pickle(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    stage("generate", "starting (loading torch and diffusers)")
    from sdlora.base.load import load_base
    from sdlora.base.native import native_resolution_of
    from sdlora.generate import (
        GenerateSettings,
        check_prompt_loras,
        dtype_name,
        generate,
        random_seed,
        save_png,
    )
    from sdlora.samplers import resolve_sampler

    # typos fail before torch and the model load (seconds to minutes): the sampler, the <lora:...> names
    loras = [*_recipe_into(args), *map(lora_with_strength, args.lora)]
    sampler = resolve_sampler(args.sampler) if args.sampler else ""
    library = _library(args.lora_dir)
    check_prompt_loras(args.prompt, [path for path, _ in loras], library)
    from sdlora.stack import LoraStack

    stage("generate", f"loading the base model {args.base or 'embedded'}")
    pipeline, model_name = load_base(args.base, allow_pickle=args.allow_pickle)
    print(f"base: {model_name} ({dtype_name(pipeline)})")
    size = native_resolution_of(pipeline)
    seed = random_seed() if args.seed == -1 else args.seed
    settings = GenerateSettings(args.prompt, args.negative_prompt, seed, args.steps, args.cfg,
                                args.width or size, args.height or size, model_name, sampler)
    settings.check()
    stack = LoraStack(pipeline)
    if loras:
        stage("generate", f"applying {len(loras)} LoRA(s)")
    with stack.batch():
        for path, strength in loras:
            stack.add(path, strength)
    if args.grid_x:
        image, parameters = _grid(args, pipeline, settings, stack, library)
    else:
        stage("generate", f"drawing {settings.width} x {settings.height}, {settings.steps} steps")
        result = generate(pipeline, settings, stack=stack, library=library, on_progress=progress_bar("generate"))
        image, parameters = result.image, result.parameters
    save_png(image, args.out, parameters)
    print(f"wrote {args.out}\n{parameters}")
    return 0


DEFAULTS = {"negative_prompt": "", "seed": 0, "steps": 20, "cfg": 7.0, "sampler": ""}


def _recipe_into(args) -> list[tuple[str, object]]:
    """Fill the options the user left out from --recipe (then from DEFAULTS); returns the recipe's stack as
    (file, Strength) pairs, each LoRA found in --lora-dir. Without --recipe: DEFAULTS only, no LoRAs."""
    from sdlora.errors import ConfigError

    if args.recipe is None:
        if not args.prompt:
            raise ConfigError("give --prompt (what to draw) or --recipe IMAGE|NAME")
        _fill(args, {})
        return []
    from sdlora.library import scan
    from sdlora.recipes import match_loras, missing_text, recipe_from
    from sdlora.samplers import SAMPLERS

    recipe = recipe_from(args.recipe, args.recipes_dir)
    sampler = recipe.sampler if recipe.sampler in SAMPLERS else ""  # a name sdlora cannot make: the model's own
    _fill(args, {"prompt": recipe.prompt, "negative_prompt": recipe.negative_prompt, "seed": recipe.seed,
                 "steps": recipe.steps, "cfg": recipe.cfg, "sampler": sampler, "width": recipe.width,
                 "height": recipe.height})
    if not recipe.loras:
        return []
    if not args.lora_dir:
        raise ConfigError(f"the recipe stacks {len(recipe.loras)} LoRA(s): give --lora-dir, the library that "
                          "holds them")
    matches = match_loras(recipe, scan(list(args.lora_dir)).entries)
    gone = missing_text(matches)
    if gone:
        raise ConfigError(f"{gone}; download them (e.g. Civitai's search by hash) into --lora-dir")
    return [(m.entry.path, m.lora.strength) for m in matches]


def _fill(args, values: dict) -> None:
    for key, value in {**DEFAULTS, **{k: v for k, v in values.items() if v is not None}}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def _grid(args, pipeline, settings, stack, library):
    """(sheet, parameters) of a strength grid over the stack (strengths changed in place, sdlora.grid)."""
    from dataclasses import replace

    from sdlora.generate import generate
    from sdlora.grid import SEED, strength_grid

    columns = _axis(args.grid_x, "--grid-x")
    rows = _axis(args.grid_y or f"{SEED}:{settings.seed},{settings.seed + 1}", "--grid-y")
    first = {}

    def draw(seed: int):
        result = generate(pipeline, replace(settings, seed=seed), stack=stack, library=library)
        first.setdefault("parameters", result.parameters)
        return result.image

    grid = strength_grid(stack, draw, columns, rows, settings.seed, on_progress=progress_bar("grid"))
    return grid.image, f"{first['parameters']}\n{grid.describe()}"


def _axis(text: str, option: str):
    from sdlora.errors import ConfigError
    from sdlora.grid import SEED, Axis, parse_values

    name, sep, values = text.rpartition(":")
    if not sep or not name:
        raise ConfigError(f"{option} {text!r}: write NAME:VALUES, e.g. style:0,0.5,1 or seed:1,2")
    return Axis(name, parse_values(values, option, whole=name == SEED))


def _library(folders) -> dict[str, str] | None:
    if not folders:
        return None
    from sdlora.library import scan

    return scan(list(folders)).names()
