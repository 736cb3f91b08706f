"""Generate tab: a stack of LoRAs with strength sliders, prompt settings, Generate, image + parameters.

The stack a user sets up is per session and has no size limit: a `gr.State` list of slots (name, strength,
enable box, separate text-encoder/UNet strengths under "advanced"), drawn as one row per LoRA by `gr.render`
(rows come and go with the stack; every row's ids carry its index, so no id repeats). A widget a user moves
writes its slot back into the state. Each row shows the LoRA's trigger words: a click on one adds it to the
prompt, "insert trigger words" adds them all. A LoRA starts at its preferred weight (A1111 `<stem>.json`).
The prompt and the image stay at the top of the tab (as in A1111); settings and the stack sit in the left
column. "Rebuild from image" (sdlora_webui/tabs/recipe_panel.py) fills prompt, settings and stack from an image's
parameters. The pipeline and its `LoraStack` are shared
by the app; on Generate, `sync_stack` brings the shared stack to this session's slots with the
fewest changes (a moved slider is one `set_strength`, which re-patches only that LoRA's layers;
nothing is reloaded from disk), then the image is generated. Generation holds the app's generate
lock, never the training queue, so it works while a training job runs.

Above the stack, the Base menu switches the shared pipeline (LoRAs that do not fit the new base leave the
stack); adding a LoRA checks it against the base from its header first. Drawing (images, strength grids)
streams its progress into the one status line and stops on Interrupt; sdlora_webui/tabs/generate_runs.py does
the work, this module builds and wires the widgets.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from sdlora.base.native import native_resolution
from sdlora.errors import ConfigError, SdloraError
from sdlora.generate import GenerateSettings
from sdlora.header import read_header
from sdlora.library import read_notes
from sdlora.library import trigger_words as header_words
from sdlora.samplers import SAMPLERS
from sdlora.strength import Strength
from sdlora_webui.state import NotInLibrary
from sdlora_webui.tabs.common import bound, gather
from sdlora_webui.tabs.generate_runs import (
    MAX_BATCH,
    base_choices,
    check_addable,
    draw_grid,
    draw_images,
    stream,
    switch_base,
)

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
    """The slots with LoRA `name` appended at `strength` (the stack has no size limit)."""
    name = (name or "").strip()
    if not name:
        raise ConfigError("pick a LoRA from the library to add")
    if any(s.name == name for s in slots):
        raise ConfigError(f"{name!r} is already in the stack; move its slider instead")
    return [*slots, Slot(name=name, strength=float(strength))]


def remove_slot(slots: list[Slot], index: int) -> list[Slot]:
    return [s for i, s in enumerate(slots) if i != index]


def slots_of(value) -> list[Slot]:
    """Slots from the stack state (a list of dicts with SLOT_FIELDS); rows without a name are skipped."""
    return [Slot(**{k: v for k, v in item.items() if k in SLOT_FIELDS and v is not None})
            for item in value or [] if item.get("name")]


def slots_from_values(values: dict[str, Any]) -> list[Slot]:
    """The slots of a gathered form ({"stack": [slot dicts], ...})."""
    return slots_of(values.get("stack"))


def slot_updates(slots: list[Slot]) -> list[Any]:
    """New values for the stack state and its version (a new version draws the rows again)."""
    return [[asdict(slot) for slot in slots], time.monotonic_ns()]


def set_slot_field(value: list[dict], index: int, key: str, new) -> list[dict]:
    """The stack state with one field of one row changed (what a moved widget writes back)."""
    items = [dict(item) for item in value or []]
    if 0 <= index < len(items):
        items[index][key] = new
    return items


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
    try:
        size = native_resolution(app.config.base)
    except SdloraError:  # a base that cannot load: Generate reports why; the slider needs a value now
        size = None
    return size or GenerateSettings(prompt="").width


def preferred_weight(app, name: str) -> float:
    """The "preferred weight" from the LoRA's notes (A1111 <stem>.json), else 1."""
    path = app.library().get(name)
    try:
        weight = float(read_notes(path).get("preferred weight", 1.0)) if path else 1.0
    except (TypeError, ValueError):
        return 1.0
    return weight if -2.0 <= weight <= 2.0 else 1.0


def library_choices(app) -> list[str]:
    """The LoRA menu: the library's readable files (a damaged one is named in the Library tab, not offered)."""
    return [entry.name for entry in app.library_scan().entries]


# ---------------------------------------------------------------- layout and wiring ----------

