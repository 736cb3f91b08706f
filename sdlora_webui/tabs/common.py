"""Small helpers shared by the tabs: error mapping (every tab shows errors the same way) and form gathering."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import gradio as gr

from sdlora.errors import SdloraError

log = logging.getLogger(__name__)


def guarded(fn: Callable) -> Callable:
    """Wrap a handler for gradio: a user error becomes a short `gr.Error`, never a traceback.

    `SdloraError` messages are shown as they are (they say what to do). Anything else is a bug:
    the traceback goes to the server log and the user sees one line naming the error type.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:  # noqa: BLE001 -- user_error logs anything that is not a user error
            raise user_error(err, fn.__name__) from None

    return wrapper


def user_error(err: BaseException, where: str = "handler") -> gr.Error:
    """The one way every tab shows an error: a gradio error message (a toast) of one line. A `SdloraError`'s
    own message (it says what to do), else one line naming a bug, whose traceback goes to the server log."""
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, SdloraError):
        return gr.Error(str(err), print_exception=False)
    log.error("%s failed", where, exc_info=err)
    return gr.Error(f"internal error ({type(err).__name__}: {err}); see the server log", print_exception=False)


def gather(values: Mapping, keys: Mapping[Any, str]) -> dict[str, Any]:
    """Turn gradio's {component: value} (from `inputs={...}`) into {form key: value}."""
    return {key: values[component] for component, key in keys.items() if component in values}


def bound(fn: Callable, *first: Any) -> Callable:
    """`fn` with its first arguments fixed (the app state), guarded, keeping its name for gradio."""

    def call(*args):
        return fn(*first, *args)

    call.__name__ = call.__qualname__ = fn.__name__
    call.__doc__ = fn.__doc__
    return guarded(call)
