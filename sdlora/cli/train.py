"""`sdlora train --config FILE [--set key=value ...] [--data DIR] [--base MODEL] [--output DIR] [--resume]`.

Standard library only at module level; the library (and torch) is imported inside `run`.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading

DESCRIPTION = """\
Train a LoRA from a folder of images (png, jpg, jpeg, webp, bmp) with same-stem .txt captions, or
Kohya N_name subfolders, and export it as a Kohya .safetensors (config.yaml beside it).
Settings come from the YAML config (a preset name such as `style`, or a YAML file), then --set overrides, then the
everyday flags below. Without --config, a base with its own shipped recipe uses it (`embedded`: the
`embedded` preset, the quickstart's). Unset sizes (data.resolution, buckets) come from the base (embedded
32, SD1 512, SD2-v 768, SDXL 1024); a size far from the base's is allowed but warned about.
Every stage (loading the base, scanning images, caching latents and text, compiling, sampling, saving) is
shown with counts, elapsed and ETA; the first Ctrl-C stops any of them within an item and keeps the newest
checkpoint. A summary of the data set is printed before training; a progress bar shows loss,
it/s and ETA; loss.csv and loss.png are written to the output folder.

examples:
  sdlora train --data my_images --base model.safetensors --output out
  sdlora train --config style --set optim.steps=800 --set data.trigger=zkw --data imgs
  sdlora train --config out/lora.yaml --resume          # continue from the newest checkpoint
  sdlora train --from-kohya preset.json --data imgs --steps 1000 --dry-run   # check a kohya preset
  sdlora train --base sdxl --estimate --vram 8GB      # peak memory, and what fits an 8 GB card
  accelerate launch --num_processes 2 -m sdlora train --config cfg.yaml   # several GPUs

