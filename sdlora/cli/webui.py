"""`sdlora webui`: launch the Gradio web UI (sdlora_webui/ in the repository).

Gradio is imported inside `run`, never at module level, so `sdlora --help` and the other commands
stay fast and the library never depends on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "webui", help="launch the web UI (train, library, stack + generate, tools)",
        description="Launch the web UI. It binds to 127.0.0.1 unless --host says otherwise; every path "
                    "typed in the UI must lie inside --lora-dir, --output-dir or a --data-dir.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; anything else exposes the UI, with a warning)")
    parser.add_argument("--port", type=int, default=None, help="port (default: gradio's, 7860 or the next free)")
    parser.add_argument("--lora-dir", type=Path, action="append", default=None,
                        help="a LoRA library folder (read and write; repeat for several, uploads go to the first; "
                             "default ./loras)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"),
                        help="training runs, tool outputs and uploads (read and write; default ./outputs)")
    parser.add_argument("--data-dir", type=Path, action="append", default=None,
                        help="an extra read-only folder to train from (repeatable; default: the "
                             "repository's sample_data/)")
    parser.add_argument("--base", default="embedded",
                        help="default base model: 'embedded' or a model path (the Base menu starts there)")
    parser.add_argument("--models-dir", "--models_dir", dest="models_dir", type=Path, action="append", default=None,
                        help="a read-only folder of base models (diffusers folders, SD1/SD2/SDXL .safetensors "
                             "checkpoints) offered in the Generate tab's Base menu (repeatable)")
    parser.add_argument("--allow-pickle", "--allow_pickle", dest="allow_pickle", action="store_true",
                        help="let the UI load .ckpt/.pt/.pth/.bin models (torch.load(weights_only=True))")
    parser.add_argument("--max-work", "--max_work", type=int, default=None, metavar="N",
                        help="the most work one generation request may ask for, as width x height x steps x "
                             "images (default 104857600: 1024x1024 at 100 steps; 0: no limit)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sdlora.cli.loraargs import stage

    stage("webui", "starting the web UI (loading gradio and torch)")
    from sdlora_webui.app import build_app, default_state, launch

    data_dirs = tuple(args.data_dir) if args.data_dir else None
    # the base given on the command line is trusted (the person starting the server typed it)
    model_dirs = tuple(args.models_dir or ())
    if args.base != "embedded":
        model_dirs = (*model_dirs, Path(args.base))
    options = {"allow_pickle": args.allow_pickle}
    if args.max_work is not None:
        if args.max_work < 0:
            from sdlora.errors import ConfigError

            raise ConfigError(f"--max-work must be 0 (no limit) or more, got {args.max_work}")
        options["max_work"] = args.max_work
    state = default_state(args.lora_dir or [Path("loras")], args.output_dir, args.base, data_dirs, model_dirs, **options)
    launch(build_app(state), state, host=args.host, port=args.port)
    return 0
