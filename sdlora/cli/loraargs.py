"""Shared pieces of the stack-manager commands: `FILE[:STRENGTH]` arguments and a tqdm progress bar.

Standard library only at module level (tqdm is imported when a bar is first shown).
"""

from __future__ import annotations

import sys


def lora_with_strength(text: str):
    """'style.safetensors:0.7' -> ('style.safetensors', Strength(0.7)); also 'FILE:0.5:1' (te:unet) and
    'FILE:te=0.5:unet=1' as in a prompt tag. Without a strength it is 1. A ':' that belongs to the path
    (C:/...) is kept: the strength is the first tail after a ':' that reads as one."""
    from sdlora.errors import ConfigError
    from sdlora.strength import Strength

    start = 0
    while (cut := text.find(":", start)) != -1:
        start = cut + 1
        if cut == 0:
            continue
        try:
            return text[:cut], Strength.parse(text[cut + 1:])
        except ConfigError:
            continue  # part of the path
    return text, Strength()


def stage(command: str, text: str) -> None:
    """One line on stderr saying what the command does next, printed before any slow import or load, so
    every command answers within a second (stdout stays the result, e.g. `verify --json`)."""
    print(f"sdlora {command}: {text}", file=sys.stderr, flush=True)


def progress_bar(description: str):
    """An `on_progress` callback drawing a tqdm bar on stderr (closed when done reaches total).

    The bar starts at the first report's count (`initial`), so its first rate is measured between two
    reports, not from a bar made an instant before (which showed "104857.60it/s")."""
    state = {"bar": None}

    def update(progress) -> None:
        from tqdm import tqdm

        bar = state["bar"]
        if bar is None:
            bar = state["bar"] = tqdm(total=progress.total, initial=progress.done, desc=description,
                                      file=sys.stderr, leave=False)
        else:
            bar.update(progress.done - bar.n)
        if progress.done >= progress.total:
            bar.close()
            state["bar"] = None

    return update


def add_allow_pickle(parser) -> None:
    """--allow-pickle, for every command that can read a base model (the loader's message names it)."""
    parser.add_argument("--allow-pickle", "--allow_pickle", dest="allow_pickle", action="store_true",
                        help="allow .ckpt/.pt/.pth/.bin models (read with torch.load(weights_only=True), which "
                             "cannot run code from the file)")


def refuse_existing(path, force: bool) -> None:
    from sdlora.errors import ConfigError

    if path.exists() and not force:
        raise ConfigError(f"{path}: already exists; pass --force to overwrite it")


def energy_lines(result, limit: int | None = None) -> list[str]:
    """Per-module 'energy kept, rank [old ->] new' lines, lowest energy first, and a note on the rest and
    on modules cut by randomized SVD (their error is measured, sdlora.lowrank)."""
    rows = sorted(result.modules.items(), key=lambda item: item[1].energy)
    lines = [f"  {m.energy * 100:8.4f}%  {_ranks(m):<14} {name}" for name, m in rows[:limit]]
    rest = rows[limit:] if limit is not None else []
    if rest:
        least = rest[0][1].energy
        kept = "all keep 100%" if least >= 1.0 - 5e-7 else f"each keeps at least {least * 100:.4f}%"
        lines.append(f"  ... {len(rest)} more modules ({kept})")
    randomized = [m for _, m in rows if m.randomized]
    if randomized:
        worst = max(m.error for m in randomized)
        lines.append(f"  {len(randomized)} large modules without factors were cut by randomized SVD; "
                     f"largest relative error |dW - kept| / |dW| = {worst:.2e}")
    return lines


def _ranks(module) -> str:
    if module.old_rank is None:
        return f"rank {module.new_rank}"
    return f"rank {module.old_rank} -> {module.new_rank}"
