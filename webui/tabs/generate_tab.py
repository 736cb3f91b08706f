"""Generate tab: a stack of LoRAs with strength sliders, prompt settings, Generate, image + parameters.

The stack a user sets up is per session: MAX_SLOTS slot widgets (name, strength, enable box, and
separate text-encoder/UNet strengths under "advanced"). The pipeline and its `LoraStack` are shared
by the app; on Generate, `sync_stack` brings the shared stack to this session's slots with the
fewest changes (a moved slider is one `set_strength`, which re-patches only that LoRA's layers;
nothing is reloaded from disk), then the image is generated. Generation holds the app's generate
lock, never the training queue, so it works while a training job runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from sdlora.errors import ConfigError, SdloraError
from sdlora.samplers import SAMPLERS
from webui.tabs.common import bound, gather

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
    def te_strength(self) -> float | None:
        return float(self.te) if self.separate else None

    @property
    def unet_strength(self) -> float | None:
        return float(self.unet) if self.separate else None


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
                stack.add(resolve(slot.name), float(slot.strength), slot.te_strength, slot.unet_strength,
                          name=slot.name)
                counts["loaded"] += 1
                entry = next(e for e in stack.entries if e.name == slot.name)
            elif _strengths(entry) != (float(slot.strength), slot.te_strength, slot.unet_strength):
                stack.set_strength(slot.name, float(slot.strength), slot.te_strength, slot.unet_strength)
                counts["changed"] += 1
            if bool(slot.enabled) != entry.enabled:
                (stack.enable if slot.enabled else stack.disable)(slot.name)
                counts["changed"] += 1
    return counts


def _strengths(entry) -> tuple[float, float | None, float | None]:
    return (float(entry.strength), entry.te_strength, entry.unet_strength)


# ---------------------------------------------------------------- generation ------------------

def generate(app, form: dict[str, Any]) -> tuple[Any, str, str]:
    """Sync the shared stack to the session's slots, then generate (prompt tags apply to this image only).

    Returns (image, A1111 parameters text, status line).
    """
    from sdlora.generate import generate as draw

    library = _library_paths(app)
    wanted = slots_from_values(form)
    settings = _settings(form)
    with app.generate_lock:
        pipe, stack = app.pipeline_and_stack()
        settings.model_name = app.model_name
        counts = sync_stack(stack, wanted, lambda name: _resolve(library, name))
        result = draw(pipe, settings, stack=stack, library={k: str(v) for k, v in library.items()})
    status = (f"stack: {len(wanted)} LoRA(s); {counts['loaded']} loaded from disk, {counts['changed']} "
              f"updated in place, {counts['removed']} removed")
    return result.image, result.parameters, status


def _settings(form: dict[str, Any]):
    from sdlora.generate import GenerateSettings

    try:
        return GenerateSettings(
            prompt=str(form.get("prompt") or ""),
            negative_prompt=str(form.get("negative") or ""),
            seed=int(form.get("seed") or 0),
            steps=int(form.get("steps") or 20),
            cfg=float(form.get("cfg") or 7.0),
            width=int(form.get("width") or 512),
            height=int(form.get("height") or 512),
            sampler="" if form.get("sampler") in (None, MODEL_SAMPLER) else str(form["sampler"]),
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"generation settings: {err}") from err


def _library_paths(app) -> dict[str, Path]:
    """{name: path} of every LoRA in the library folder (names are file stems)."""
    root = Path(app.config.lora_dir)
    return {p.stem: p for p in sorted(root.rglob("*.safetensors"))}


def _resolve(library: dict[str, Path], name: str) -> Path:
    if name not in library:
        import difflib

        close = difflib.get_close_matches(name, list(library), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SdloraError(f"no LoRA named {name!r} in the library{hint}")
    return library[name]


def default_size(app) -> int:
    """The image side the base model was trained at (embedded 32, SD1 512, SD2-v 768, SDXL 1024), read from
    its configs; SD's 512 when they cannot tell."""
    from sdlora.bases import native_resolution

    try:
        return native_resolution(app.config.base) or 512
    except SdloraError:
        return 512


