"""`sdlora merge OUT A.safetensors:0.7 B.safetensors:0.3 [--mode svd --rank N | --mode concat]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdlora.cli.loraargs import energy_lines, lora_with_strength, progress_bar, refuse_existing, stage

DESCRIPTION = """\
Merge several LoRAs, each with a weight, into one file.
  --mode svd (default): the exact weighted sum of the deltas, then SVD to --rank (or --energy);
                        without either, each module keeps the largest input rank.
  --mode concat:        exact; the factors are concatenated along rank with each weight x scale
                        folded in (plain LoRA modules only; the rank is the sum of the ranks).
Writes Kohya .safetensors with modelspec.merged_from."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("merge", help="merge weighted LoRAs into one",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="the .safetensors file to write")
    parser.add_argument("loras", nargs="+", metavar="FILE[:WEIGHT]", help="LoRAs with weights (default 1)")
    parser.add_argument("--mode", choices=("svd", "concat"), default="svd")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--rank", type=int, help="svd mode: rank of the result")
    target.add_argument("--energy", type=float, help="svd mode: keep this share of each module's energy")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"),
                        help="output dtype (default: the inputs' dtype; fp32 when they differ)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    stage("merge", f"reading {len(args.loras)} LoRAs")
    from sdlora.errors import ConfigError
    from sdlora.formats import load_lora, save_lora
    from sdlora.threads import apply_threads
    from sdlora.tools import merge

    refuse_existing(args.output, args.force)
    apply_threads()  # small matrices: on a small or busy machine, OpenMP threads only wait on each other
    if args.mode == "concat" and (args.rank or args.energy):
        raise ConfigError("--rank/--energy apply to --mode svd; concat keeps every rank exactly")
    items = [(load_lora(path), weight) for path, weight in map(lora_with_strength, args.loras)]
    result = merge(items, mode=args.mode, rank=args.rank, energy=args.energy, on_progress=progress_bar("merge"),
                   dtype=args.dtype)
    save_lora(result.lora, args.output, format="kohya")
    print(f"wrote {args.output}: {len(result.modules)} modules, rank {result.lora.metadata['ss_network_dim']}, "
          f"merged from {result.lora.metadata['modelspec.merged_from']}")
    if args.mode == "svd":
        print("\n".join(energy_lines(result, 10)))
    return 0
