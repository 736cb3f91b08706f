"""`sdlora meta FILE [--set KEY=VALUE ...] [--unset KEY ...] (--output OUT | --in-place)`: show or edit metadata.

Standard library only at module level; the library (sdlora.formats.metaedit, torch-free) is imported in `run`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from sdlora.cli.loraargs import refuse_existing

DESCRIPTION = """\
Without edits: print the file's metadata (one KEY: VALUE line each; long values are shortened, --json
prints everything).

With edits: write the file with new metadata to --output OUT (a new file; --force overwrites one), or
rewrite FILE itself with --in-place. Edits apply in this order: --strip, --unset, --set, then --title,
--trigger and --description (an empty value removes that key). Only the header is rewritten: the tensor
bytes are copied unchanged, so sshs_model_hash (the tensor-data SHA-256 that A1111 and Civitai show)
stays the same; sshs_legacy_hash is recomputed on the written file. Both are always computed, never set
by hand. The file is written atomically: on any error the original (or an existing OUT) is untouched.

examples:
  sdlora meta style.safetensors
  sdlora meta style.safetensors --title "My style" --trigger sks --output style-clean.safetensors --strip
  sdlora meta style.safetensors --set modelspec.author=me --unset ss_training_comment --in-place

exit codes: 0 ok, 2 error (unreadable file, bad edit, OUT exists, no --output/--in-place for an edit)."""

_LONG = 160  # values longer than this are shortened in the text view (--json shows all)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("meta", help="show or edit a LoRA's metadata (the tensor hash is kept)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="the LoRA (.safetensors)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_pairs",
                        help="set KEY to VALUE (repeat for several; VALUE may be empty)")
    parser.add_argument("--unset", action="append", default=[], metavar="KEY", help="remove KEY (repeat for several)")
    parser.add_argument("--strip", action="store_true",
                        help="keep only the keys loaders need (network module, dim, alpha, base model, modelspec "
                             "architecture), then apply the other edits")
    parser.add_argument("--title", help="set modelspec.title (empty: remove it)")
    parser.add_argument("--trigger", help="set modelspec.trigger_phrase, the trigger words (empty: remove it)")
    parser.add_argument("--description", help="set modelspec.description (empty: remove it)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output", "-o", type=Path, metavar="OUT", help="write the edited file here")
    where.add_argument("--in-place", action="store_true", help="rewrite FILE itself")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument("--json", action="store_true", help="print the metadata (after an edit: as written) as JSON")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sdlora.formats.metaedit import Edits, edit_metadata, read_metadata

    edits = _edits(args)
    if edits == Edits() and args.output is None and not args.in_place:
        metadata = read_metadata(args.file)
        print(json.dumps(metadata, indent=2, ensure_ascii=False) if args.json else format_text(metadata))
        return 0
    if args.output is None and not args.in_place:
        from sdlora.errors import ConfigError

        raise ConfigError(f"{args.file}: an edit needs --output OUT (write a new file) or --in-place (rewrite "
                          f"{args.file.name} itself)")
    if args.output is not None:
        refuse_existing(args.output, args.force)
    edit = edit_metadata(args.file, edits, None if args.in_place else args.output)
    print(json.dumps(edit.after, indent=2, ensure_ascii=False) if args.json else _summary(edit))
    return 0


def _edits(args: argparse.Namespace):
    """The `Edits` the options ask for (equal to `Edits()` when none was given)."""
    from sdlora.formats.metaedit import Edits

    return Edits(strip=args.strip, unset=list(args.unset), set_keys=dict(map(_pair, args.set_pairs)),
                 title=args.title, trigger_words=args.trigger, description=args.description)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        from sdlora.errors import ConfigError

        raise ConfigError(f"--set {text!r}: give KEY=VALUE, e.g. --set modelspec.title='My style'")
    return key.strip(), value


def format_text(metadata: dict[str, str]) -> str:
    """One `KEY: VALUE` line per key, sorted with numbers in keys by value (cloneofsimo's `text_encoder:2:rank`
    before `text_encoder:10:rank`); line breaks shown as \\n, long values shortened."""
    if not metadata:
        return "(no metadata)"
    width = min(max(len(key) for key in metadata), 40) + 1
    return "\n".join(f"{key + ':':<{width}} {_short(metadata[key])}" for key in sorted(metadata, key=_natural))


def _natural(key: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", key)]


def _short(value: str) -> str:
    value = value.replace("\r", "\\r").replace("\n", "\\n")
    if len(value) <= _LONG:
        return value
    return f"{value[:_LONG]}... ({len(value)} characters; --json shows all)"


def _summary(edit) -> str:
    added, removed, changed = edit.changes()
    parts = [f"{len(keys)} {what}" + (f" ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})" if keys else "")
             for what, keys in (("added", added), ("removed", removed), ("changed", changed))]
    stored = edit.before.get("sshs_model_hash")
    if stored is None:
        hashed = "added"
    else:
        hashed = "kept" if edit.hash_kept else f"corrected (the file stored {stored[:16]}..., not its tensor hash)"
    return (f"wrote {edit.path}: {len(edit.before)} -> {len(edit.after)} metadata keys; {'; '.join(parts)}\n"
            f"sshs_model_hash {hashed}: {edit.after['sshs_model_hash']}")
