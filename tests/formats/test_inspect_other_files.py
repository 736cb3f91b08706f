"""Issue 22 item 12: `inspect` on a PNG, YAML or JSON file says what the file is (not "broken header, get it
again"); a PNG holding A1111 generation parameters offers them, and `--parameters` shows them."""

from __future__ import annotations

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdlora.cli import main
from sdlora.filekind import png_parameters

PARAMETERS = "a red circle\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 3, Model: embedded"


def _png(path, parameters=None, itxt=False):
    info = PngInfo()
    if parameters is not None:
        info.add_itxt("parameters", parameters) if itxt else info.add_text("parameters", parameters)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(("name", "content", "kind"), [
    ("config.yaml", b"model:\n  base: embedded\n", "a YAML file"),
    ("preset.json", b'{"learning_rate": 0.0001}', "a JSON file"),
    ("notes", b'{"a": "b"}', "a JSON file"),
    ("photo.jpg", b"\xff\xd8\xff\xe0" + b"\0" * 40, "a JPEG image"),
])
def test_other_files_are_named(tmp_path, capsys, name, content, kind):
    (tmp_path / name).write_bytes(content)
    assert main(["inspect", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert f"{name}: this is {kind}, not a LoRA" in err and "get it again" not in err


def test_a_png_says_so_and_offers_its_parameters(tmp_path, capsys):
    plain = _png(tmp_path / "plain.png")
    assert main(["inspect", str(plain)]) == 2
    err = capsys.readouterr().err
    assert "plain.png: this is a PNG image, not a LoRA" in err and "--parameters" not in err
    made = _png(tmp_path / "made.png", PARAMETERS)
    assert main(["inspect", str(made)]) == 2
    assert "sdlora inspect --parameters made.png shows them" in capsys.readouterr().err
    assert main(["inspect", "--parameters", str(made)]) == 0
    assert capsys.readouterr().out.strip() == PARAMETERS
    assert main(["inspect", "--parameters", str(plain)]) == 2


def test_itxt_parameters_are_read(tmp_path):
    text = PARAMETERS.replace("a red circle", "un cercle rouge, café")
    assert png_parameters(_png(tmp_path / "u.png", text, itxt=True)) == text


def test_an_empty_or_damaged_safetensors_file_keeps_its_message(tmp_path, capsys):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert main(["inspect", str(tmp_path / "empty.safetensors")]) == 2
    assert "the file is empty" in capsys.readouterr().err
    (tmp_path / "cut.safetensors").write_bytes(b"\xff\x00\x00\x00\x00\x00\x00\x00{")
    assert main(["inspect", str(tmp_path / "cut.safetensors")]) == 2
    assert "broken safetensors header" in capsys.readouterr().err
