"""benchmarks/stack.py --quick: the benchmark runs and its exactness columns hold (timings are not tested)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "stack.py"


@pytest.mark.slow
def test_quick_benchmark_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("stack_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    assert module.main(["--quick", "--changes", "4", "--repeats", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| load + apply 5 LoRAs (s) |" in table and "| measure | sdlora | diffusers |" in table
    assert "writing that much fresh memory takes" in table
    numbers = json.loads(out.read_text())
    assert numbers["machine"]["gigabytes"] > 0 and numbers["machine"]["fresh_write"] > 0
    ours = numbers["sdlora"]
    assert ours["restored"] is True and ours["te_applied"] is True
    assert ours["error"] <= 1e-5