exit codes: 0 done (or cancelled with Ctrl-C after saving a checkpoint), 2 bad input or settings."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help="train a LoRA from an image folder",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", help="a shipped preset name (quick, style, locon, ...) or a YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--data", help="image folder (data.path)")
    parser.add_argument("--base", help="base model: 'embedded', a diffusers folder, a .safetensors "
                        "checkpoint or a hub id (model.base)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (optim.threads; default: chosen from "
                        "the CPUs this process may use)")
    parser.add_argument("--output", "--output-dir", dest="output", help="output folder (output.dir)")
    parser.add_argument("--steps", type=int, help="optimizer steps (optim.steps)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                        help="continue from the newest checkpoint in the output folder, or from CHECKPOINT")
    parser.add_argument("--allow-pickle", "--allow_pickle", dest="allow_pickle", action="store_true",
                        help="allow .ckpt/.pt/.bin base checkpoints (loaded with torch.load(weights_only=True))")
    parser.add_argument("--from-kohya", dest="from_kohya", action="append", default=[], metavar="FILE",
                        help="import a kohya_ss GUI preset (.json) or sd-scripts config / dataset config "
                        "(.toml) (repeatable); applied after --config, before --set; prints each key it ignores")
    parser.add_argument("--force", action="store_true", help="--from-kohya: import a config that is not an "
                        "SD/SDXL LoRA recipe (a FLUX.1 or SD3 config, a full fine-tune) instead of refusing it")
    parser.add_argument("--dry-run", action="store_true", help="print the data set summary, the memory estimate "
                        "and the resolved config, then stop")
    parser.add_argument("--estimate", action="store_true", help="print the expected peak accelerator memory "
                        "(frozen weights, LoRA, gradients, optimizer states, activations), then stop; no images "
                        "or weights are read")
    parser.add_argument("--vram", metavar="SIZE", help="with --estimate: a memory budget such as 8GB; prints the "
                        "settings and presets that fit it")
    parser.set_defaults(run=run)
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = list(args.overrides)
    flags = {"data.path": args.data, "model.base": args.base, "output.dir": args.output, "optim.steps": args.steps,
             "optim.threads": args.threads}
    for key, value in flags.items():
        if value is not None:
            extra.append(f"{key}={json.dumps(value)}")  # a JSON string is a valid YAML scalar
    if args.allow_pickle:
        extra.append("model.allow_pickle=true")
    return extra


def _kohya_overrides(files: list[str], force: bool = False) -> list[str]:
    """The settings imported from kohya files; prints what was mapped and one line per ignored key."""
    if not files:
        return []
    from sdlora.settings.kohya_import import read_kohya

    imported = read_kohya(*files, force=force)
    print(f"kohya import: {len(imported.mapped)} keys mapped, {len(imported.ignored)} ignored")
    for kohya_key, key, value in imported.mapped:
        print(f"  {kohya_key} -> {key} = {value!r}")
    for line in imported.lines():
        print(f"  {line}")
    return imported.overrides()


class _Bar:
    """tqdm progress bar driven by StepInfo (created on the first step, so a resumed run starts mid-way)."""

    def __init__(self):
        self.bar = None

    def __call__(self, info) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=info.total, initial=info.step - 1, unit="step", dynamic_ncols=True)
        self.bar.set_postfix(loss=f"{info.loss:.4f}", lr=f"{info.lr:.2e}", refresh=False)
        self.bar.update(info.step - self.bar.n)
        if info.samples:
            self.bar.write(f"samples: {info.samples[0]}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _StageLines:
    """Prints each stage of a run on stderr as it changes: `caching latents 12/50 · 3 s elapsed · ETA 9 s`,
    redrawn in place on a terminal and at most every few seconds (and at the end of a stage) otherwise."""

    def __init__(self, bar: _Bar, stream=None):
        import sys

        self.bar, self.stream = bar, stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.stage, self.last = "", 0.0

    def __call__(self, info) -> None:
        import time

        new_stage, finished = info.message != self.stage, bool(info.total) and info.done >= info.total
        if self.bar.bar is not None:  # steps have begun: one line per stage, above the step bar
            if new_stage:
                self.stage = info.message
                self.bar.bar.write(info.line(), file=self.stream)
            return
        if not (new_stage or finished or self.tty or time.monotonic() - self.last > 5):
            return
        if new_stage and self.stage and self.tty:
            self.stream.write("\n")
        self.stage, self.last = info.message, time.monotonic()
        self.stream.write(("\r" + info.line() + "\033[K") if self.tty else info.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stage and self.tty and self.bar.bar is None:
            self.stream.write("\n")


def _config_source(args: argparse.Namespace, overrides: list[str]) -> tuple[str | None, str]:
    """The config to load and a line saying where the settings came from (a base's own preset when no
    --config was given)."""
    if args.config is not None:
        return args.config, ""
    from sdlora.settings.config import load_config
    from sdlora.settings.presets import base_preset

    preset = base_preset(load_config(None, overrides).model.base)
    if preset is None:
        return None, ""
    return preset, f"settings: the '{preset}' preset (the recipe for this base; give --config to choose another)"


def _cancel_on_ctrl_c(cancel: threading.Event):
    """First Ctrl-C: stop after the current step and save a checkpoint. Second: abort at once."""

    def handler(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGINT, handler)
    return None


def run(args: argparse.Namespace) -> int:
    from sdlora.cli.loraargs import stage

    # settings first, with no torch imported: a typo in --set fails in a fraction of a second
    from sdlora.settings.config import load_config

    overrides = [*_kohya_overrides(args.from_kohya, args.force), *_overrides(args)]
    config, source = _config_source(args, overrides)
    cfg = load_config(config, overrides)
    if source:
        print(source)
    if args.estimate or args.vram:
        return _estimate(cfg, args.vram)
    if args.dry_run:
        stage("train", "dry run: scanning the data set (no weights loaded)")
        return _dry_run(cfg)
    stage("train", "starting (loading torch and diffusers; the trainer's stages follow)")
    from sdlora.train import train

    bar, cancel = _Bar(), threading.Event()
    stages = _StageLines(bar)
    previous = _cancel_on_ctrl_c(cancel)
    try:
        result = train(cfg, on_step=bar, on_progress=stages, cancel=cancel, resume=args.resume)
    finally:
        stages.close()
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if result.cancelled:
        where = f" during {result.stages[-1]}" if result.stages and result.steps == 0 else ""
        print(f"cancelled at step {result.steps}{where}; checkpoint: {result.checkpoint or 'none'}"
              f"{' (continue with --resume)' if result.checkpoint else ''}")
        return 0
    for path in result.files:
        print(f"wrote {path}")
    if result.loss_plot:
        print(f"loss history: {result.loss_csv}, {result.loss_plot}")
    return 0


def _dry_run(cfg) -> int:
    """The data set summary, notes on base-dependent settings and the resolved config; no weights loaded."""
    from sdlora.cli.loraargs import stage
    from sdlora.settings.config import dump_config
    from sdlora.settings.resolution import resolve_base_settings
    from sdlora.train.auto_settings import fill_from_captions
    from sdlora.train.data import scan_dataset
    from sdlora.train.preflight import check_base_settings

    _check_torch_options(cfg)
    cfg, notes, _ = resolve_base_settings(cfg)
    check_base_settings(cfg)  # where the real run would stop before training: a rank, a bucket step, ...
    items, summary = scan_dataset(cfg.data, seed=cfg.optim.seed, base=str(cfg.model.base))
    cfg, filled = fill_from_captions(cfg, [item.caption for item in items if not item.is_reg])
    print("\n".join([*summary.lines(), *notes, *filled]), flush=True)
    stage("train", "estimating memory (building the model's shapes, no weights)")
    print(_estimate_line(cfg))
    print(dump_config(cfg), end="")
    return 0


def _check_torch_options(cfg) -> None:
    """fused backward's and fp8's settings checks; their modules import torch, so only when the option is on
    (the rest of the dry run loads no torch)."""
    if cfg.optim.fused_backward:
        from sdlora.train import fused

        fused.check(cfg)
    if cfg.optim.fp8_base:
        from sdlora.train import fp8

        fp8.check(cfg)


def _estimate_line(cfg) -> str:
    """One line for --dry-run; a base whose shapes are unknown before loading says so instead."""
    from sdlora.errors import ConfigError
    from sdlora.train.estimate import estimate

    try:
        return estimate(cfg).line()
    except ConfigError as err:
        return f"memory estimate: not available ({err})"


def _estimate(cfg, vram: str | None) -> int:
    """--estimate [--vram SIZE]: the peak-memory split, and what fits the budget."""
    from sdlora.settings.resolution import resolve_base_settings
    from sdlora.train import fused
    from sdlora.train.estimate import estimate, fit, parse_size

    fused.check(cfg)  # settings that cannot run at all; a missing optimizer package does not stop an estimate
    cfg, _, _ = resolve_base_settings(cfg)
    print(f"{cfg.model.base}, {cfg.data.resolution} px, batch {cfg.data.batch_size}, {cfg.optim.mixed_precision} "
          "precision (no images or weights read)")
    if vram is None:
        print("\n".join(estimate(cfg).lines()))
        return 0
    result = fit(cfg, parse_size(vram))
    print("\n".join([*result.current.lines(), *result.lines()]))
    return 0
