"""What the Generate tab's buttons do, without widgets: draw images and grids, switch the base, stream progress.

Everything that touches the shared pipeline runs under `app.generate_lock`. Drawing reports through two
callbacks (`on_status(text)`, `on_preview(image)`); `stream` runs such a job in a thread and turns its
reports into gradio updates, so the handler can show "step i/N" while the image is drawn and the
Interrupt button (which sets `app.stop_requested`) can stop it between two steps. Errors never raise into
gradio (whose error labels cover the widgets): `stream` puts them into the one status area.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdlora.errors import CompatibilityError, ConfigError, Interrupted, SdloraError
from sdlora.generate import GenerateSettings, dtype_name, generate, random_seed, save_png
from sdlora.grid import SEED, Axis, parse_values, strength_grid
from sdlora_webui.tabs.common import user_error

log = logging.getLogger(__name__)
MAX_BATCH = 16
PREVIEW_EVERY = 4  # steps between live previews (one VAE decode each)

StatusFn = Callable[[str], None]
PreviewFn = Callable[[Any], None]


@dataclass
class Drawn:
    """What one Generate click produced: images (PIL) and their saved PNGs, the first one's parameters."""

    images: list[Any] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    parameters: str = ""
    status: str = ""
    seeds: list[int] = field(default_factory=list)
    grid: Any = None  # the sdlora.grid.GridResult of a grid


# ---------------------------------------------------------------- settings --------------------

def settings_from(form: dict[str, Any]):
    """GenerateSettings from the form; seed -1 stays -1 here (`first_seed` turns it into a random one)."""
    try:
        seed = int(form.get("seed") if form.get("seed") not in (None, "") else 0)
        settings = GenerateSettings(
            prompt=str(form.get("prompt") or ""), negative_prompt=str(form.get("negative") or ""), seed=seed,
            steps=int(form.get("steps") or 20), cfg=float(form.get("cfg") or 7.0),
            width=int(form.get("width") or 512), height=int(form.get("height") or 512),
            sampler="" if form.get("sampler") in (None, "model default") else str(form["sampler"]))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"generation settings: {err}") from err
    if seed < -1:
        raise ConfigError(f"seed must be -1 (random) or a whole number >= 0, got {seed}")
    return settings


def first_seed(seed: int) -> int:
    """A1111's seed -1: a new random seed (shown and written into the parameters like a typed one)."""
    return random_seed() if seed == -1 else seed


def batch_count(form: dict[str, Any]) -> int:
    try:
        count = int(form.get("batch_count") or 1)
    except (TypeError, ValueError):
        raise ConfigError(f"batch count must be a whole number, got {form.get('batch_count')!r}") from None
    if not 1 <= count <= MAX_BATCH:
        raise ConfigError(f"batch count must be 1 to {MAX_BATCH}, got {count}")
    return count


def save_image(app, image, parameters: str, seed: int) -> Path:
    """Write the image as a PNG with its A1111 parameters under <output>/images/ (what the UI shows and
    downloads, so the parameters travel with the file)."""
    folder = Path(app.config.output_dir) / "images"
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}"
    path, n = folder / f"{stem}.png", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.png"
    return save_png(image, path, parameters)


# ---------------------------------------------------------------- drawing ---------------------

def draw_images(app, form: dict[str, Any], sync, on_status: StatusFn | None = None,
                on_preview: PreviewFn | None = None) -> Drawn:
    """Sync the stack (`sync(stack) -> status text`), then draw `batch_count` images at seed, seed+1, ..."""
    settings, count = settings_from(form), batch_count(form)
    app.check_work(settings.width, settings.height, settings.steps, count)  # before waiting for the lock
    library = {k: str(v) for k, v in app.library().items()}
    drawn = Drawn()
    with app.generate_lock:
        app.stop_requested.clear()
        pipe, stack = app.pipeline_and_stack()
        settings.model_name = app.model_name
        stack_text = sync(stack)
        seed = first_seed(settings.seed)
        for i in range(count):
            one = replace(settings, seed=seed + i)
            result = generate(pipe, one, stack=stack, library=library,
                              on_progress=_step_text(on_status, i, count),
                              should_stop=app.stop_requested.is_set,
                              on_preview=(lambda step, image: on_preview(image)) if on_preview else None,
                              preview_every=PREVIEW_EVERY if on_preview else 0)
            drawn.images.append(result.image)
            drawn.paths.append(save_image(app, result.image, result.parameters, one.seed))
            drawn.seeds.append(one.seed)
            drawn.parameters = drawn.parameters or result.parameters
    seeds = ", ".join(map(str, drawn.seeds))
    drawn.status = f"{count} image(s), seed {seeds}; {stack_text}"
    return drawn


