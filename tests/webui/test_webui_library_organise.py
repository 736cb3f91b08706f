"""Library tab: filters, bulk move/tag/favourite, duplicates (keep one, the others to .trash/); several roots."""

from __future__ import annotations

import shutil

import pytest

from sdlora.errors import SdloraError
from sdlora.library import read_notes
from sdlora_webui.state import AppConfig, AppState
from sdlora_webui.tabs import library_tab


def test_bulk_tag_favourite_move_and_filters(gen_app, tmp_path):
    loras = tmp_path / "loras"
    assert "2 of 2" in library_tab.tag_selected(gen_app, ["a", "b"], "ink, portrait", "")
    assert library_tab.favourite_selected(gen_app, ["b"], True) == "marked 1 LoRA(s) as favourite"
    assert library_tab.refresh(gen_app, filters=library_tab.Filters(tag="ink"))[2] == ["a", "b"]
    assert library_tab.refresh(gen_app, filters=library_tab.Filters(favourites=True))[2] == ["b"]
    (loras / "a.civitai.info").write_text('{"baseModel": "Pony"}')
    assert library_tab.refresh(gen_app, filters=library_tab.Filters(base_model="Pony"))[2] == ["a"]
    assert library_tab.move_selected(gen_app, ["a"], "styles/ink") == "moved 1 LoRA(s)"
    assert (loras / "styles" / "ink" / "a.json").is_file() and (loras / "styles" / "ink" / "a.civitai.info").is_file()
    assert library_tab.refresh(gen_app, filters=library_tab.Filters(folder="styles"))[2] == ["a"]
    assert library_tab.filter_choices(gen_app)[0] == [library_tab.ALL, "styles", "styles/ink"]
    assert read_notes(loras / "styles" / "ink" / "a.safetensors")["tags"] == ["ink", "portrait"]
    with pytest.raises(SdloraError, match="outside the folders"):
        library_tab.move_selected(gen_app, ["b"], str(tmp_path / "elsewhere"))
    with pytest.raises(SdloraError, match="Selected"):
        library_tab.tag_selected(gen_app, [], "x", "")


def test_duplicates_keep_one_moves_the_other_to_the_trash(gen_app, tmp_path):
    loras = tmp_path / "loras"
    (loras / "copies").mkdir()
    shutil.copy(loras / "a.safetensors", loras / "copies" / "a-copy.safetensors")
    (loras / "copies" / "a-copy.preview.png").write_bytes(b"\x89PNG fake")
    rows, _, message = library_tab.find_dupes(gen_app)
    assert message == "1 group(s) of duplicates (2 files)"
    assert [row[2] for row in rows] == ["loras/a.safetensors", "loras/copies/a-copy.safetensors"]
    message = library_tab.keep_duplicate(gen_app, str(loras / "a.safetensors"))
    assert message.startswith("moved 1 LoRA(s)") and "kept loras/a.safetensors" in message
    assert sorted(p.name for p in (loras / ".trash" / "copies").iterdir()) == ["a-copy.preview.png",
                                                                               "a-copy.safetensors"]
    assert "a-copy" not in gen_app.library() and library_tab.find_dupes(gen_app)[0] == []


def test_several_library_roots(tmp_path):
    from tests_webui_models import embedded_pipeline, random_lora

    pipe = embedded_pipeline(tmp_path / "base")
    first, second = tmp_path / "first", tmp_path / "second"
    (second / "deep").mkdir(parents=True)
    first.mkdir()
    random_lora(first / "a.safetensors", pipe.unet, seed=1)
    random_lora(second / "deep" / "b.safetensors", pipe.unet, seed=2)
    state = AppState(AppConfig(lora_dir=first, extra_lora_dirs=(second,), output_dir=tmp_path / "out"))
    try:
        assert sorted(state.library()) == ["a", "b"] and state.library_path("b").parent == second / "deep"
        assert library_tab.refresh(state)[2] == ["a", "b"]
        assert library_tab.move_selected(state, ["a"], str(second / "moved")) == "moved 1 LoRA(s)"
        assert (second / "moved" / "a.safetensors").is_file()
    finally:
        state.close()