def create_ui(app) -> dict[str, Any]:
    """Build the Generate tab; returns its components (the stack is c["stack"], its rows drawn by gr.render)."""
    c: dict[str, Any] = {"stack": gr.State([]), "stack_version": gr.State(0)}
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            c["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="gen-prompt",
                                     info="A1111 tags work too: <lora:name:0.8> or <lora:name:te=0.5:unet=1>")
            c["negative"] = gr.Textbox(label="Negative prompt", lines=1, elem_id="gen-negative")
        with gr.Column(scale=1, min_width=160):
            c["generate"] = gr.Button("Generate", variant="primary", elem_id="gen-generate")
            c["interrupt"] = gr.Button("Interrupt", variant="stop", elem_id="gen-interrupt")
    c["status"] = gr.Markdown(elem_id="gen-status")  # progress and results; errors are toasts, as in every tab
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            _create_settings(app, c)
            _create_stack(app, c)
            c["recipe_box"] = gr.Column()  # the recipe panel goes here (the app adds it: it uses this tab)
        with gr.Column(scale=2):
            c["image"] = gr.Image(label="Image", type="pil", format="png", interactive=False, elem_id="gen-image",
                                  height=384)
            c["parameters"] = gr.Textbox(label="Parameters", lines=4, interactive=False, elem_id="gen-parameters")
            c["preview"] = gr.Image(label="Live preview", type="pil", interactive=False, elem_id="gen-preview",
                                    height=128)
    c["gallery"] = gr.Gallery(label="Batch", visible=False, elem_id="gen-gallery", columns=4, height=256)
    _create_grid(c)
    _wire(app, c)
    return c


def _create_settings(app, c: dict[str, Any]) -> None:
    with gr.Accordion("Settings", open=True, elem_id="gen-settings"), gr.Row():
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


def _create_stack(app, c: dict[str, Any]) -> None:
    with gr.Row():
        c["base"] = gr.Dropdown(base_choices(app), value=app.base_model(None), label="Base model",
                                elem_id="gen-base", scale=3,
                                info="switches without a restart; LoRAs that do not fit it leave the stack")
        c["pick"] = gr.Dropdown(library_choices(app), label="LoRA from the library", elem_id="gen-pick",
                                allow_custom_value=False, scale=3)
        with gr.Column(scale=1, min_width=120):
            c["add"] = gr.Button("Add to stack", elem_id="gen-add")
            c["refresh"] = gr.Button("Refresh lists", size="sm")

    @gr.render(inputs=[c["stack"]], triggers=[c["stack_version"].change])
    def rows(value):
        for i, slot in enumerate(slots_of(value)):
            _create_row(app, c, i, slot)


def _create_row(app, c: dict[str, Any], i: int, slot: Slot) -> None:
    """One stack row: its widgets write their value back into the stack state; ids carry the row's index.
    (Widgets drawn by gr.render are not made interactive by their listeners: `interactive=True` says so.)"""
    # a Group repeats its elem_id on two nested elements (the duplicate ids of issue 22): a class names the row
    with gr.Group(elem_classes=["gen-slot", f"gen-slot-{i}"]):
        with gr.Row():
            gr.Textbox(slot.name, label=f"LoRA {i + 1}", interactive=False, scale=3, elem_id=f"gen-slot-{i}-name")
            strength = gr.Slider(-2, 2, value=slot.strength, step=0.05, label="Strength", scale=4, interactive=True,
                                 elem_id=f"gen-slot-{i}-strength")
            enabled = gr.Checkbox(value=bool(slot.enabled), label="Enabled", scale=1, interactive=True,
                                  elem_id=f"gen-slot-{i}-enabled")
            remove = gr.Button("Remove", scale=0, size="sm", min_width=90, elem_id=f"gen-slot-{i}-remove")
        words = trigger_words(app, slot.name)
        if words:
            with gr.Row(elem_id=f"gen-slot-{i}-words"):
                insert = gr.Button("insert trigger words", size="sm", scale=0, min_width=150,
                                   elem_id=f"gen-slot-{i}-insert")
                insert.click(lambda prompt, words=words: insert_words(prompt, words), c["prompt"], c["prompt"],
                             queue=False)
                for n, word in enumerate(words[:MAX_WORD_BUTTONS]):
                    button = gr.Button(word, size="sm", scale=0, min_width=60, elem_id=f"gen-slot-{i}-word-{n}")
                    button.click(lambda prompt, word=word: insert_words(prompt, [word]), c["prompt"], c["prompt"],
                                 queue=False)
        with gr.Accordion("advanced", open=bool(slot.separate)):
            separate = gr.Checkbox(value=bool(slot.separate), label="Separate text-encoder and UNet strengths",
                                   interactive=True, elem_id=f"gen-slot-{i}-separate")
            te = gr.Slider(-2, 2, value=slot.te, step=0.05, label="Text-encoder strength", interactive=True,
                           elem_id=f"gen-slot-{i}-te")
            unet = gr.Slider(-2, 2, value=slot.unet, step=0.05, label="UNet strength", interactive=True,
                             elem_id=f"gen-slot-{i}-unet")
    for key, widget in (("strength", strength), ("enabled", enabled), ("separate", separate), ("te", te),
                        ("unet", unet)):
        widget.change(lambda value, new, key=key: set_slot_field(value, i, key, new), [c["stack"], widget],
                      c["stack"], queue=False, show_progress="hidden")
        if key in ("strength", "te", "unet"):  # "redraw when released", once the value is in the state
            widget.release(lambda value, new, key=key: set_slot_field(value, i, key, new), [c["stack"], widget],
                           c["stack"], queue=False, show_progress="hidden").then(
                c["redraw_fn"], c["draw_inputs"], c["draw_outputs"], show_progress="hidden",
                trigger_mode="always_last")
    remove.click(lambda value: slot_updates(remove_slot(slots_of(value), i)), c["stack"],
                 [c["stack"], c["stack_version"]])