def preferred_weight(app, name: str) -> float:
    """The "preferred weight" from the LoRA's notes (A1111 <stem>.json), else 1."""
    from sdlora.library import read_notes

    path = _library_paths(app).get(name)
    try:
        weight = float(read_notes(path).get("preferred weight", 1.0)) if path else 1.0
    except (TypeError, ValueError):
        return 1.0
    return weight if -2.0 <= weight <= 2.0 else 1.0


def library_choices(app) -> list[str]:
    return list(_library_paths(app))


# ---------------------------------------------------------------- layout and wiring ----------

def create_ui(app) -> dict[str, Any]:
    """Build the Generate tab; returns its components (slot widgets in c["slot_widgets"])."""
    c: dict[str, Any] = {}
    with gr.Row():
        c["pick"] = gr.Dropdown(library_choices(app), label="LoRA from the library", elem_id="gen-pick",
                                allow_custom_value=False, scale=3)
        c["refresh"] = gr.Button("Refresh list", scale=1)
        c["add"] = gr.Button("Add to stack", scale=1, elem_id="gen-add")
    c["groups"], c["slot_widgets"], c["slot_keys"], c["remove"] = [], [], {}, []
    for i in range(MAX_SLOTS):
        _create_slot(c, i)
    with gr.Row():
        with gr.Column(scale=3):
            c["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="gen-prompt",
                                     info="A1111 tags work too: <lora:name:0.8> or <lora:name:te=0.5:unet=1>")
            c["negative"] = gr.Textbox(label="Negative prompt", lines=1, elem_id="gen-negative")
        with gr.Column(scale=2), gr.Row():
            c["seed"] = gr.Number(0, label="Seed", precision=0, elem_id="gen-seed")
            c["steps"] = gr.Slider(1, 100, value=20, step=1, label="Steps", elem_id="gen-steps")
            c["cfg"] = gr.Slider(1, 20, value=7.0, step=0.5, label="CFG", elem_id="gen-cfg")
            c["sampler"] = gr.Dropdown([MODEL_SAMPLER, *SAMPLERS], value=MODEL_SAMPLER, label="Sampler",
                                       elem_id="gen-sampler")
            size = default_size(app)
            c["width"] = gr.Slider(8, 2048, value=size, step=8, label="Width", elem_id="gen-width")
            c["height"] = gr.Slider(8, 2048, value=size, step=8, label="Height", elem_id="gen-height")
    c["generate"] = gr.Button("Generate", variant="primary", elem_id="gen-generate")
    with gr.Row():
        c["image"] = gr.Image(label="Image", type="pil", format="png", interactive=False, elem_id="gen-image",
                              height=384)
        with gr.Column():
            c["parameters"] = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="gen-parameters")
            c["status"] = gr.Markdown(elem_id="gen-status")
    _wire(app, c)
    return c


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


def _wire(app, c: dict[str, Any]) -> None:
    keys = {**c["slot_keys"], c["prompt"]: "prompt", c["negative"]: "negative", c["seed"]: "seed",
            c["steps"]: "steps", c["cfg"]: "cfg", c["sampler"]: "sampler", c["width"]: "width", c["height"]: "height"}
    c["refresh"].click(bound(lambda: gr.Dropdown(choices=library_choices(app))), None, c["pick"],
                       api_name="gen_refresh")
    def add(values: dict) -> list[Any]:
        name = values[c["pick"]]
        return slot_updates(add_slot(current_slots(values, c), name, preferred_weight(app, name or "")))


    c["add"].click(bound(add), {*slot_inputs(c), c["pick"]}, c["slot_widgets"], api_name="gen_add")
    for i, button in enumerate(c["remove"]):
        remove = bound(lambda values, i=i: slot_updates(remove_slot(current_slots(values, c), i)))
        button.click(remove, slot_inputs(c), c["slot_widgets"], api_name=f"gen_remove_{i}")
    run = bound(lambda values: generate(app, gather(values, keys)))
    c["generate"].click(run, set(keys), [c["image"], c["parameters"], c["status"]], api_name="generate")
