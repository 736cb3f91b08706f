"""Generate tab: a stack of LoRAs with strength sliders, prompt settings, Generate, image + parameters.

The stack a user sets up is per session: MAX_SLOTS slot widgets (name, strength, enable box, and
separate text-encoder/UNet strengths under "advanced"). The pipeline and its `LoraStack` are shared
by the app; on Generate, `sync_stack` brings the shared stack to this session's slots with the
fewest changes (a moved slider is one `set_strength`, which re-patches only that LoRA's layers;
nothing is reloaded from disk), then the image is generated. Generation holds the app's generate
lock, never the training queue, so it works while a training job runs.

Above the stack, the Base menu switches the shared pipeline (LoRAs that do not fit the new base leave the
stack); adding a LoRA checks it against the base from its header first. Drawing (images, strength grids)
streams its progress into the one status line and stops on Interrupt; webui/tabs/generate_runs.py does
the work, this module builds and wires the widgets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from sdlora.errors import ConfigError, SdloraError
from sdlora.samplers import SAMPLERS
from sdlora.strength import Strength
from webui.state import NotInLibrary
from webui.tabs.common import bound, gather
from webui.tabs.generate_runs import (
    MAX_BATCH,
    base_choices,
    check_addable,
    draw_grid,
    draw_images,
    error_text,
    stream,
    switch_base,
)

MAX_SLOTS = 4
MODEL_SAMPLER = "model default"  # the sampler dropdown's first choice: the base model's own scheduler
SLOT_FIELDS = ("name", "strength", "enabled", "separate", "te", "unet")


@dataclass
class Slot:
    """One LoRA in a session's stack, as its widgets hold it."""

    name: str = ""
    strength: float = 1.0
    enabled: bool = True
    separate: bool = False  # when off, text encoder and UNet both follow `strength`
    te: float = 1.0
    unet: float = 1.0

    @property
    def value(self) -> Strength:
        """The slot's strength as the library's one strength type (te/unet only when `separate`)."""
        if not self.separate:
            return Strength(float(self.strength))
        return Strength(float(self.strength), float(self.te), float(self.unet))


# ---------------------------------------------------------------- slots -----------------------

def add_slot(slots: list[Slot], name: str, strength: float = 1.0) -> list[Slot]:
    """The slots with LoRA `name` appended at `strength`."""
    name = (name or "").strip()
    if not name:
        raise ConfigError("pick a LoRA from the library to add")
    if any(s.name == name for s in slots):
        raise ConfigError(f"{name!r} is already in the stack; move its slider instead")
    if len(slots) >= MAX_SLOTS:
        raise ConfigError(f"the stack holds at most {MAX_SLOTS} LoRAs here; remove one first")
    return [*slots, Slot(name=name, strength=float(strength))]


def remove_slot(slots: list[Slot], index: int) -> list[Slot]:
    return [s for i, s in enumerate(slots) if i != index]


def slots_from_values(values: dict[str, Any]) -> list[Slot]:
    """Slots from the flat form {"slot0.name": ..., "slot0.strength": ...}; empty names are skipped."""
    slots = []
    for i in range(MAX_SLOTS):
        fields = {f: values.get(f"slot{i}.{f}") for f in SLOT_FIELDS}
        if fields["name"]:
            slots.append(Slot(**{k: v for k, v in fields.items() if v is not None}))
    return slots


def slot_updates(slots: list[Slot]) -> list[Any]:
    """Values for every slot widget, in create_ui's order (group visibility first, then SLOT_FIELDS)."""
    out: list[Any] = []
    for i in range(MAX_SLOTS):
        slot = slots[i] if i < len(slots) else Slot()
        out.append(gr.Group(visible=bool(slot.name)))
        out.extend(asdict(slot)[f] for f in SLOT_FIELDS)
    return out


# ---------------------------------------------------------------- stack sync ----------------

def sync_stack(stack, wanted: list[Slot], resolve) -> dict[str, int]:
    """Make the shared `stack` match `wanted` with the fewest changes; `resolve(name)` -> file path or LoraState.

    Returns counts {"loaded", "changed", "removed"}: "loaded" counts files read from disk, which a
    slider move never causes.
    """
    counts = {"loaded": 0, "changed": 0, "removed": 0}
    current = {entry.name: entry for entry in stack.entries}
    names = {s.name for s in wanted}
    with stack.batch():
        for name in [n for n in current if n not in names]:
            stack.remove(name)
            counts["removed"] += 1
        for slot in wanted:
            entry = current.get(slot.name)
            if entry is None:
                stack.add(resolve(slot.name), slot.value, name=slot.name)
                counts["loaded"] += 1
                entry = next(e for e in stack.entries if e.name == slot.name)
            elif entry.strength != slot.value:
                stack.set_strength(slot.name, slot.value)
                counts["changed"] += 1
            if bool(slot.enabled) != entry.enabled:
                (stack.enable if slot.enabled else stack.disable)(slot.name)
                counts["changed"] += 1
    return counts


