"""The sdlora web UI: `build_app(state) -> gr.Blocks` and `launch(...)`.

>>> from sdlora_webui.app import build_app, launch
>>> from sdlora_webui.state import AppConfig, AppState
>>> state = AppState(AppConfig(lora_dir=Path("loras"), output_dir=Path("outputs")))
>>> demo = build_app(state)          # builds, does not launch; tests call the handlers directly
>>> launch(demo, state)              # binds 127.0.0.1 unless told otherwise

Running `python -m sdlora_webui.app` is the same as `sdlora webui`.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from sdlora.quiet import quiet_third_party
from sdlora_webui.state import AppConfig, AppState
from sdlora_webui.tabs import civitai_panel, generate_tab, library_tab, recipe_panel, tools_tab, train_tab
from sdlora_webui.tabs.common import bound
from sdlora_webui.tabs.generate_runs import refusal

log = logging.getLogger(__name__)

# gradio copies every image it serves into its temp folder and never deletes the copies unless asked: this app's
# copies older than 2 hours go every 30 minutes, and all of them when the server stops (gradio's delete_cache)
DELETE_CACHE = (1800, 7200)
CSS = """
.sdlora-progress progress { width: 60%; height: 1.2em; vertical-align: middle; }
#gen-image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
"""


def build_app(state: AppState) -> gr.Blocks:
    """Build the four tabs over `state` (nothing is launched or loaded yet)."""
    quiet_third_party()
    with gr.Blocks(title="sdlora", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# sdlora\nTrain a LoRA, manage a library, stack LoRAs with sliders and generate.")
        with gr.Tabs():
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                train = train_tab.create_ui(state)
            with gr.Tab("Library", id="library", elem_id="tab-library"):
                library = library_tab.create_ui(state)
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                generate = generate_tab.create_ui(state)
                with generate["recipe_box"]:  # a part of the Generate tab that builds on the tab's own code
                    recipe_panel.create_ui(generate)
                recipe_panel.wire(state, generate)
            with gr.Tab("Tools", id="tools", elem_id="tab-tools"):
                tools = tools_tab.create_ui(state)
        _wire_cross_tabs(state, train, library, generate)
        for event in tools["library_writes"]:  # tool results go into the library: show them there
            event.success(bound(library_tab.refresh_outputs, state), library_tab.listing(library),
                          library["refresh_outputs"]).then(
                bound(lambda: gr.Dropdown(choices=generate_tab.library_choices(state))), None, generate["pick"])
        # fill the lists when a page opens (not at build time: the library may change between visits)
        demo.load(bound(library_tab.refresh_outputs, state), None, library["refresh_outputs"],
                  api_name="library_on_load")
        demo.load(bound(lambda: gr.Dropdown(choices=generate_tab.library_choices(state))), None, generate["pick"],
                  api_name="generate_on_load")
        demo.load(bound(lambda: tools_tab.refresh_menus(state, tools)), None, tools["menus"],
                  api_name="tools_on_load")
    return demo


def add_training_result(state: AppState, job_id: int | None, slots: list) -> tuple[str, str, list]:
    """Copy a finished training result into the library and append it to the session's stack slots.

    Returns (message, library name, new slots).
    """
    name, message = train_tab.add_result_to_library(state, job_id)
    fit = state.fit(name)
    if not fit.fits and fit.needs is not None:  # made for another base than the Generate tab's: library only
        return f"{message}; not added to the stack: {refusal(state, name, fit)}", name, slots
    slots = generate_tab.add_slot(slots, name)
    return f"{message} and to the stack (Generate tab)", name, slots


def _wire_cross_tabs(state: AppState, train: dict, library: dict, generate: dict) -> None:
    """Train's "Add to library and stack" fills a Generate slot and refreshes the library list; the
    Library's "Use the Generate tab's image" sets a preview from the Generate tab's image."""
    library_tab.wire_generated_preview(state, library, generate["image"])
    civitai = library["civitai"]

    def download_missing(hashes: list[str]):
        return civitai_panel.queue_by_hash(state, civitai["queue_state"], hashes), gr.Timer(active=True)

    generate["recipe_download"].click(bound(download_missing), generate["recipe_missing"],
                                      [generate["status"], civitai["timer"]], api_name="recipe_download_missing")

    def add_result(values: dict) -> list[Any]:
        slots = generate_tab.current_slots(values, generate)
        message, name, slots = add_training_result(state, values[train["job_id"]], slots)
        choices = generate_tab.library_choices(state)
        return [message, gr.Dropdown(choices=choices, value=name), *generate_tab.slot_updates(slots)]

    train["add_to_stack"].click(
        bound(add_result), {train["job_id"], generate["stack"]},
        [train["status"], generate["pick"], *generate_tab.stack_outputs(generate)], api_name="train_add_to_stack",
    ).then(bound(library_tab.refresh_outputs, state), library_tab.listing(library),
           library["refresh_outputs"])


def launch(demo: gr.Blocks, state: AppState, *, host: str = "127.0.0.1", port: int | None = None,
           prevent_thread_lock: bool = False, quiet: bool = False):
    """Launch on `host` (loopback by default), serving files only from the configured folders."""
    if not is_loopback(host):
        log.warning("the web UI is bound to %s: anyone who can reach this address can read and write the "
                    "configured folders and run training. Use 127.0.0.1 unless you mean it.", host)
    demo.queue(default_concurrency_limit=1)
    result = demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,  # gradio's lines end with a hint to set share=True, which this app never does
        show_error=True,
        allowed_paths=[str(p) for p in state.config.read_roots],
        max_file_size=state.config.limits.largest,
        css=CSS,
    )
    if not quiet:
        print(f"sdlora web UI running on {result[1]} (Ctrl+C stops it)", flush=True)
    if not prevent_thread_lock:
        demo.block_thread()
    return result


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_state(lora_dir: str | Path | list = "loras", output_dir: str | Path = "outputs",
                  base: str = "embedded", data_dirs: tuple[Path, ...] | None = None,
                  model_dirs: tuple[Path, ...] = (), **options) -> AppState:
    """An AppState with the repository's sample_data/ as a readable data folder when present; `options` are
    further `AppConfig` fields (allow_pickle, max_work). `lora_dir` may be a list of library roots."""
    if data_dirs is None:
        sample = Path(__file__).resolve().parent.parent / "sample_data"
        data_dirs = (sample,) if sample.is_dir() else ()
    lora_dirs = [Path(d).resolve() for d in (lora_dir if isinstance(lora_dir, list | tuple) else [lora_dir])]
    return AppState(AppConfig(lora_dir=lora_dirs[0], extra_lora_dirs=tuple(lora_dirs[1:]),
                              output_dir=Path(output_dir).resolve(),
                              base=base, data_dirs=tuple(Path(d).resolve() for d in data_dirs),
                              model_dirs=tuple(Path(d).resolve() for d in model_dirs), **options))


if __name__ == "__main__":
    _state = default_state()
    launch(build_app(_state), _state)