def _step_text(on_status: StatusFn | None, index: int, count: int):
    if on_status is None:
        return None
    prefix = f"image {index + 1}/{count}, " if count > 1 else ""
    return lambda progress: on_status(f"drawing: {prefix}step {progress.done}/{progress.total}")


def draw_grid(app, form: dict[str, Any], sync, on_status: StatusFn | None = None) -> Drawn:
    """A strength grid (sdlora.grid) over the session's stack: columns = one LoRA's strengths, rows = seeds
    or a second LoRA's strengths. Cells change strengths in place only."""
    settings = settings_from(form)
    columns = Axis(_grid_name(form.get("grid_x")), parse_values(form.get("grid_x_values"), "grid column values"))
    row_name = _grid_name(form.get("grid_y")) or SEED
    row_text = form.get("grid_y_values")
    if row_name == SEED and not str(row_text or "").strip():
        row_text = "-1, -1" if settings.seed == -1 else f"{settings.seed}, {settings.seed + 1}"
    rows = Axis(row_name, parse_values(row_text, "grid row values", whole=row_name == SEED))
    if not columns.name:
        raise ConfigError("grid: name the LoRA whose strengths form the columns (a LoRA in the stack)")
    app.check_work(settings.width, settings.height, settings.steps, len(columns.values) * len(rows.values))
    library = {k: str(v) for k, v in app.library().items()}
    first: dict[str, str] = {}
    with app.generate_lock:
        app.stop_requested.clear()
        pipe, stack = app.pipeline_and_stack()
        settings.model_name = app.model_name
        sync(stack)
        _check_enabled(stack, columns, rows)
        if rows.is_seed:  # -1 in the row list: a random seed per row, shown in the labels
            rows = replace(rows, values=tuple(first_seed(int(v)) for v in rows.values))
        seed = first_seed(settings.seed)

        def cell(cell_seed: int):
            result = generate(pipe, replace(settings, seed=cell_seed), stack=stack, library=library,
                              should_stop=app.stop_requested.is_set)
            first.setdefault("parameters", result.parameters)
            return result.image

        total = len(columns.values) * len(rows.values)
        report = (lambda p: on_status(f"drawing grid: cell {p.done}/{total} done")) if on_status else None
        grid = strength_grid(stack, cell, columns, rows, seed, on_progress=report,
                             should_stop=app.stop_requested.is_set)
    parameters = f"{first['parameters']}\n{grid.describe()}"
    path = save_image(app, grid.image, parameters, seed)
    status = f"grid {len(columns.values)}x{len(rows.values)} drawn ({grid.describe()}); no LoRA was reloaded"
    return Drawn([grid.image], [path], parameters, status, [s for row in grid.seeds for s in row], grid)


def _grid_name(value) -> str:
    return str(value or "").strip()


def _check_enabled(stack, columns, rows) -> None:
    disabled = {e.name for e in stack.entries if not e.enabled}
    for axis in (columns, rows):
        if axis.name in disabled:
            raise ConfigError(f"grid: {axis.name!r} is disabled in the stack; tick its Enabled box first")


# ---------------------------------------------------------------- base models -----------------

def refusal(app, name: str, fit) -> str:
    """One line: why LoRA `name` cannot go on the current base, which base it needs and how to switch."""
    base = app.base_info()
    line = f"{name} does not fit the base {base.label}: {fit.reason}."
    if fit.needs is None:
        return line
    candidates = [b for b in app.bases() if b.value != base.value and _could_fit(app, name, b, fit)]
    if candidates:
        return f"{line} Switch the Base menu to {candidates[0].label} and add it again."
    wanted = "the model it was trained on" if fit.needs == "custom" else f"an {fit.short.removeprefix('needs ')} model"
    return (f"{line} Put {wanted} into a --models-dir folder (sdlora webui --models-dir DIR), then pick it "
            "in the Base menu.")


def _could_fit(app, name: str, base, fit) -> bool:
    if fit.needs != "custom":
        return base.family == fit.needs
    try:
        return app.fit(name, base.value).fits
    except SdloraError:
        return False


def check_addable(app, name: str) -> None:
    """Refuse a LoRA that does not fit the current base, before it reaches the stack (header only)."""
    fit = app.fit(name)
    if not fit.fits:
        raise CompatibilityError(refusal(app, name, fit))


