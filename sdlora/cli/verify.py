"""`sdlora verify FILE [--base embedded|sd1|sd2|sdxl|flux|MODEL_PATH]`: the load report, a verdict for every key of a LoRA.

Standard library only at module level; the library is imported inside `run`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Check a LoRA against a base model and give every key of the file a verdict: applied,
unknown_module (with the nearest module name), shape_mismatch (both shapes) or unsupported_kind.
Keys the reader skipped and bundled embeddings are listed too; nothing is left out.
The base is `embedded` (sdlora's shipped model), a family (sd1, sd2, sdxl, flux: the architectures built from the configs shipped in
sdlora/configs/models/, no weights), a diffusers model folder (only its config.json files are read; the
model is built on the meta device) or a single-file .safetensors checkpoint (only its header is read,
to tell its family).

exit codes: 0 every key applies, 1 some keys do not (see the report), 2 error (bad file or base)."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "verify",
        help="check a LoRA against embedded (default), sd1/sd2/sdxl/flux or a model folder: a verdict per key",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", type=Path, help="the LoRA (.safetensors file or PEFT adapter folder)")
    parser.add_argument(
        "--base",
        default="embedded",
        metavar="embedded|sd1|sd2|sdxl|flux|MODEL_PATH",
        help="'embedded' (the default, as for every command), a family name, a diffusers model folder or a "
        ".safetensors checkpoint to check against",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--all", action="store_true", help="list every key, not only the ones that do not apply"
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sdlora.arch.family import EMBEDDED
    from sdlora.cli.loraargs import stage

    stage("verify", f"checking {args.file} against {args.base}")
    from sdlora.base.ref import check_target
    from sdlora.formats import load_lora
    from sdlora.report import check_lora

    target = check_target(args.base)
    lora = load_lora(args.file, table=None if isinstance(target, str) else target)
    report = check_lora(lora, target, EMBEDDED if str(args.base).strip() == EMBEDDED else None)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table(all_keys=args.all))
    return 0 if report.ok else 1
