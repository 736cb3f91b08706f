"""The example training configs in configs/: each loads and dry-runs (`sdlora train --config FILE --data
DIR --dry-run`), every value it sets reaches the resolved config, and the README's table lists it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sdlora.cli import main
from sdlora.settings import load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# the shape-only base (shipped configs, no weights) of each example's family, to check the native size
FAMILY = {"sdxl-style.yaml": "sdxl"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("data") / "images"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (40, 40), (60 * i, 120, 200)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a square number {i}\n", encoding="utf-8")
    return folder


def _dry_run(args: list[str], capsys) -> tuple[str, dict]:
    """(the summary lines, the resolved config) that `sdlora train ... --dry-run` prints."""
    assert main(["train", *args, "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    summary, _, config = out.partition("\nmodel:\n")
    return summary, yaml.safe_load("model:\n" + config)


def test_there_are_examples():
    assert {p.name for p in CONFIGS} >= {"quickstart.yaml", "sd15-style.yaml", "sd15-character.yaml",
                                          "sdxl-style.yaml", "low-memory.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_dry_runs_with_every_value_it_sets(path, data, tmp_path, capsys):
    summary, resolved = _dry_run(["--config", str(path), "--data", str(data), "--output", str(tmp_path)],
                                 capsys)
    assert "2 images in 1 folder(s)" in summary
    written = yaml.safe_load(path.read_text(encoding="utf-8"))
    for section, values in written.items():
        for key, value in values.items():
            if (section, key) not in (("data", "path"), ("output", "dir")):  # given on the command line
                assert resolved[section][key] == value, f"{section}.{key}"
    assert resolved["data"]["path"] == str(data)


@pytest.mark.parametrize("path", [p for p in CONFIGS if "/" in load_config(p).model.base],
                         ids=lambda p: p.name)
def test_example_resolution_is_the_native_size_of_its_family(path, data, capsys):
    """With the family's shape-only base in place of the hub id (no weights, no network): no far-off
    resolution warning, and the buckets are the base's native size."""
    family = FAMILY.get(path.name, "sd1")
    summary, resolved = _dry_run(["--config", str(path), "--data", str(data), "--base", family], capsys)
    assert "warning" not in summary
    native = {"sd1": 512, "sdxl": 1024}[family]
    assert resolved["data"]["resolution"] == native and f"buckets: {native}x{native} (2)" in summary


def test_quickstart_example_is_the_embedded_preset():
    """configs/quickstart.yaml repeats the shipped `embedded` recipe for a user to read and copy; they must
    not drift apart."""
    example, preset = load_config(ROOT / "configs" / "quickstart.yaml"), load_config("embedded")
    assert example.model == preset.model and example.lora == preset.lora and example.optim == preset.optim
    assert (ROOT / example.data.path / "000.png").is_file()  # sample_data/, from the repository root
    example.data.path = preset.data.path
    assert example.data == preset.data and example.output.save_dtype == preset.output.save_dtype


def test_the_readme_lists_every_example():
    table = (ROOT / "configs" / "README.md").read_text(encoding="utf-8")
    assert [p.name for p in CONFIGS if f"`{p.name}`" not in table] == []
