"""Generate tab, issue 14: the Base menu, add-time compatibility, seed -1, batch count, grids, Interrupt."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdlora.errors import CompatibilityError
from sdlora_webui.state import AppConfig, AppState
from sdlora_webui.tabs import generate_runs, generate_tab
from sdlora_webui.tabs.generate_tab import Slot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_bases(tmp_path_factory):
    """(embedded pipeline, wide base folder, LoRA folder with "a" made for the embedded model)."""
    from tests_webui_models import random_lora, write_wide_base

    from sdlora.base.load import load_components

    tmp = tmp_path_factory.mktemp("bases")
    wide = write_wide_base(tmp / "models" / "wide")
    (tmp / "loras").mkdir()
    random_lora(tmp / "loras" / "a.safetensors", load_components("embedded").unet, seed=1)
    return tmp, wide


@pytest.fixture
def app(two_bases, tmp_path):
    tmp, _ = two_bases
    state = AppState(AppConfig(lora_dir=tmp / "loras", output_dir=tmp_path / "out", model_dirs=(tmp / "models",)))
    yield state
    state.close()


def form(seed=3, steps=2, **extra):
    values = {"prompt": "a red circle", "negative": "", "seed": seed, "steps": steps, "cfg": 5.0, "width": 32,
              "height": 32, "stack": [{"name": "a", "strength": 1.0, "enabled": True, "separate": False, "te": 1.0,
                                       "unet": 1.0}]}
    return {**values, **extra}


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_base_menu_switch_refuses_and_reapplies(app, two_bases):
    _, wide = two_bases
    values = [value for _, value in generate_runs.base_choices(app)]
    assert values == ["embedded", str(wide.resolve())]
    import gc
    import weakref

    old = weakref.ref(app.pipeline_and_stack()[0])
    slots = generate_tab.add_checked(app, [], "a")  # fits the embedded model
    assert app.library_fits()["a"].short == "fits" and app.library_fits(str(wide))["a"].short == "needs its own base"
    message, kept, left = generate_tab.switch_base_slots(app, str(wide), slots)
    assert kept == [] and "taken off the stack" in message and "a (needs its own base" in message
    assert [s.name for s in left] == ["a"]
    pipe, stack = app.pipeline_and_stack()
    assert app.model_name == "wide" and stack.entries == [] and pipe.unet.config.block_out_channels[0] == 48
    gc.collect()
    assert old() is None, "the previous pipeline is still referenced after a switch"
    with pytest.raises(CompatibilityError) as refused:
        generate_tab.add_checked(app, [], "a")
    line = str(refused.value)
    assert "\n" not in line and "does not fit the base wide" in line and "Switch the Base menu to embedded" in line
    message, kept, left = generate_tab.switch_base_slots(app, "embedded", slots)
    assert [s.name for s in kept] == ["a"] and "1 LoRA(s) re-applied" in message and left == []
    assert [e.name for e in app.pipeline_and_stack()[1].entries] == ["a"]  # re-applied at the switch


def test_seed_minus_one_and_batch_count_write_pngs(app):
    drawn = generate_runs.draw_images(app, form(seed=-1, batch_count=2), generate_tab._syncer(app, form()))
    first, second = drawn.seeds
    assert second == first + 1 and len(drawn.paths) == 2
    assert f"Seed: {first}" in drawn.parameters and f"seed {first}, {second}" in drawn.status
    with Image.open(drawn.paths[1]) as png:
        assert f"Seed: {second}" in png.text["parameters"]


def test_grid_cells_equal_single_generations(app):
    values = form(grid_x="a", grid_x_values="0, 0.5, 1", grid_y="", grid_y_values="3, 4")
    drawn = generate_runs.draw_grid(app, values, generate_tab._syncer(app, values))
    grid = drawn.grid
    assert len(grid.cells) == 2 and len(grid.cells[0]) == 3 and "grid 3x2" in drawn.status
    for i, seed in enumerate((3, 4)):
        for j, strength in enumerate((0.0, 0.5, 1.0)):
            single = form(seed=seed)
            single["stack"][0]["strength"] = strength
            app.pipeline_and_stack()[1].clear()  # a fresh stack: the single image is drawn from W0
            image, _, _ = generate_tab.generate(app, single)
            x, y = grid.boxes[i][j]
            cell = drawn.images[0].crop((x, y, x + 32, y + 32))
            assert np.array_equal(_pixels(cell), _pixels(image)), (seed, strength)


def test_interrupt_stops_the_stream_and_says_so(app):
    values = form(steps=400)
    app.check_work = lambda *a: None  # the request is long on purpose

    def work(on_status, on_preview):
        return generate_runs.draw_images(app, values, generate_tab._syncer(app, values), on_status)

    updates = generate_runs.stream(app, work, [None, None], 1)
    seen = []
    for update in updates:
        seen.append(update[1])
        if str(update[1]).startswith("drawing: step"):
            app.stop_requested.set()
    assert any(str(s).startswith("drawing: step") for s in seen)
    assert seen[-1].startswith("Interrupted: stopped after step"), seen[-1]
    assert int(seen[-1].split("after step ")[1].split()[0]) < 400


def test_errors_are_shown_as_in_every_tab(app):
    """Issue 22 item 15: one way of showing errors in all tabs (a gradio error message, as Train, Library and
    Tools show them); the status line says the request stopped."""
    import gradio as gr

    from sdlora_webui.tabs.common import bound

    with pytest.raises(gr.Error, match="pick a LoRA"):
        bound(generate_tab.add_checked, app)([], "")
    updates = generate_runs.stream(app, lambda s, p: generate_runs.settings_from({"seed": -5}), [1, 2], 1)
    seen = []
    with pytest.raises(gr.Error, match="seed must be -1"):
        for update in updates:
            seen.append(update[1])
    assert seen[-1] == "stopped by an error (see the message)"


def test_slot_value_is_the_strength_type():
    assert Slot("a", 0.8, True, True, 0.5, 1.0).value.te_value == 0.5


def test_training_result_for_another_base_goes_to_the_library_only(app, two_bases, tmp_path):
    import shutil

    from sdlora_webui import app as webapp

    _, wide = two_bases
    trained = tmp_path / "trained.safetensors"
    shutil.copy(app.library_path("a"), trained)  # made for the embedded model
    app.select_base(str(wide))
    job = app.jobs.submit("style", lambda ctx: str(trained))
    app.jobs.wait(job.id, 5)
    message, name, slots = webapp.add_training_result(app, job.id, [])
    assert slots == [] and "not added to the stack" in message and "Switch the Base menu to embedded" in message
    assert name in app.library()


def test_strength_sliders_redraw_on_release(app):
    """A stack row's strength sliders write their value into the stack state on release, then ask for a redraw
    (the redraw option decides at run time whether it draws)."""
    import gradio as gr

    with gr.Blocks():
        c = {"stack": gr.State([]), "stack_version": gr.State(0), "prompt": gr.Textbox(), "redraw_fn": lambda v: None,
             "draw_inputs": set(), "draw_outputs": []}
        generate_tab._create_row(app, c, 0, generate_tab.Slot("a"))
        blocks = gr.context.get_blocks_context()
        ids = {block._id: getattr(block, "elem_id", None) for block in blocks.blocks.values()}
        released = [ids[target[0]] for dep in blocks.fns.values() for target in dep.targets if target[1] == "release"]
    assert sorted(released) == ["gen-slot-0-strength", "gen-slot-0-te", "gen-slot-0-unet"]


def test_lora_taken_off_by_a_switch_goes_back_when_switching_back(app, two_bases):
    """Issue 22 item 15: embedded -> wide takes "a" off; wide -> embedded puts it back (the session keeps it)."""
    _, wide = two_bases
    slots = generate_tab.add_checked(app, [], "a")
    _, kept, left = generate_tab.switch_base_slots(app, str(wide), slots)
    assert kept == [] and [s.name for s in left] == ["a"]
    message, kept, left = generate_tab.switch_base_slots(app, "embedded", kept, left)
    assert [s.name for s in kept] == ["a"] and left == []
    assert "put back on the stack (taken off at an earlier switch, they fit this base): a" in message
    assert [e.name for e in app.pipeline_and_stack()[1].entries] == ["a"]


def test_a_waiting_request_says_so_at_once(app):
    """Issue 22 item 15: while another request holds the model, the status says this one waits (an old error
    stayed on screen until the new request got the model)."""
    with app.generate_lock:
        updates = generate_runs.stream(app, lambda s, p: app.generate_lock.acquire() and app.generate_lock.release(),
                                       [None, "waiting for the model..."], 1)
        assert next(updates) == [None, "waiting for the model..."]
    list(updates)
