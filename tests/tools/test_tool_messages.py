"""What the CLI tools print: the per-module energy lines and the progress bar's first rate."""

from __future__ import annotations

import re
import time

from sdlora.cli.loraargs import energy_lines, progress_bar
from sdlora.progress import Progress
from sdlora.tools import ModuleResult, ToolResult
from sdlora.weights import LoraState


def _result(rows) -> ToolResult:
    return ToolResult(LoraState(), {f"m{i}": row for i, row in enumerate(rows)})


def test_merge_and_extract_lines_name_the_new_rank_only():
    lines = energy_lines(_result([ModuleResult(None, 8, 1.0)] * 3), 2)
    assert lines[0].split()[1:3] == ["rank", "8"] and " - " not in lines[0]
    assert lines[-1].endswith("(all keep 100%)")  # not "all keep more energy"


def test_resize_lines_show_old_and_new_rank_and_the_least_energy_of_the_rest():
    lines = energy_lines(_result([ModuleResult(16, 4, 0.5), ModuleResult(16, 4, 0.9), ModuleResult(16, 4, 0.7)]), 1)
    assert "rank 16 -> 4" in lines[0]
    assert lines[-1].endswith("(each keeps at least 70.0000%)")


def test_randomized_modules_get_their_error_reported():
    lines = energy_lines(_result([ModuleResult(None, 4, 0.99, randomized=True), ModuleResult(None, 4, 1.0)]))
    assert "1 large modules" in lines[-1] and "1.00e-01" in lines[-1]


def test_progress_bar_first_rate_is_measured_between_reports(capsys):
    update = progress_bar("resize")
    for done in range(1, 6):
        update(Progress(done, 5))
        time.sleep(0.12)
    rates = [float(r) for r in re.findall(r"([\d.]+)it/s", capsys.readouterr().err)]
    assert rates and max(rates) < 100  # about 8/s; the old bar opened with 104857.60it/s
