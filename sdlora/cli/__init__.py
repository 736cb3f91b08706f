"""Command-line interface: `sdlora <command> ...`.

Each command lives in its own module under `sdlora/cli/` with two functions:
`add_parser(subparsers)` (builds its argparse sub-parser) and `run(args) -> int`.
Command modules import only the standard library and `sdlora.errors` at module level, so that
building the parser stays fast; heavy imports (torch, diffusers) go inside `run`.
Errors a user can cause (`SdloraError`) are printed as one line and give exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

from sdlora.errors import SdloraError
from sdlora.quiet import quiet_third_party

# command name -> module under sdlora.cli; the order is the order in --help
COMMANDS: dict[str, str] = {
    "train": "train",
    "inspect": "inspect",
    "convert": "convert",
    "verify": "verify",
    "generate": "generate",
    "resize": "resize",
    "merge": "merge",
    "extract": "extract",
    "bake": "bake",
    "webui": "webui",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdlora", description="Stable Diffusion LoRA toolkit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        import_module(f"sdlora.cli.{module}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    quiet_third_party()
    try:
        return int(args.run(args) or 0)
    except SdloraError as err:
        print(f"sdlora {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