# ---------------------------------------------------------------- generation ------------------

def generate(app, form: dict[str, Any]) -> tuple[Any, str, str]:
    """Sync the shared stack to the session's slots, then generate (prompt tags apply to this image only).

    Returns (first image, A1111 parameters text, status line); `generate_runs.draw_images` has the rest.
    """
    drawn = draw_images(app, form, _syncer(app, form))
    return drawn.images[0], drawn.parameters, drawn.status


def _syncer(app, form: dict[str, Any]):
    """`sync(stack) -> status text` bringing the stack to the form's slots (under the generate lock)."""
    wanted = slots_from_values(form)

    def sync(stack) -> str:
        library = app.library()
        counts = sync_stack(stack, wanted, lambda name: _resolve(app, library, name))
        return (f"stack: {len(wanted)} LoRA(s); {counts['loaded']} loaded from disk, {counts['changed']} "
                f"updated in place, {counts['removed']} removed")

    return sync


def _resolve(app, library: dict[str, Path], name: str) -> Path:
    """The confined file of a library name; `library` is `app.library()` (only files inside the folders)."""
    if name not in library:
        import difflib

        try:
            return app.library_path(name)  # not listed: this raises why (its file links outside the folders)
        except NotInLibrary:
            pass

        close = difflib.get_close_matches(name, list(library), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SdloraError(f"no LoRA named {name!r} in the library{hint}")
    return library[name]


def default_size(app) -> int:
    """The image side the base model was trained at (embedded 32, SD1 512, SD2-v 768, SDXL 1024), read from
    its configs before it is loaded (the size `sdlora generate` uses); GenerateSettings' default when only
    loading the model would tell."""
    from sdlora.base.native import native_resolution
    from sdlora.generate import GenerateSettings

    try:
        size = native_resolution(app.config.base)
    except SdloraError:  # a base that cannot load: Generate reports why; the slider needs a value now
        size = None
    return size or GenerateSettings(prompt="").width


def preferred_weight(app, name: str) -> float:
    """The "preferred weight" from the LoRA's notes (A1111 <stem>.json), else 1."""
    from sdlora.library import read_notes

    path = app.library().get(name)
    try:
        weight = float(read_notes(path).get("preferred weight", 1.0)) if path else 1.0
    except (TypeError, ValueError):
        return 1.0
    return weight if -2.0 <= weight <= 2.0 else 1.0


def library_choices(app) -> list[str]:
    return list(app.library())


# ---------------------------------------------------------------- layout and wiring ----------

def create_ui(app) -> dict[str, Any]:
    """Build the Generate tab; returns its components (slot widgets in c["slot_widgets"])."""
    c: dict[str, Any] = {}
    with gr.Row():
        c["base"] = gr.Dropdown(base_choices(app), value=app.base_model(None), label="Base model",
                                elem_id="gen-base", scale=3,
                                info="switches without a restart; LoRAs that do not fit it leave the stack")
        c["pick"] = gr.Dropdown(library_choices(app), label="LoRA from the library", elem_id="gen-pick",
                                allow_custom_value=False, scale=3)
        c["refresh"] = gr.Button("Refresh lists", scale=1)
        c["add"] = gr.Button("Add to stack", scale=1, elem_id="gen-add")
    c["groups"], c["slot_widgets"], c["slot_keys"], c["remove"] = [], [], {}, []
    for i in range(MAX_SLOTS):
        _create_slot(c, i)
    _create_settings(app, c)
    with gr.Row():
        c["generate"] = gr.Button("Generate", variant="primary", elem_id="gen-generate", scale=3)
        c["interrupt"] = gr.Button("Interrupt", variant="stop", elem_id="gen-interrupt", scale=1)
    c["status"] = gr.Markdown(elem_id="gen-status")  # the tab's one message area (progress, results, errors)
    with gr.Row():
        c["image"] = gr.Image(label="Image", type="pil", format="png", interactive=False, elem_id="gen-image",
                              height=384)
        with gr.Column():
            c["preview"] = gr.Image(label="Live preview", type="pil", interactive=False, elem_id="gen-preview",
                                    height=128)
            c["parameters"] = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="gen-parameters")
    c["gallery"] = gr.Gallery(label="Batch", visible=False, elem_id="gen-gallery", columns=4, height=256)
    _create_grid(c)
    _wire(app, c)
    return c


