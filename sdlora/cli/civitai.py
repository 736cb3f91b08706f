"""`sdlora civitai scan|info|download|token`: look LoRAs up on Civitai by hash, download by URL or id.

Standard library only at module level; the client (httpx) is imported inside `run`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DESCRIPTION = """\
Connect the LoRA library to Civitai (https://civitai.com, or --civitai-url / SDLORA_CIVITAI_URL).

What is sent where:
  scan, info   send each file's SHA-256 (and the header's tensor hash, when it holds one) to
               <civitai-url>/api/v1/model-versions/by-hash/<hash>, then fetch the model page data and one
               preview image. No file content, name or path leaves this machine. Files Civitai does not
               know are remembered for a week and not asked again (--refresh asks again).
  download     asks <civitai-url>/api/v1 for the model or version, then fetches the file from the address
               Civitai gives (it redirects to its storage) or from the https URL you typed.
  The API token (CIVITAI_API_TOKEN, --token or `sdlora civitai token`, kept 0600 in
  $XDG_CONFIG_HOME/sdlora/civitai.json) is sent only to the Civitai host, in an Authorization header; it is
  never printed, logged or written into a file sdlora makes.
  --offline or SDLORA_OFFLINE=1 makes no network call at all.

Beside each LoRA found: <stem>.civitai.info (Civitai's answer), <stem>.json (A1111 notes: activation text,
sd version, description, only where empty) and <stem>.preview.png (unless a preview exists).

exit codes: 0 ok, 2 an error (one line says why)."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("civitai", help="look LoRAs up on Civitai by hash; download by URL or id",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--civitai-url", help="Civitai's address (default https://civitai.com or SDLORA_CIVITAI_URL)")
    common.add_argument("--token", help="API token for this call (else CIVITAI_API_TOKEN, else the saved one)")
    common.add_argument("--offline", action="store_true", help="make no network call (also SDLORA_OFFLINE=1)")
    common.add_argument("--timeout", type=float, default=None, help="seconds without an answer before a retry (30)")
    common.add_argument("--nsfw", choices=["pg", "pg13", "r", "x", "xxx"], default=None,
                        help="the highest image level a preview may have (default pg)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    scan = actions.add_parser("scan", parents=[common], help="look up every LoRA of a folder by hash",
                              description="Look up every .safetensors under DIR (4 requests at a time); files "
                                          "with a .civitai.info are skipped, so a scan cut short resumes.")
    scan.add_argument("dir", nargs="?", type=Path, default=Path("loras"), help="the LoRA folder (default ./loras)")
    scan.add_argument("--refresh", action="store_true", help="ask again for scanned files and remembered misses")
    info = actions.add_parser("info", parents=[common], help="look one LoRA file up by hash (or show its saved info)")
    info.add_argument("file", type=Path)
    info.add_argument("--refresh", action="store_true", help="ask Civitai even when a .civitai.info exists")
    down = actions.add_parser("download", parents=[common], help="download a LoRA into the library",
                              description="TARGET: a Civitai model or version URL, a version id (a bare number), "
                                          "model:ID (its newest version) or an https file URL. The file is "
                                          "resumed after a cut, checked against Civitai's SHA-256 and by "
                                          "sdlora's loader, then its info and preview are fetched.")
    down.add_argument("target")
    down.add_argument("--lora-dir", type=Path, default=Path("loras"), help="the library folder (default ./loras)")
    down.add_argument("--folder", default="{base_model}/",
                      help="folder template inside the library: {base_model}, {model_name}, {model_id}, "
                           "{version_name}, {version_id}, {type}, {creator} (default {base_model}/)")
    token = actions.add_parser("token", help="save an API token (read from stdin) in the user settings file (0600)")
    token.add_argument("--remove", action="store_true", help="remove the saved token")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.action == "token":
        return _save_token(args)
    from sdlora.civitai.client import CivitaiClient
    from sdlora.civitai.settings import load_settings

    settings = load_settings(url=args.civitai_url, token=args.token, offline=args.offline, timeout=args.timeout,
                             nsfw=args.nsfw)
    with CivitaiClient(settings) as client:
        return {"scan": _scan, "info": _info, "download": _download}[args.action](args, client)


def _stores():
    from sdlora.civitai.misses import MissMemory, default_misses_path
    from sdlora.filehash import FileHashCache, default_cache_path

    return FileHashCache(default_cache_path()), MissMemory(default_misses_path())


def _scan(args, client) -> int:
    from sdlora.civitai.lookup import FAILED, FOUND, scan
    from sdlora.cli.loraargs import progress_bar

    hashes, misses = _stores()
    results = scan(args.dir, client, hashes, misses, refresh=args.refresh, on_progress=progress_bar("civitai scan"))
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
        if result.status in (FOUND, FAILED):
            print(f"{result.status:>6}  {Path(result.path).name}: {result.message}")
    print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no .safetensors files")
    return 0


def _info(args, client) -> int:
    from sdlora.civitai.info import info_path, read_info, summary
    from sdlora.civitai.lookup import FOUND, lookup_file

    version = None if args.refresh else read_info(args.file)
    if version is None:
        if not args.file.is_file():
            from sdlora.errors import ConfigError

            raise ConfigError(f"{args.file}: no such file")
        hashes, misses = _stores()
        result = lookup_file(args.file, client, hashes, misses, refresh=args.refresh)
        hashes.save()
        misses.save()
        if result.status != FOUND:
            print(f"{args.file.name}: {result.status}: {result.message}")
            return 0
        version = result.version
    found = summary(version)
    for label, value in (("model", found["model_name"]), ("version", found["version_name"]),
                         ("base model", found["base_model"]), ("trigger words", ", ".join(found["trained_words"])),
                         ("tags", ", ".join(found["tags"])), ("ids", f"model {found['model_id']}, version {found['version_id']}"),
                         ("saved in", str(info_path(args.file)))):
        print(f"{label + ':':<15}{value}")
    return 0


def _download(args, client) -> int:
    from sdlora.civitai.download import download
    from sdlora.filehash import FileHashCache, default_cache_path

    hashes = FileHashCache(default_cache_path())
    args.lora_dir.mkdir(parents=True, exist_ok=True)  # a first download starts the library
    result = download(args.target, args.lora_dir, client, template=args.folder, hashes=hashes,
                      on_progress=_bytes_bar())
    hashes.save()
    print(f"saved {result.path} (SHA-256 {result.sha256[:10].upper()})")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _bytes_bar():
    """A tqdm bar in bytes (with speed and time left) for download progress."""
    state = {"bar": None}

    def update(progress) -> None:
        from tqdm import tqdm

        if state["bar"] is None:
            state["bar"] = tqdm(total=progress.total or None, initial=progress.done, unit="B", unit_scale=True,
                                desc=progress.message[:30], file=sys.stderr, leave=False)
        bar = state["bar"]
        bar.n = progress.done
        bar.refresh()
        if progress.total and progress.done >= progress.total:
            bar.close()
            state["bar"] = None

    return update


def _save_token(args) -> int:
    from sdlora.civitai.settings import update_user_settings

    if args.remove:
        print(f"removed the token from {update_user_settings(token=None)}")
        return 0
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass("Civitai API token: ")
    else:
        value = sys.stdin.readline()
    value = value.strip()
    if not value:
        from sdlora.errors import ConfigError

        raise ConfigError("no token given; paste it after the prompt (or pipe it in)")
    path = update_user_settings(token=value)
    print(f"saved the token in {path} (readable by you only)" if os.name != "nt" else f"saved the token in {path}")
    return 0
