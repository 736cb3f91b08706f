"""`sdlora inspect FILE [--json]`: what a LoRA file is, from its header alone.

Standard library only (no torch, no diffusers), so that it answers in well under a second
including interpreter start; see benchmarks/inspect_speed.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Show a LoRA file's format, base family, components, module count, kinds, ranks, alphas, dtypes,
trigger words (modelspec.trigger_phrase), top tags (the most frequent ss_tag_frequency caption tags),
hashes (stored sshs_* values, the tensor-data SHA-256 computed now and A1111's 12-character short hash)
and all metadata. Reads only the file header (and the few bytes
of the alpha values and the tensor data for the hash); nothing is loaded into memory.

Another kind of file is named ("a PNG image, not a LoRA"); --parameters shows the generation
parameters a PNG holds.

exit codes: 0 ok, 2 the file is not a readable LoRA (the message says why)."""

_LONG = 160  # metadata values longer than this are shortened in the text view (use --json for all)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "inspect",
        help="show a LoRA's format, family, ranks, alphas, trigger words, top tags, hashes and metadata",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", type=Path, help="the LoRA (.safetensors file or PEFT adapter folder)")
    parser.add_argument("--json", action="store_true", help="print everything as JSON")
    parser.add_argument(
        "--no-hash", action="store_true", help="skip hashing the tensor data (faster on huge files)"
    )
    parser.add_argument(
        "--parameters", action="store_true",
        help="FILE is a PNG image: show the generation parameters (A1111's, as sdlora generate writes them) "
        "it holds",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sdlora.formats.summary import summarise

    if args.parameters:
        return _show_parameters(args.file)
    info = summarise(args.file, with_hash=not args.no_hash)
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0


def _show_parameters(path: Path) -> int:
    from sdlora.errors import FormatError
    from sdlora.filekind import png_parameters

    try:
        text = png_parameters(path)
    except OSError as err:
        raise FormatError(f"{path}: cannot read it ({err.strerror or err})") from err
    if text is None:
        raise FormatError(f"{path.name}: no generation parameters: not a PNG, or a PNG without a "
                          "'parameters' text chunk")
    print(text)
    return 0


def _join(counts: dict) -> str:
    return ", ".join(f"{value} ({n})" for value, n in counts.items()) or "-"


def format_text(info: dict) -> str:
    """The human-readable view of `summarise()`'s dict."""
    lines = [
        f"file:        {info['file']}",
        f"format:      {info['format']}",
        f"family:      {info['family'] or 'unknown (not SD1/SD2/SDXL or embedded shaped)'}",
        f"components:  {', '.join(info['components']) or '-'}",
        f"modules:     {info['modules']} ({_join(info['kinds'])})",
        f"ranks:       {_join(info['ranks'])}",
        f"alphas:      {_join(info['alphas'])}",
        f"dtypes:      {_join(info['dtypes'])}",
        f"trigger words: {', '.join(info['trigger_words']) or '-'}",
        f"top tags:    {', '.join(info['top_tags']) or '-'}",
    ]
    lines += [f"warning: {text}" for text in info.get("warnings", ())]
    if info["unrecognised_keys"]:
        lines.append(
            f"unrecognised keys: {len(info['unrecognised_keys'])} (e.g. {info['unrecognised_keys'][0]})"
        )
    lines.append("hashes:")
    lines += [f"  {name}: {value}" for name, value in info["hashes"].items() if value is not None]
    lines.append(f"metadata ({len(info['metadata'])} keys):")
    for key, value in sorted(info["metadata"].items()):
        shown = value if len(value) <= _LONG else value[:_LONG] + f"... ({len(value)} chars)"
        lines.append(f"  {key}: {shown}")
    return "\n".join(lines)
