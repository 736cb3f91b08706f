"""`Progress(done, total, message)`: what long-running library functions pass to `on_progress`.

Standard library only, so that torch-free modules (library scan) can report progress too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Progress:
    """`done` of `total` steps; `message` names the current item (a file, a module)."""

    done: int
    total: int
    message: str = ""


ProgressCallback = Callable[[Progress], None]
# how a caller stops long work: an Event it sets, or a callable that answers True once it wants to stop
Cancel = threading.Event | Callable[[], bool] | None


def cancelled(cancel: Cancel) -> bool:
    """Whether `cancel` (see `Cancel`) asks to stop now."""
    if cancel is None:
        return False
    return cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel())


def report(on_progress: ProgressCallback | None, done: int, total: int, message: str = "") -> None:
    """Call `on_progress` when one was given."""
    if on_progress is not None:
        on_progress(Progress(done, total, message))