def _create_settings(app, c: dict[str, Any]) -> None:
    with gr.Row():
        with gr.Column(scale=3):
            c["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="gen-prompt",
                                     info="A1111 tags work too: <lora:name:0.8> or <lora:name:te=0.5:unet=1>")
            c["negative"] = gr.Textbox(label="Negative prompt", lines=1, elem_id="gen-negative")
        with gr.Column(scale=2), gr.Row():
            c["seed"] = gr.Number(0, label="Seed (-1: random)", precision=0, elem_id="gen-seed")
            c["steps"] = gr.Slider(1, 100, value=20, step=1, label="Steps", elem_id="gen-steps")
            c["cfg"] = gr.Slider(1, 20, value=7.0, step=0.5, label="CFG", elem_id="gen-cfg")
            c["sampler"] = gr.Dropdown([MODEL_SAMPLER, *SAMPLERS], value=MODEL_SAMPLER, label="Sampler",
                                       elem_id="gen-sampler")
            size = default_size(app)
            c["width"] = gr.Slider(8, 2048, value=size, step=8, label="Width", elem_id="gen-width")
            c["height"] = gr.Slider(8, 2048, value=size, step=8, label="Height", elem_id="gen-height")
            c["batch_count"] = gr.Slider(1, MAX_BATCH, value=1, step=1, label="Batch count",
                                         elem_id="gen-batch-count")
            c["redraw"] = gr.Checkbox(False, label="Redraw when a strength slider is released", elem_id="gen-redraw")
            c["live_preview"] = gr.Checkbox(False, label="Live preview", elem_id="gen-live-preview")


def _create_grid(c: dict[str, Any]) -> None:
    with gr.Accordion("Strength grid (X/Y plot)", open=False, elem_id="gen-grid"):
        with gr.Row():
            c["grid_x"] = gr.Textbox(label="Columns: LoRA in the stack", elem_id="gen-grid-x",
                                     info="empty: the first LoRA in the stack")
            c["grid_x_values"] = gr.Textbox("0, 0.5, 1", label="its strengths", elem_id="gen-grid-x-values")
            c["grid_y"] = gr.Textbox(label="Rows: another LoRA (empty: seeds)", elem_id="gen-grid-y")
            c["grid_y_values"] = gr.Textbox(label="row values", elem_id="gen-grid-y-values",
                                            info="seeds or strengths; empty: seed, seed+1")
        c["grid_draw"] = gr.Button("Draw grid", elem_id="gen-grid-draw")


def _create_slot(c: dict[str, Any], i: int) -> None:
    with gr.Group(visible=False, elem_id=f"gen-slot-{i}") as group:
        with gr.Row():
            name = gr.Textbox(label=f"LoRA {i + 1}", interactive=False, scale=3, elem_id=f"gen-slot-{i}-name")
            strength = gr.Slider(-2, 2, value=1.0, step=0.05, label="Strength", scale=4,
                                 elem_id=f"gen-slot-{i}-strength")
            enabled = gr.Checkbox(value=True, label="Enabled", scale=1, elem_id=f"gen-slot-{i}-enabled")
            remove = gr.Button("Remove", scale=0, size="sm", min_width=90, elem_id=f"gen-slot-{i}-remove")
        with gr.Accordion("advanced", open=False):
            separate = gr.Checkbox(value=False, label="Separate text-encoder and UNet strengths")
            te = gr.Slider(-2, 2, value=1.0, step=0.05, label="Text-encoder strength")
            unet = gr.Slider(-2, 2, value=1.0, step=0.05, label="UNet strength")
    widgets = [name, strength, enabled, separate, te, unet]
    c["groups"].append(group)
    c["slot_widgets"].extend([group, *widgets])
    c["slot_keys"].update({w: f"slot{i}.{f}" for w, f in zip(widgets, SLOT_FIELDS, strict=True)})
    c["remove"].append(remove)


def slot_inputs(c: dict[str, Any]) -> set:
    return set(c["slot_keys"])


def current_slots(values: dict, c: dict[str, Any]) -> list[Slot]:
    return slots_from_values(gather(values, c["slot_keys"]))


def _form_keys(c: dict[str, Any]) -> dict[Any, str]:
    return {**c["slot_keys"], **{c[k]: k for k in ("prompt", "negative", "seed", "steps", "cfg", "sampler", "width",
                                                   "height", "batch_count", "redraw", "live_preview", "grid_x",
                                                   "grid_x_values", "grid_y", "grid_y_values")}}


def _status_only(fn: Callable, outputs: int) -> Callable:
    """A handler whose user errors go to the status area (the last output) instead of gradio's error labels."""

    def call(*args):
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 -- error_text logs anything that is not a user error
            return [*[gr.skip()] * (outputs - 1), error_text(err)]

    call.__name__ = fn.__name__
    return call


