"""`sdlora library list|dupes|tag|favourite|move`: the LoRA library from the command line (docs/library.md).

Standard library only at module level; `sdlora.library` (torch-free) is imported in `run`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
The LoRA library: one or several folders (--lora-dir, repeat it), scanned from the safetensors headers
(cached in ~/.cache/sdlora, so a second listing reads no file).

  list       the LoRAs, filtered by --query words, --folder, --tag, --base-model, --favourites
  dupes      groups of files with the same tensor data (any name, metadata or folder); --keep FILE keeps
             that file and moves the others of its group, with their side files, to .trash/ in their
             library folder (nothing is deleted)
  tag        add (--add) or remove (--remove) your own tags of FILEs (kept in <stem>.json)
  favourite  mark FILEs favourite (--off: no longer)
  move       move FILEs with their side files (.json, .civitai.info, previews, ...) into --to FOLDER,
             which must be inside a --lora-dir; a name already there is never overwritten

examples:
  sdlora library list --lora-dir loras --lora-dir /mnt/more --tag style --base-model "SDXL 1.0"
  sdlora library dupes --lora-dir loras --keep loras/ink.safetensors
  sdlora library move loras/a.safetensors loras/b.safetensors --to loras/styles --lora-dir loras

exit codes: 0 ok, 2 error (a folder that is not there, a move outside the library, a name taken)."""

ACTIONS = ("list", "dupes", "tag", "favourite", "move")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("library", help="list, filter, tag, move your LoRAs; find duplicates",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE", help="LoRA files (tag, favourite, move)")
    parser.add_argument("--lora-dir", "--lora_dir", type=Path, action="append", default=[], dest="lora_dirs",
                        help="a library folder (repeat for several; default ./loras)")
    parser.add_argument("--query", default="", help="list: words that must all appear (name, tags, notes, ...)")
    parser.add_argument("--folder", default="", help="list: only this folder (relative to its library folder)")
    parser.add_argument("--tag", default="", help="list: only LoRAs with this tag")
    parser.add_argument("--base-model", "--base_model", default="",
                        help='list: only this base model (Civitai\'s, e.g. "SD 1.5", else the family: sd1, sdxl)')
    parser.add_argument("--favourites", action="store_true", help="list: only favourites")
    parser.add_argument("--json", action="store_true", help="list, dupes: print JSON")
    parser.add_argument("--keep", type=Path, action="append", default=[],
                        help="dupes: keep this file, move the rest of its group to .trash/ (repeat per group)")
    parser.add_argument("--add", default="", help="tag: tags to add, comma-separated")
    parser.add_argument("--remove", default="", help="tag: tags to remove, comma-separated")
    parser.add_argument("--off", action="store_true", help="favourite: unmark")
    parser.add_argument("--to", type=Path, help="move: the destination folder")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sdlora.errors import ConfigError

    roots = args.lora_dirs or [Path("loras")]
    if args.action in ("tag", "favourite", "move") and not args.files:
        raise ConfigError(f"library {args.action}: name the LoRA files")
    return {"list": _list, "dupes": _dupes, "tag": _tag, "favourite": _favourite, "move": _move}[args.action](
        args, roots)


def _list(args, roots) -> int:
    from sdlora.library import entry_dict, scan, search
    from sdlora.library.organise import filter_entries

    result = scan(roots)
    entries = filter_entries(search(result.entries, args.query), args.folder, args.tag, args.base_model,
                             args.favourites)
    if args.json:
        print(json.dumps([entry_dict(e) for e in entries], indent=1, ensure_ascii=False))
        return 0
    for e in entries:
        star = "*" if e.favourite else " "
        tags = f"  [{', '.join(e.tags)}]" if e.tags else ""
        print(f"{star} {e.name}  {e.base_model or '?'}  r{e.rank or '?'}  {Path(e.folder or '.') / Path(e.path).name}"
              f"{tags}")
    for e in result.errors:
        print(f"! {e.path}: {e.error}")
    print(f"{len(entries)} of {len(result.entries)} LoRA(s)")
    return 0


def _dupes(args, roots) -> int:
    from sdlora.cli.loraargs import progress_bar
    from sdlora.errors import ConfigError
    from sdlora.library import scan
    from sdlora.library.dupes import find_duplicates, keep_one

    groups = find_duplicates(scan(roots).entries, on_progress=progress_bar("hashing"))
    keep = {str(Path(k).resolve()) for k in args.keep}
    kept = set()
    for group in groups:
        chosen = [e.path for e in group.entries if str(Path(e.path).resolve()) in keep]
        if chosen:
            print(keep_one(group, chosen[0], roots).message() + f" (kept {chosen[0]})")
            kept.add(str(Path(chosen[0]).resolve()))
    unknown = keep - kept
    if unknown:
        raise ConfigError(f"--keep {', '.join(sorted(unknown))}: not a duplicate in the library")
    if args.json:
        print(json.dumps([{"sha256": g.sha256, "files": [e.path for e in g.entries]} for g in groups], indent=1))
        return 0
    for group in groups:
        print(f"{group.short_hash}: " + ", ".join(e.path for e in group.entries))
    print(f"{len(groups)} group(s) of duplicates" + (" (before the moves above)" if kept else ""))
    return 0


def _tag(args, roots) -> int:
    from sdlora.library.organise import parse_tags, tag_files

    changed = tag_files(_checked(args.files), parse_tags(args.add), parse_tags(args.remove))
    print(f"tags changed on {changed} of {len(args.files)} LoRA(s)")
    return 0


def _favourite(args, roots) -> int:
    from sdlora.library.organise import set_favourite

    for path in _checked(args.files):
        set_favourite(path, not args.off)
    print(f"{'unmarked' if args.off else 'marked'} {len(args.files)} LoRA(s)")
    return 0


def _move(args, roots) -> int:
    from sdlora.errors import ConfigError
    from sdlora.library.organise import move_loras

    if args.to is None:
        raise ConfigError("library move: give --to FOLDER (inside a --lora-dir)")
    result = move_loras(_checked(args.files), args.to, roots)
    print(result.message())
    return 0 if not result.skipped else 2


def _checked(files) -> list[Path]:
    from sdlora.errors import ConfigError

    for path in files:
        if not (path.is_file() and path.suffix == ".safetensors"):
            raise ConfigError(f"{path}: not a .safetensors LoRA file")
    return list(files)
