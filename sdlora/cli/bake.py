"""`sdlora bake --base BASE --lora FILE:S ... OUT`: merge LoRAs into a base model (diffusers folder or one
single-file .safetensors checkpoint)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdlora.cli.loraargs import add_allow_pickle, lora_with_strength, progress_bar

DESCRIPTION = """\
Merge a stack of LoRAs into a base model's weights (W = W0 + sum of strength x delta, in float32) and
write the result. OUT ending in .safetensors: one checkpoint with the original (LDM) keys that A1111,
ComfyUI and diffusers' from_single_file load, its metadata ("sdlora_bake") naming the LoRAs, strengths
and hashes; a model of no standard SD size also gets OUT's name with .config (its configs, for sdlora and
diffusers). Any other OUT: a diffusers folder with safetensors weights plus sdlora_bake.json.
BASE is "embedded", a diffusers folder or a single-file checkpoint. An existing OUT is refused unless
--force."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bake", help="merge LoRAs into a base model and save it",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path,
                        help="the new .safetensors file (single-file checkpoint) or folder (diffusers); must not "
                             "exist unless --force")
    parser.add_argument("--base", required=True, metavar="BASE",
                        help='the base model: "embedded", a diffusers folder or a single-file checkpoint')
    parser.add_argument("--force", action="store_true",
                        help="overwrite OUTPUT if it exists (replaced once the new model is written)")
    parser.add_argument("--lora", action="append", required=True, metavar="FILE[:STRENGTH]",
                        help="a LoRA to merge in (repeat for several)")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"),
                        help="weights of a .safetensors output (default: as loaded; fp16 halves an fp32 file)")
    parser.add_argument("--family", choices=("sd1", "sd2", "sdxl"),
                        help="single-file key layout when the base's family cannot be detected (default: from the "
                             "base; SD1, or SDXL with two text encoders)")
    add_allow_pickle(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sdlora.extract import bake

    loras = [lora_with_strength(text) for text in args.lora]
    out = bake(args.base, loras, args.output, on_progress=progress_bar("bake"), family=args.family,
               dtype=args.dtype, allow_pickle=args.allow_pickle, force=args.force)
    print(f"wrote {out}: {args.base} + " + ", ".join(f"{Path(p).stem}:{s}" for p, s in loras))
    return 0
