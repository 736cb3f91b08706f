"""Command-line interface: `sdlora <command> ...`.

Each command lives in its own module under `sdlora/cli/` with two functions:
`add_parser(subparsers)` (builds its argparse sub-parser) and `run(args) -> int`.
Command modules import only the standard library and `sdlora.errors` at module level, so that
building the parser stays fast; heavy imports (torch, diffusers) go inside `run`.
Errors a user can cause (`SdloraError`, and file-system errors such as a full disk or a name too long)
are printed as one line and give exit code 2; output never crashes (see `main`).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from importlib import import_module

from sdlora.errors import SdloraError
from sdlora.quiet import quiet_third_party

# command name -> module under sdlora.cli; the order is the order in --help
COMMANDS: dict[str, str] = {
    "train": "train",
    "caption": "caption",
    "inspect": "inspect",
    "meta": "meta",
    "convert": "convert",
    "verify": "verify",
    "generate": "generate",
    "resize": "resize",
    "merge": "merge",
    "extract": "extract",
    "bake": "bake",
    "library": "library",
    "civitai": "civitai",
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
    """Run one command; returns the exit code. Whatever goes wrong with the output (a closed pipe, a
    character the terminal cannot show, a full disk) ends in one line on stderr, never a traceback."""
    for stream in (sys.stdout, sys.stderr):
        _escape_unencodable(stream)
    try:
        code = _run(argv)
    except BrokenPipeError:
        _discard_stdout()  # the reader (e.g. `| head`) has what it wanted: stop quietly
        return _CLOSED_PIPE
    failed = _flush_stdout(report=code == 0)  # now, not at interpreter exit (a traceback there)
    return code if failed is None else failed


_CLOSED_PIPE = 128 + 13  # as if killed by SIGPIPE, what shells report for `cat FILE | head`


def _flush_stdout(report: bool) -> int | None:
    """Flush what the command printed; on failure return an exit code (and, with `report`, say why: a
    command that already failed has said so) and drop the unwritable rest."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return _CLOSED_PIPE
    except OSError as err:
        _discard_stdout()
        if report:
            print(f"sdlora: error: cannot write the output: {describe_os_error(err)}", file=sys.stderr)
        return 2 if err.errno in _USER_ERRNOS else 1
    return None


def _run(argv: list[str] | None) -> int:
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
        _error(args.command, str(err))
        return 2
    except BrokenPipeError:
        raise
    except OSError as err:
        _error(args.command, describe_os_error(err))
        return 2 if err.errno in _USER_ERRNOS else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# file-system errors the user can fix (space, permissions, names); others (EIO...) exit 1
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG,
                errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ELOOP, errno.EFBIG}
_OS_HINTS = {
    errno.ENOSPC: "free some disk space or write somewhere else",
    errno.EDQUOT: "free some space (disk quota exceeded) or write somewhere else",
    errno.EACCES: "check the permissions, or write somewhere else",
    errno.EPERM: "check the permissions, or write somewhere else",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.ENAMETOOLONG: "use a shorter file name (most file systems allow 255 bytes per name)",
}


def describe_os_error(err: OSError) -> str:
    """'FILE: what happened; what to do' for an OSError (the file name is escaped, so it always prints)."""
    where = f"{err.filename}: " if err.filename is not None else ""
    what = err.strerror or str(err)
    hint = _OS_HINTS.get(err.errno)
    return f"{where}{what}" + (f"; {hint}" if hint else "")


def _error(command: str, message: str) -> None:
    print(f"sdlora {command}: error: {message}", file=sys.stderr)


def _escape_unencodable(stream) -> None:
    """Print what the stream's encoding cannot hold (lone surrogates from undecodable metadata, emoji on a
    Latin-1 terminal) as backslash escapes instead of raising UnicodeEncodeError."""
    try:
        stream.reconfigure(errors="backslashreplace")
    except (AttributeError, ValueError, OSError):  # not a TextIOWrapper (a test's capture), or closed
        pass


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not hit the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor behind stdout: nothing to flush
        pass
