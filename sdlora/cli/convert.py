"""`sdlora convert IN OUT [--to kohya|diffusers] [--dtype fp32|fp16|bf16]`: rewrite a LoRA in another dialect.

Standard library only at module level; the library (and torch) is imported inside `run`.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

DESCRIPTION = """\
Read a LoRA in any dialect sdlora knows (Kohya/Civitai, LyCORIS LoCon/LoHa/LoKr/full, DoRA,
diffusers, PEFT folders, attention-processor and cloneofsimo files) and write it as canonical Kohya
(loads in A1111, ComfyUI, sd-scripts and diffusers) or as a diffusers file
(`pipeline.load_lora_weights`). The output keeps every module's alpha (Kohya: a per-module `.alpha`,
never 0), the input metadata, and gets ss_*/modelspec.* metadata and sshs_* hashes. The write is
atomic: on any error nothing is written.

exit codes: 0 ok, 2 bad input or a LoRA the output format cannot hold (the message says why)."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert",
        help="convert a LoRA to canonical Kohya or diffusers format",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "input", type=Path, help="the LoRA to read (.safetensors file or PEFT adapter folder)"
    )
    parser.add_argument("output", type=Path, help="the .safetensors file to write")
    parser.add_argument(
        "--to", choices=("kohya", "diffusers"), default="kohya", help="output format (default kohya)"
    )
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="output dtype (default: keep)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sdlora.errors import FormatError
    from sdlora.formats import load_lora, save_lora

    if args.output.exists() and not args.force:
        raise FormatError(f"{args.output}: already exists; pass --force to overwrite it")
    if args.output.resolve() == args.input.resolve():
        raise FormatError(f"{args.output}: is the input file; choose another output path")
    lora = load_lora(args.input)
    save_lora(lora, args.output, format=args.to, dtype=args.dtype)
    print(summary(lora, args))
    return 0


def summary(lora, args: argparse.Namespace) -> str:
    """A few lines: what was read, what was written."""
    kinds = Counter(m.kind + ("+dora" if m.dora_axis else "") for m in lora.modules.values())
    ranks = Counter(m.rank for m in lora.modules.values())
    lines = [
        (
            f"read    {args.input}: {lora.format}, family {lora.family or 'unknown'}, "
            f"{len(lora.modules)} modules ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}), "
            f"components {', '.join(lora.components) or '-'}"
        ),
        f"ranks   {', '.join(f'{r} ({n})' for r, n in ranks.most_common())}",
        f"wrote   {args.output}: {args.to}" + (f", {args.dtype}" if args.dtype else ", dtype kept"),
    ]
    embeddings = lora.extras.get("embeddings", {})
    if embeddings:
        lines.append(f"kept    {len(embeddings)} bundled embeddings: {', '.join(sorted(embeddings))}")
    if lora.issues:
        lines.append(
            f"skipped {len(lora.issues)} keys sdlora cannot apply (see `sdlora verify`): {lora.issues[0].key}"
        )
    return "\n".join(lines)
