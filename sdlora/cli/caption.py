"""`sdlora caption DIR --model MODEL`: write a caption file for every image of a data set that has none.

Standard library only at module level; the captioners (onnxruntime, torch, transformers) load in `run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdlora.cli.loraargs import progress_bar

DESCRIPTION = """\
Caption the images of a training data set (the folder and its Kohya N_name subfolders) with a model:

  * a WD14-family tagger: a folder holding model.onnx and selected_tags.csv (needs onnxruntime:
    pip install 'sdlora[caption]'); writes comma-separated tags, character tags first;
  * a sentence captioner: any image-to-text model transformers loads (BLIP, GIT, Florence-2, ...), from a
    local folder, or a hub id when online.

Each caption is written as <image stem>.txt beside its image: the trigger, the prefix, the model's text
and the suffix, joined by commas. Images that already have a caption are skipped, so a stopped run goes
on where it stopped; --overwrite replaces them and keeps each old caption file as <stem>.txt.bak.
Nothing leaves the machine: the models run locally.

examples:
  sdlora caption my_images --model ~/models/wd-vit-tagger-v3 --trigger "zkw style"
  sdlora caption my_images --model ~/models/blip-base --prefix "a photo of" --overwrite

exit codes: 0 ok, 2 error (no such folder, model folder incomplete, bad threshold)."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("caption", help="caption a folder of training images with a tagger or captioner",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the data set folder")
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="a WD14 tagger folder, or an image-to-text model folder or hub id")
    parser.add_argument("--trigger", default="", help="trigger word(s) put first in every caption")
    parser.add_argument("--prefix", default="", help="text after the trigger, before the model's caption")
    parser.add_argument("--suffix", default="", help="text after the model's caption")
    parser.add_argument("--overwrite", action="store_true", help="replace existing captions (old ones kept as .txt.bak)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call (default 4)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    tagger = parser.add_argument_group("tagger options")
    tagger.add_argument("--general-threshold", type=float, default=0.35, help="keep general tags at or above (0.35)")
    tagger.add_argument("--character-threshold", type=float, default=0.85,
                        help="keep character tags at or above (0.85)")
    tagger.add_argument("--exclude", default="", help="comma-separated tags never written")
    tagger.add_argument("--keep-underscores", action="store_true", help="write long_hair, not long hair")
    tagger.add_argument("--rating", action="store_true", help="add the most likely rating tag last")
    sentence = parser.add_argument_group("sentence captioner options")
    sentence.add_argument("--max-new-tokens", type=int, default=40, help="longest caption in tokens (40)")
    sentence.add_argument("--prompt", default=None, help="a text prompt for models that take one")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    print(f"loading the captioner {args.model} ...", flush=True)
    from sdlora.caption import CaptionOptions, TaggerOptions, caption_folder, load_captioner

    tagger = TaggerOptions(args.general_threshold, args.character_threshold,
                           tuple(tag.strip() for tag in args.exclude.split(",") if tag.strip()),
                           not args.keep_underscores, args.rating)
    captioner = load_captioner(args.model, device=args.device, tagger=tagger,
                               max_new_tokens=args.max_new_tokens, prompt=args.prompt)
    options = CaptionOptions(args.trigger, args.prefix, args.suffix, args.batch_size, args.overwrite)
    print(f"captioning {args.folder} with the {captioner.kind} {captioner.name}", flush=True)
    result = caption_folder(args.folder, captioner, options, on_progress=progress_bar("captioning"))
    for image, reason in result.failed:
        print(f"skipped {image}: {reason}")
    print(result.summary())
    return 0
