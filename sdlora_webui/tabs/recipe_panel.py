"""The Generate tab's recipes: "Rebuild from image" (prompt, settings and stack from an image's parameters),
saved recipes (save the current image's parameters under a name, load one back). `sdlora.recipes` does the
reading and matching; this module turns a recipe into the tab's values.

LoRAs are matched against the library by hash, then by name; a LoRA the library lacks is left out of the stack
and named with its hash in the status line; "Download missing by hash" queues them in the Library tab's
Civitai panel (wired by the app, which holds both tabs: sdlora_webui/app.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from sdlora.errors import SdloraError
from sdlora.recipes import (
    list_recipes,
    load_recipe,
    match_loras,
    missing,
    missing_text,
    read_recipe,
    save_recipe,
)
from sdlora.samplers import SAMPLERS
from sdlora_webui.tabs.common import bound
from sdlora_webui.tabs.generate_tab import MODEL_SAMPLER, Slot, slot_updates
from sdlora_webui.tabs.library_tab import cache_path, scan

RECIPE_FIELDS = ("prompt", "negative", "seed", "steps", "cfg", "sampler", "width", "height")
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp"]


def recipes_dir(app) -> Path:
    """Saved recipes live in the output folder (`recipes/`): a JSON and a PNG thumbnail per recipe."""
    return app.write_path("recipes")


def slots_for(app, recipe) -> tuple[list, str, list[str]]:
    """(stack slots, note, hashes of the missing LoRAs) for a recipe's LoRAs; the note names the missing ones."""
    matches = match_loras(recipe, scan(app).entries, cache_path=cache_path(app))
    library = app.library()
    slots, notes = [], []
    for match in matches:
        if match.entry is None:
            continue
        if match.entry.name not in library:  # a file the app may not use (a link out of the folders)
            notes.append(f"{match.entry.name} is not usable here")
            continue
        strength = match.lora.strength
        separate = strength.te is not None or strength.unet is not None
        slots.append(Slot(name=match.entry.name, strength=strength.overall, separate=separate,
                          te=strength.te_value, unet=strength.unet_value))
        if match.entry.name != match.lora.name:
            notes.append(f"{match.lora.name} is {match.entry.name} here (same {match.by})")
        if strength.blocks is not None:
            notes.append(f"{match.lora.name}: block weights are not kept by the stack rows")
    gone = missing_text(matches)
    if gone:
        notes.append(gone + " (\"Download missing by hash\" gets them from Civitai; then rebuild again)")
    return slots, "; ".join(notes), [m.hash for m in missing(matches) if m.hash]


def apply_recipe(app, recipe, source: str) -> list[Any]:
    """The tab's new values (RECIPE_FIELDS, stack, stack version, missing hashes, status) for `recipe`; a value
    the recipe lacks is left as it is."""
    slots, note, hashes = slots_for(app, recipe)
    sampler = recipe.sampler if recipe.sampler in SAMPLERS else (MODEL_SAMPLER if recipe.sampler else None)
    values = [recipe.prompt, recipe.negative_prompt, recipe.seed, recipe.steps, recipe.cfg, sampler,
              recipe.width, recipe.height]
    status = f"rebuilt from {source}: {len(slots)} LoRA(s) in the stack"
    if recipe.model:
        status += f"; it was drawn on {recipe.model}"
    return [gr.skip() if v is None else v for v in values] + [*slot_updates(slots), hashes,
                                                             f"{status}; {note}" if note else status]


def rebuild_from_image(app, file) -> list[Any]:
    if file is None:
        raise SdloraError("upload an image (PNG, JPEG or WebP) that carries its generation parameters")
    path = Path(file if isinstance(file, str) else file.name)
    return apply_recipe(app, read_recipe(path), "the image")


def load_saved(app, name: str) -> list[Any]:
    if not name:
        raise SdloraError("pick a saved recipe first")
    return apply_recipe(app, load_recipe(recipes_dir(app), name), f"recipe {name!r}")


def save_current(app, name: str, parameters: str, image) -> tuple[Any, str]:
    """Save the shown image's parameters as recipe `name` (the image becomes its thumbnail)."""
    if not (parameters or "").strip():
        raise SdloraError("generate an image first: a recipe is saved from the shown image's parameters")
    save_recipe(recipes_dir(app), name, parameters, image)
    return gr.Dropdown(choices=list_recipes(recipes_dir(app)), value=name.strip()), f"saved recipe {name.strip()!r}"


def saved_names(app) -> list[str]:
    return list_recipes(recipes_dir(app))


def create_ui(c: dict[str, Any]) -> None:
    with gr.Accordion("Recipes: rebuild from an image, save, load", open=False, elem_id="gen-recipes"):
        with gr.Row():
            c["recipe_image"] = gr.File(label="Image with parameters (PNG, JPEG, WebP)", file_types=IMAGE_TYPES,
                                        elem_id="gen-recipe-image", scale=2)
            with gr.Column(scale=1):
                c["recipe_rebuild"] = gr.Button("Rebuild from image", elem_id="gen-recipe-rebuild")
                c["recipe_download"] = gr.Button("Download missing by hash (Civitai)", elem_id="gen-recipe-download")
        c["recipe_missing"] = gr.State([])  # the short hashes of the last rebuild's missing LoRAs
        with gr.Row():
            c["recipe_pick"] = gr.Dropdown([], label="Saved recipes", elem_id="gen-recipe-pick", scale=2)
            c["recipe_load"] = gr.Button("Load", elem_id="gen-recipe-load", scale=1)
            c["recipe_name"] = gr.Textbox(label="Save the shown image as", elem_id="gen-recipe-name", scale=2)
            c["recipe_save"] = gr.Button("Save recipe", elem_id="gen-recipe-save", scale=1)


def wire(app, c: dict[str, Any]) -> None:
    outputs = [*(c[k] for k in RECIPE_FIELDS), c["stack"], c["stack_version"], c["recipe_missing"], c["status"]]
    c["recipe_rebuild"].click(bound(rebuild_from_image, app), c["recipe_image"], outputs, api_name="recipe_rebuild")
    c["recipe_load"].click(bound(load_saved, app), c["recipe_pick"], outputs, api_name="recipe_load")
    c["recipe_save"].click(bound(save_current, app), [c["recipe_name"], c["parameters"], c["image"]],
                           [c["recipe_pick"], c["status"]], api_name="recipe_save")
    c["recipe_pick"].focus(bound(lambda: gr.Dropdown(choices=saved_names(app))), None, c["recipe_pick"],
                           queue=False)