def add_checked(app, slots: list[Slot], name: str) -> list[Slot]:
    """`add_slot` after the header-only check that `name` fits the current base (one line if not)."""
    if not (name or "").strip():
        raise ConfigError("pick a LoRA from the library to add")
    check_addable(app, name)
    return add_slot(slots, name, preferred_weight(app, name))


def switch_base_slots(app, value: str, slots: list[Slot]) -> tuple[str, list[Slot]]:
    """Switch the app's base to `value`, re-apply the fitting slots; (message, kept slots)."""
    library = app.library()

    def sync(stack, kept) -> None:
        sync_stack(stack, kept, lambda name: _resolve(app, library, name))

    return switch_base(app, value, slots, sync)


def _wire(app, c: dict[str, Any]) -> None:
    keys = _form_keys(c)
    slot_outputs = [*c["slot_widgets"], c["status"]]

    def refresh() -> list[Any]:
        return [gr.Dropdown(choices=library_choices(app)), gr.Dropdown(choices=base_choices(app))]

    c["refresh"].click(bound(refresh), None, [c["pick"], c["base"]], api_name="gen_refresh")

    def add(values: dict) -> list[Any]:
        slots = add_checked(app, current_slots(values, c), values[c["pick"]])
        return [*slot_updates(slots), f"added {values[c['pick']]} (it fits the base {app.base_info().label})"]

    c["add"].click(_status_only(add, len(slot_outputs)), {*slot_inputs(c), c["pick"]}, slot_outputs,
                   api_name="gen_add")
    for i, button in enumerate(c["remove"]):
        remove = bound(lambda values, i=i: slot_updates(remove_slot(current_slots(values, c), i)))
        button.click(remove, slot_inputs(c), c["slot_widgets"], api_name=f"gen_remove_{i}")
    _wire_base(app, c)
    _wire_drawing(app, c, keys)


def _wire_base(app, c: dict[str, Any]) -> None:
    outputs = [*c["slot_widgets"], c["width"], c["height"], c["status"]]
    waiting = [gr.skip()] * len(outputs)

    def switch(values: dict):
        value = values[c["base"]]

        def work(on_status, on_preview) -> list[Any]:
            message, kept = switch_base_slots(app, value, current_slots(values, c))
            size = _base_size(value)
            return [*slot_updates(kept), *([size, size] if size else [gr.skip(), gr.skip()]), message]

        waiting[-1] = "loading the base model..."
        yield from stream(app, work, waiting, len(outputs) - 1)

    c["base"].input(switch, {c["base"], *slot_inputs(c)}, outputs, api_name="gen_switch_base",
                    show_progress="hidden")


def _base_size(value: str) -> int | None:
    from sdlora.base.native import native_resolution

    try:
        return native_resolution(value)
    except SdloraError:
        return None


def _wire_drawing(app, c: dict[str, Any], keys: dict[Any, str]) -> None:
    outputs = [c["image"], c["gallery"], c["parameters"], c["preview"], c["status"]]
    waiting = [gr.skip()] * len(outputs)

    def done(drawn) -> list[Any]:
        paths = [str(p) for p in drawn.paths]
        return [paths[0], gr.Gallery(value=paths, visible=len(paths) > 1), drawn.parameters, gr.skip(),
                drawn.status]

    def draw(values: dict):
        form = gather(values, keys)

        def work(on_status, on_preview):
            preview = on_preview if form.get("live_preview") else None
            return done(draw_images(app, form, _syncer(app, form), on_status, preview))

        yield from stream(app, work, [*waiting[:-1], "waiting for the model..."], len(outputs) - 1, 3)

    def redraw(values: dict):
        if not values[c["redraw"]]:
            yield waiting
            return
        yield from draw(values)

    def grid(values: dict):
        form = gather(values, keys)
        if not str(form.get("grid_x") or "").strip():
            form["grid_x"] = next((s.name for s in slots_from_values(form)), "")

        def work(on_status, on_preview):
            return done(draw_grid(app, form, _syncer(app, form), on_status))

        yield from stream(app, work, [*waiting[:-1], "waiting for the model..."], len(outputs) - 1)

    inputs = set(keys)
    c["generate"].click(draw, inputs, outputs, api_name="generate", show_progress="hidden")
    c["grid_draw"].click(grid, inputs, outputs, api_name="generate_grid", show_progress="hidden")
    sliders = [w for w, key in c["slot_keys"].items() if key.endswith((".strength", ".te", ".unet"))]
    for slider in sliders:
        slider.release(redraw, inputs, outputs, show_progress="hidden", trigger_mode="always_last")
    c["interrupt"].click(lambda: app.stop_requested.set(), None, None, api_name="generate_interrupt",
                         concurrency_limit=None, queue=False)
