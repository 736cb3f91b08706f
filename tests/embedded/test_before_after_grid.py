"""Issue 22 item 16 (grid labels): the quickstart's before/after grid labels its columns with the prompts (and
its rows with the strengths), as A1111's X/Y plot does."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdlora.embedded.showcase import save_grid


def _dark_columns(band: np.ndarray) -> bool:
    return bool((band < 128).any())


def test_columns_carry_the_prompts(tmp_path):
    rows = {"strength 0": np.full((2, 8, 8, 3), 200, np.uint8), "strength 1": np.full((2, 8, 8, 3), 90, np.uint8)}
    path = save_grid(rows, tmp_path / "grid.png", zoom=4, column_labels=["zqx style, a circle", "a square"])
    sheet = np.asarray(Image.open(path).convert("L"))
    unlabelled = np.asarray(Image.open(save_grid(rows, tmp_path / "plain.png", zoom=4)).convert("L"))
    assert sheet.shape[1] > unlabelled.shape[1]  # a column is as wide as its prompt
    top = sheet[:8]  # the label row above the cells
    assert _dark_columns(top[:, : sheet.shape[1] // 2]) and _dark_columns(top[:, sheet.shape[1] // 2:])
    assert not _dark_columns(unlabelled[:8, unlabelled.shape[1] // 2:])
    with pytest.raises(ValueError, match="1 column labels for 2 columns"):
        save_grid(rows, tmp_path / "bad.png", column_labels=["one"])


def test_the_script_passes_the_prompts():
    from pathlib import Path

    script = (Path(__file__).resolve().parents[2] / "scripts" / "before_after.py").read_text()
    assert "column_labels=prompts" in script
