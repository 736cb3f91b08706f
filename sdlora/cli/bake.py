"""`sdlora bake --base MODEL --lora FILE:S ... OUT`: merge LoRAs into a base model (diffusers folder)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdlora.cli.loraargs import lora_with_strength, progress_bar

DESCRIPTION = """\
Merge a stack of LoRAs into a base model's weights (W = W0 + sum of strength x delta, in float32) and
write the result as a diffusers folder with safetensors weights (plus sdlora_bake.json naming the
LoRAs, strengths and hashes). MODEL is "embedded", a diffusers folder or a single-file checkpoint."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bake", help="merge LoRAs into a base model and save it",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="the new folder (must not exist)")
    parser.add_argument("--base", required=True, help='the base model ("embedded", folder or checkpoint)')
    parser.add_argument("--lora", action="append", required=True, metavar="FILE[:STRENGTH]",
                        help="a LoRA to merge in (repeat for several)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sdlora.extract import bake

    loras = [lora_with_strength(text) for text in args.lora]
    out = bake(args.base, loras, args.output, on_progress=progress_bar("bake"))
    print(f"wrote {out}: {args.base} + " + ", ".join(f"{Path(p).stem}:{s:g}" for p, s in loras))
    return 0