MAX_WORD_BUTTONS = 12  # trigger words shown as buttons per LoRA ("insert trigger words" adds them all)


def trigger_words(app, name: str) -> list[str]:
    """A LoRA's trigger words: its notes' "activation text" (A1111, or Civitai's trainedWords merged there),
    else the header's; [] when the file cannot be read."""
    path = app.library().get(name)
    if path is None:
        return []
    activation = str(read_notes(path).get("activation text") or "")
    words = [w.strip() for w in activation.split(",") if w.strip()]
    if words:
        return words
    try:
        return header_words(read_header(path).metadata)
    except (SdloraError, OSError):
        return []


def insert_words(prompt: str, words: list[str]) -> str:
    """`prompt` with each of `words` appended (comma-separated) unless it is in it already."""
    prompt = (prompt or "").rstrip()
    for word in words:
        if word.lower() not in prompt.lower():
            prompt = f"{prompt}, {word}" if prompt else word
    return prompt


def current_slots(values: dict, c: dict[str, Any]) -> list[Slot]:
    return slots_of(values[c["stack"]])


def _form_keys(c: dict[str, Any]) -> dict[Any, str]:
    return {c[k]: k for k in ("stack", "prompt", "negative", "seed", "steps", "cfg", "sampler", "width", "height",
                              "batch_count", "redraw", "live_preview", "grid_x", "grid_x_values", "grid_y",
                              "grid_y_values")}




def add_checked(app, slots: list[Slot], name: str) -> list[Slot]:
    """`add_slot` after the header-only check that `name` fits the current base (one line if not), at the LoRA's
    preferred weight."""
    if not (name or "").strip():
        raise ConfigError("pick a LoRA from the library to add")
    check_addable(app, name)
    return add_slot(slots, name, preferred_weight(app, name))


def switch_base_slots(app, value: str, slots: list[Slot], left: list[Slot] = ()) -> tuple[str, list[Slot], list[Slot]]:
    """Switch the app's base to `value`, re-apply the fitting slots and put back the `left` ones (taken off at
    an earlier switch) that fit; (message, slots now on the stack, slots left off)."""
    library = app.library()

    def sync(stack, kept) -> None:
        sync_stack(stack, kept, lambda name: _resolve(app, library, name))

    return switch_base(app, value, slots, sync, left)


STACK_OUTPUTS = ("stack", "stack_version")


def stack_outputs(c: dict[str, Any]) -> list[Any]:
    return [c[k] for k in STACK_OUTPUTS]


def _wire(app, c: dict[str, Any]) -> None:
    keys = _form_keys(c)
    slot_outputs = [*stack_outputs(c), c["status"]]

    def refresh() -> list[Any]:
        return [gr.Dropdown(choices=library_choices(app)), gr.Dropdown(choices=base_choices(app))]

    c["refresh"].click(bound(refresh), None, [c["pick"], c["base"]], api_name="gen_refresh")

    def add(values: dict) -> list[Any]:
        slots = add_checked(app, current_slots(values, c), values[c["pick"]])
        return [*slot_updates(slots), f"added {values[c['pick']]} (it fits the base {app.base_info().label})"]

    c["add"].click(bound(add), {c["stack"], c["pick"]}, slot_outputs, api_name="gen_add")
    _wire_base(app, c)
    _wire_drawing(app, c, keys)


def _wire_base(app, c: dict[str, Any]) -> None:
    c["left"] = gr.State([])  # this session's slots a base switch took off (they return when they fit again)
    outputs = [*stack_outputs(c), c["width"], c["height"], c["left"], c["status"]]
    waiting = [gr.skip()] * len(outputs)

    def switch(values: dict):
        value = values[c["base"]]
        if _is_current_base(app, value):  # the menu reports its value again when the stack rows are drawn anew
            yield [gr.skip()] * len(outputs)
            return

        def work(on_status, on_preview) -> list[Any]:
            message, kept, left = switch_base_slots(app, value, current_slots(values, c), values[c["left"]])
            size = _base_size(value)
            return [*slot_updates(kept), *([size, size] if size else [gr.skip(), gr.skip()]), left, message]

        waiting[-1] = "loading the base model..."
        yield from stream(app, work, waiting, len(outputs) - 1)

    c["base"].input(switch, {c["base"], c["left"], c["stack"]}, outputs, api_name="gen_switch_base", show_progress="hidden")


def _is_current_base(app, value: str) -> bool:
    try:
        return bool(value) and app.base_model(value) == app.base_model(None)
    except SdloraError:
        return False  # switch_base says why


def _base_size(value: str) -> int | None:
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
    # the stack rows (drawn later by gr.render) chain this after a released slider
    c["redraw_fn"], c["draw_inputs"], c["draw_outputs"] = redraw, inputs, outputs
    c["interrupt"].click(lambda: app.stop_requested.set(), None, None, api_name="generate_interrupt",
                         concurrency_limit=None, queue=False)
