"""`sdlora resize IN OUT --rank N | --energy F`: lower a LoRA's rank by SVD, keeping its effective scale."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdlora.cli.loraargs import energy_lines, progress_bar, refuse_existing, stage

DESCRIPTION = """\
Resize every module of a LoRA by SVD: to a fixed rank (--rank) or to the smallest rank that keeps a
share of each module's energy (--energy 0.95 keeps 95% of sum(S^2)). The effective scale is kept
(new alpha = scale x new rank), so the resized LoRA acts the same at the same strength, up to the
dropped singular values. LoHa/LoKr/full modules become plain LoRA. Prints the energy kept per module.
Output: Kohya .safetensors (ss_network_dim "Dynamic" when ranks differ)."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("resize", help="resize a LoRA by SVD (fixed rank or energy)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="the LoRA to resize")
    parser.add_argument("output", type=Path, help="the .safetensors file to write")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--rank", type=int, help="new rank of every module")
    target.add_argument("--energy", type=float, help="keep this share of each module's energy, e.g. 0.95")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="output dtype (default: the input's)")
    parser.add_argument("--show", type=int, default=20, help="modules to list, lowest energy first (default 20)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    stage("resize", f"reading {args.input}")
    from sdlora.formats import load_lora, save_lora
    from sdlora.threads import apply_threads
    from sdlora.tools import resize

    refuse_existing(args.output, args.force)
    apply_threads()  # small matrices: on a small or busy machine, OpenMP threads only wait on each other
    result = resize(load_lora(args.input), rank=args.rank, energy=args.energy,
                    on_progress=progress_bar("resize"), dtype=args.dtype)
    save_lora(result.lora, args.output, format="kohya")
    print(f"wrote {args.output}: {len(result.modules)} modules, rank {result.lora.metadata['ss_network_dim']}, "
          f"lowest energy kept {result.min_energy() * 100:.4f}%")
    print("\n".join(energy_lines(result, args.show)))
    return 0
