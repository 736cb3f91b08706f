"""An allocation failure during setup or training becomes a `TrainingError` that names the settings to lower
(rank, batch size, resolution) with their values, instead of a traceback. Depends on torch and sdlora.errors.

torch reports a failed allocation as `torch.OutOfMemoryError` on an accelerator and as a plain RuntimeError
(`DefaultCPUAllocator: can't allocate memory` / `not enough memory`) on the CPU; both are recognised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from sdlora.errors import SdloraError, TrainingError

_ALLOCATION_TEXTS = ("out of memory", "can't allocate", "cannot allocate", "not enough memory",
                     "defaultcpuallocator")
TRAINING = ("data.batch_size", "data.resolution", "lora.rank")  # what a training step's memory grows with
LAYERS = ("lora.rank", "lora.conv_rank")  # what the LoRA layers' own size grows with


def is_allocation_failure(err: BaseException) -> bool:
    if isinstance(err, SdloraError):  # already said (an inner block's TrainingError)
        return False
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(err, RuntimeError) and any(text in str(err).lower() for text in _ALLOCATION_TEXTS)


def _setting(cfg, key: str) -> str:
    section, name = key.split(".")
    return f"{key} (now {getattr(getattr(cfg, section), name)})"


def describe(cfg, err: BaseException, where: str, lower: tuple[str, ...]) -> str:
    """One line: where it ran out, torch's own first line (shortened), and what to lower."""
    detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    names = [_setting(cfg, key) for key in lower]
    settings = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
    extra = "" if cfg.optim.gradient_checkpointing else "; optim.gradient_checkpointing=true also saves memory"
    return f"out of memory while {where} ({detail}): lower {settings}{extra}"


@contextlib.contextmanager
def allocation_errors(cfg, where: str | Callable[[], str], lower: tuple[str, ...] = TRAINING) -> Iterator[None]:
    """Turn an allocation failure inside the block into a TrainingError naming `lower`; `where` says what was
    running (a callable is asked when it fails: the current stage)."""
    try:
        yield
    except Exception as err:
        if not is_allocation_failure(err):
            raise
        place = where() if callable(where) else where
        raise TrainingError(describe(cfg, err, place, lower)) from None
