"""Tools tab handlers: inspect, convert, resize, merge, extract, bake, the metadata editor (tensor hash kept),
results written into the library, confinement."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from sdlora.errors import ConfigError
from sdlora.header import read_header, tensor_data_sha256
from sdlora_webui.paths import AccessError
from sdlora_webui.tabs import tools_tab

TO_Q = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
TE_Q = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"


@pytest.fixture
def lora_file(app):
    import sdlora
    from sdlora.weights import LoraModule, LoraState

    gen = torch.Generator().manual_seed(0)
    modules = {
        TO_Q: LoraModule("lora", {"down": torch.randn(4, 64, generator=gen), "up": torch.randn(64, 4, generator=gen)},
                         alpha=2.0),
        TE_Q: LoraModule("lora", {"down": torch.randn(4, 32, generator=gen), "up": torch.randn(32, 4, generator=gen)},
                         alpha=4.0),
    }
    metadata = {"ss_tag_frequency": '{"shapes": {"sks": 3}}', "ss_dataset_dirs": '{"x": 1}',
                "ss_training_comment": "private", "modelspec.title": "Old title"}
    path = Path(app.config.lora_dir) / "style.safetensors"
    sdlora.save_lora(LoraState(modules=modules, metadata=metadata), path)
    return path


def test_inspect_by_library_name(app, lora_file):
    summary, metadata = tools_tab.inspect_lora(app, "style")
    assert "style.safetensors" in summary and "modules: 2" in summary
    assert tensor_data_sha256(lora_file) in summary
    assert metadata["ss_training_comment"] == "private"


@pytest.mark.parametrize("attempt", ["../../etc/passwd", "/etc/passwd", "../loras/../../x.safetensors"])
def test_tool_inputs_outside_the_folders_are_refused(app, lora_file, attempt):
    with pytest.raises(AccessError):
        tools_tab.inspect_lora(app, attempt)


def test_tool_outputs_go_into_the_library_folder(app, lora_file):
    path, message = tools_tab.convert_lora(app, "style", "diffusers", "keep", "../../../escape")
    assert Path(path).parent == Path(app.config.lora_dir)
    assert Path(path).name == "escape.safetensors" and "added escape" in message
    import sdlora

    converted = sdlora.load_lora(path)
    assert set(converted.modules) == {TO_Q, TE_Q}
    assert torch.allclose(converted.delta(TO_Q), sdlora.load_lora(lora_file).delta(TO_Q), atol=1e-3)


def test_metadata_strip_and_edit_keep_the_tensor_hash(app, lora_file):
    before = read_header(lora_file)
    tensor_hash = tensor_data_sha256(lora_file)
    form = {"strip": True, "title": "My style", "trigger": "sks", "description": "", "out_name": "clean"}
    path, message, written = tools_tab.edit_metadata(app, "style", form)
    after = read_header(path)
    assert "tensor hash kept" in message
    assert tensor_data_sha256(path) == tensor_hash == after.metadata["sshs_model_hash"]
    assert "ss_tag_frequency" not in after.metadata and "ss_training_comment" not in after.metadata
    assert after.metadata["modelspec.title"] == "My style" and after.metadata["modelspec.trigger_phrase"] == "sks"
    assert after.metadata["ss_network_dim"] == before.metadata["ss_network_dim"]
    assert after.metadata == written
    from sdlora.header import legacy_hash

    assert after.metadata["sshs_legacy_hash"] == legacy_hash(path)
    from safetensors.torch import load_file

    old, new = load_file(lora_file), load_file(path)
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    assert tools_tab.load_metadata_fields(app, str(path)) == ("My style", "sks", "")


def test_metadata_edit_without_strip_keeps_other_keys(app, lora_file):
    form = {"strip": False, "title": "", "trigger": None, "description": "about", "out_name": ""}
    path, _, written = tools_tab.edit_metadata(app, "style", form)
    assert written["ss_training_comment"] == "private" and "modelspec.title" not in written
    assert written["modelspec.description"] == "about"
    assert Path(path).name == "style-edited.safetensors" and Path(path).parent == Path(app.config.lora_dir)


def test_tool_results_appear_in_the_library_under_unique_names(app, lora_file):
    """Every LoRA tool writes into the library folder; a name already used by a library LoRA (also in a
    subfolder: library names are file stems) gets -2, -3, ..., and the Library lists the results."""
    from sdlora_webui.tabs import library_tab

    sub = Path(app.config.lora_dir) / "sub"
    sub.mkdir()
    (sub / "style-resized.safetensors").write_bytes(lora_file.read_bytes())
    outputs = [
        tools_tab.convert_lora(app, "style", "kohya", "keep", "")[0],
        tools_tab.convert_lora(app, "style", "kohya", "keep", "")[0],
        tools_tab.resize_lora(app, "style", 2, 0.9, "")[0],
        tools_tab.merge_loras(app, [["style", 1.0], ["style-kohya", 1.0]], 0, "")[0],
        tools_tab.edit_metadata(app, "style", {"title": "t", "out_name": "style"})[0],
    ]
    assert [Path(p).name for p in outputs] == ["style-kohya.safetensors", "style-kohya-2.safetensors",
                                               "style-resized-2.safetensors", "merged.safetensors",
                                               "style-2.safetensors"]
    assert all(Path(p).parent == Path(app.config.lora_dir) for p in outputs)
    names = library_tab.refresh(app)[2]
    assert {Path(p).stem for p in outputs} <= set(names)
    assert len(names) == len(set(names))  # no two library LoRAs share a name


def test_every_lora_field_is_a_library_menu_that_takes_typed_names(app, lora_file):
    import gradio as gr

    from sdlora_webui.app import build_app

    with gr.Blocks():
        c = tools_tab.create_ui(app)
    fields = [c["inspect_src"], c["conv_src"], c["resize_src"], c["meta_src"], *c["merge_slots"][::2],
              *c["bake_slots"][::2]]
    assert all(f in c["menus"] for f in fields) and len(c["menus"]) == len(fields)
    for menu in c["menus"]:
        assert isinstance(menu, gr.Dropdown) and menu.allow_custom_value
        assert [choice[0] for choice in menu.choices] == ["style"]
    sdlora_path = tools_tab.convert_lora(app, "style", "kohya", "keep", "new")[0]
    updates = tools_tab.refresh_menus(app, c)
    assert all(sorted(choice[0] for choice in u.choices) == ["new", "style"] for u in updates)
    assert tools_tab.inspect_lora(app, sdlora_path)[0].startswith("**new.safetensors**")  # a typed path
    demo = build_app(app)  # tool results refresh the Library list
    names = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    library_table = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "lib-table")
    for api in ("tools_convert", "tools_resize", "tools_merge", "tools_extract", "tools_metadata"):
        after = [fn for fn in demo.fns.values() if fn.trigger_after == names[api]._id]
        assert any(library_table in fn.outputs for fn in after), api


def test_resize_and_merge_keep_the_input_dtype_or_take_the_chosen_one(app, lora_file, tmp_path):
    import sdlora
    from sdlora.header import read_header

    half = Path(app.config.lora_dir) / "half.safetensors"
    sdlora.save_lora(sdlora.load_lora(lora_file), half, dtype="fp16")

    def dtypes(path):
        return {i.dtype for k, i in read_header(path).tensors.items() if not k.endswith(".alpha")}

    assert dtypes(tools_tab.resize_lora(app, "half", 2, 0.9, "")[0]) == {"F16"}
    assert dtypes(tools_tab.resize_lora(app, "half", 2, 0.9, "", "bf16")[0]) == {"BF16"}
    assert dtypes(tools_tab.merge_loras(app, [["half", 1.0], ["half", 0.5]], 2, "")[0]) == {"F16"}
    assert dtypes(tools_tab.merge_loras(app, [["half", 1.0], ["half", 0.5]], 0, "", "fp32")[0]) == {"F32"}
    with pytest.raises(ConfigError, match="dtype"):
        tools_tab.resize_lora(app, "half", 2, 0.9, "", "int8")


def test_resize_and_merge_write_new_files(app, lora_file):
    import sdlora

    path, message = tools_tab.resize_lora(app, "style", 2, 0.9, "small")
    resized = sdlora.load_lora(path)
    assert {m.rank for m in resized.modules.values()} == {2} and "energy" in message
    path, message = tools_tab.merge_loras(app, [["style", 1.0], [str(lora_file), -0.5]], 0, "merged")
    merged = sdlora.load_lora(path)
    original = sdlora.load_lora(lora_file)
    assert torch.allclose(merged.delta(TO_Q), 0.5 * original.delta(TO_Q), atol=1e-2)
    with pytest.raises(Exception, match="at least two"):
        tools_tab.merge_loras(app, [["style", 1.0]], 0, "x")


def test_extract_recovers_a_planted_change(tmp_path):
    import shutil

    from diffusers import UNet2DConditionModel
    from tests_webui_models import write_untrained_embedded

    import sdlora
    from sdlora_webui.state import AppConfig, AppState

    models = tmp_path / "models"
    base = write_untrained_embedded(models / "base")
    tuned = models / "tuned"
    shutil.copytree(base, tuned)
    unet = UNet2DConditionModel.from_pretrained(tuned / "unet")
    live, layer = next((n, m) for n, m in unet.named_modules() if n.endswith("attn1.to_q"))
    planted = torch.outer(torch.linspace(-1, 1, layer.weight.shape[0]), torch.linspace(1, 2, layer.weight.shape[1]))
    with torch.no_grad():
        layer.weight += planted
    unet.save_pretrained(tuned / "unet")
    state = AppState(AppConfig(lora_dir=tmp_path / "l", output_dir=tmp_path / "o", model_dirs=(models,)))
    path, _ = tools_tab.extract_lora(state, str(base), str(tuned), 2, "extracted")
    lora = sdlora.load_lora(path)
    name = f"unet.{live}"
    assert list(lora.modules) == [name]
    assert torch.allclose(lora.delta(name), planted, atol=1e-2)
    with pytest.raises(AccessError):
        tools_tab.extract_lora(state, "/etc", str(tuned), 2, "x")
    state.close()


def test_bake_writes_a_new_base_model_into_the_bake_folder(tmp_path):
    """Bake in the Tools tab: the LoRA merged into the base, written as a single file under <output>/models
    (where base-model lists look: AppConfig.model_search_dirs), never over an existing model."""
    from tests_webui_models import random_lora, write_untrained_embedded

    from sdlora.base.load import load_components
    from sdlora_webui.state import AppConfig, AppState

    models = tmp_path / "models"
    base = write_untrained_embedded(models / "base")
    state = AppState(AppConfig(lora_dir=tmp_path / "l", output_dir=tmp_path / "o", model_dirs=(models,)))
    random_lora(tmp_path / "l" / "shapes.safetensors", load_components(str(base)).unet)
    path, message = tools_tab.bake_model(state, str(base), [["shapes", 0.5], ["", 1.0]], "single", "keep",
                                         "../baked")
    assert Path(path) == state.config.bake_dir / "baked.safetensors" and "baked 1 LoRA" in message
    assert str(Path(path).resolve()) in [b.value for b in state.bases()]  # the Base menu offers it
    before, after = load_components(str(base)).unet, load_components(path).unet
    changed = [n for n, p in after.named_parameters() if not torch.equal(p, before.get_parameter(n))]
    assert changed and all(".attn" in n for n in changed)
    second, _ = tools_tab.bake_model(state, str(base), [["shapes", 1.0]], "single", "fp16", "baked")
    assert Path(second).name == "baked-2.safetensors"
    with pytest.raises(ConfigError, match="at least one LoRA"):
        tools_tab.bake_model(state, str(base), [["", 1.0]], "single", "keep", "x")
    with pytest.raises(AccessError):
        tools_tab.bake_model(state, "/etc", [["shapes", 1.0]], "single", "keep", "x")
    state.close()


def test_merge_skips_empty_slots(app, lora_file):
    """The page sends None for an unused slot (and its weight): it is skipped, not read as the name "None"."""
    import sdlora

    path, _ = tools_tab.merge_loras(app, [["style", 1.0], [None, 1.0], [str(lora_file), 0.5], ["", None]], 0, "")
    assert torch.allclose(sdlora.load_lora(path).delta(TO_Q), 1.5 * sdlora.load_lora(lora_file).delta(TO_Q),
                          atol=1e-2)


def _library_files(app) -> set[str]:
    return {p.name for p in Path(app.config.lora_dir).rglob("*.safetensors")}


def test_a_tool_run_streams_module_progress_and_finishes(app, lora_file):
    runs = tools_tab.ToolRuns()
    updates = list(tools_tab.stream_run(runs, "resize", lambda **hooks: tools_tab.resize_lora(
        app, "style", 2, 0.9, "small", **hooks), poll=0.01))
    path, message, line, key = updates[-1]
    assert Path(path).is_file() and "added small" in message and key is None
    assert line.startswith("resize: module 2/2 · done in")


def test_cancel_stops_a_tool_run_before_the_next_module_and_writes_nothing(app, lora_file):
    runs = tools_tab.ToolRuns()
    before = _library_files(app)
    started = []

    def slow_resize(on_progress, should_stop):
        def report(progress):  # one module a second: the cancel lands while the first module is reported
            on_progress(progress)
            started.append(progress)
            time.sleep(1.0)

        return tools_tab.resize_lora(app, "style", 2, 0.9, "small", on_progress=report, should_stop=should_stop)

    stream = tools_tab.stream_run(runs, "resize", slow_resize, poll=0.01)
    *_, key = next(stream)
    while not started:
        *_, key = next(stream)
    assert tools_tab.cancel_run(runs, key).startswith("cancelling")
    *_, (path, message, _, key) = list(stream)
    assert path is None and "cancelled" in message and "after 1 of 2 modules" in message
    assert _library_files(app) == before
    assert tools_tab.cancel_run(runs, key) == "no tool is running in this page"


def test_progress_line_gives_module_count_and_eta():
    from sdlora.progress import Progress

    assert tools_tab.progress_line("merge", Progress(10, 40), 20.0) == "merge: module 10/40 · 20 s · ETA 1 min 00 s"
    assert tools_tab.progress_line("merge", None, 1.2).startswith("merge: reading")