def switch_base(app, value: str, slots: list, sync, left: list | tuple = ()) -> tuple[str, list, list]:
    """Load base `value` (freeing the old pipeline), keep the slots that fit it and re-apply them; the slots
    an earlier switch took off (`left`) go back on when they fit this base.

    `sync(stack, slots)` applies slots to the new stack. Returns (message, kept slots, slots taken off now or
    still left). On a load error the previous base stays selected."""
    previous = app.current_base
    started = time.perf_counter()
    on_stack = {slot.name for slot in slots}
    returning = [slot for slot in left if slot.name not in on_stack]
    with app.generate_lock:
        value = app.select_base(value)
        kept, dropped = _split_by_fit(app, slots)
        back, still_left = _split_by_fit(app, returning)
        try:
            pipeline, stack = app.pipeline_and_stack()
        except Exception:
            app.current_base = previous
            raise
        sync(stack, kept + back)
    label = app.base_info(value).label
    message = f"base: {label} ({dtype_name(pipeline)}), loaded in {time.perf_counter() - started:.1f} s; {len(kept)} LoRA(s) re-applied"
    if back:
        message += ("; put back on the stack (taken off at an earlier switch, they fit this base): "
                    + ", ".join(slot.name for slot in back))
    if dropped:
        message += "; taken off the stack (they do not fit; switching back puts them back): " + "; ".join(
            reason for _, reason in dropped)
    return message, kept + back, [slot for slot, _ in dropped + still_left]


def _split_by_fit(app, slots: list) -> tuple[list, list[tuple]]:
    """(slots that fit the current base, [(slot, why not)] for the rest)."""
    kept, dropped = [], []
    for slot in slots:
        try:
            fit = app.fit(slot.name)
        except SdloraError as err:
            dropped.append((slot, f"{slot.name} ({err})"))
            continue
        if fit.fits:
            kept.append(slot)
        else:
            dropped.append((slot, f"{slot.name} ({fit.short}: {fit.reason})"))
    return kept, dropped


def base_choices(app) -> list[tuple[str, str]]:
    """(label, value) pairs for the Base menu; the current base is always there (one that cannot be described
    still loads or says why on Generate)."""
    choices = [(b.label, b.value) for b in app.bases()]
    current = app.base_model(None)
    if current not in {value for _, value in choices}:
        choices.insert(0, (f"{Path(current).name} (not checked)", current))
    return choices


# ---------------------------------------------------------------- streaming -------------------

def stream(app, work: Callable[[StatusFn, PreviewFn], list], waiting: list, status_at: int,
           preview_at: int | None = None) -> Iterator[list]:
    """Run `work(on_status, on_preview)` in a thread; yield `waiting` with the status (and preview) filled in
    while it runs, then its result, or `waiting` with the error in the status.

    Closing the generator (the browser went away) asks the work to stop."""
    events: queue.Queue = queue.Queue()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = work(lambda text: events.put(("status", text)),
                                 lambda image: events.put(("preview", image)))
        except Exception as err:  # noqa: BLE001 -- raised to the page after the stream (user_error logs bugs)
            box["error"] = err
        finally:
            events.put(("done", None))

    threading.Thread(target=run, name="sdlora-generate", daemon=True).start()
    finished = False
    try:
        yield list(waiting)  # at once: the status says this request waits, not what the last one said
        while not finished:
            latest = _drain(events)
            finished = "done" in latest
            if not finished:
                yield _fill(waiting, status_at, latest.get("status"), preview_at, latest.get("preview"))
    finally:
        if not finished:
            app.stop_requested.set()
    if isinstance(box.get("error"), Interrupted):  # asked for: a status, not an error
        yield _fill(waiting, status_at, f"Interrupted: {box['error']}", None, None)
    elif "error" in box:
        yield _fill(waiting, status_at, "stopped by an error (see the message)", None, None)
        raise user_error(box["error"], "generation")  # shown as every tab shows errors
    else:
        yield box["result"]


def _drain(events: queue.Queue) -> dict[str, Any]:
    """The newest event of each kind: wait for one, then take whatever else is queued (a slow browser
    gets the latest step, not a backlog)."""
    latest = dict([events.get()])
    while True:
        try:
            kind, payload = events.get_nowait()
        except queue.Empty:
            return latest
        latest[kind] = payload


def _fill(waiting: list, status_at: int, status, preview_at, preview) -> list:
    out = list(waiting)
    if status is not None:
        out[status_at] = status
    if preview_at is not None and preview is not None:
        out[preview_at] = preview
    return out

