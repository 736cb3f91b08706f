"""`sdlora extract --base A --tuned B --rank N OUT`: a LoRA from two checkpoints by SVD of their difference."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdlora.cli.loraargs import add_allow_pickle, energy_lines, progress_bar, refuse_existing, stage

DESCRIPTION = """\
Extract a LoRA that turns BASE into TUNED: for every targeted module (UNet attention linears and 1x1
projections, text-encoder attention and MLP; plus 3x3 ResNet/sampler convs with --conv-rank), SVD of
TUNED - BASE, keeping --rank singular values (alpha = rank). BASE and TUNED are diffusers folders,
UNet .safetensors files with diffusers names, single-file checkpoints, or "embedded".
Modules that did not change are left out."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("extract", help="extract a LoRA from a base and a fine-tuned model",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="the .safetensors file to write")
    parser.add_argument("--base", required=True, help="the original model")
    parser.add_argument("--tuned", required=True, help="the fine-tuned model")
    parser.add_argument("--rank", type=int, required=True, help="rank of the LoRA")
    parser.add_argument("--conv-rank", "--conv_rank", type=int, help="also extract 3x3 convs at this rank")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    add_allow_pickle(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    stage("extract", f"reading {args.base} and {args.tuned} (one module at a time)")
    from sdlora.extract import extract
    from sdlora.formats import save_lora
    from sdlora.threads import apply_threads

    refuse_existing(args.output, args.force)
    apply_threads()  # small matrices: on a small or busy machine, OpenMP threads only wait on each other
    result = extract(args.base, args.tuned, args.rank, conv_rank=args.conv_rank, on_progress=progress_bar("extract"),
                     allow_pickle=args.allow_pickle)
    save_lora(result.lora, args.output, format="kohya", dtype=args.dtype)
    print(f"wrote {args.output}: {len(result.modules)} changed modules at rank {args.rank}")
    print("\n".join(energy_lines(result, 10)))
    return 0
