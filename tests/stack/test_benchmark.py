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
    assert module.main(["--quick", "--changes", "4", "--repeats", "2", "--sdxl-memory", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| load + apply 5 LoRAs (s) |" in table and "| measure | sdlora | diffusers |" in table
    assert "writing that much fresh memory takes" in table
    numbers = json.loads(out.read_text())
    assert numbers["machine"]["gigabytes"] > 0 and numbers["machine"]["fresh_write"] > 0
    ours, copy = numbers["sdlora"], numbers["sdlora_copy"]
    for side in (ours, copy):
        assert side["restored"] is True and side["te_applied"] is True
        assert side["error"] <= 1e-5
    # the models are loaded from files: W0 comes back from there, w0="copy" keeps it in memory
    assert ours["mode"] == "file" and ours["weight_copies"] == 0 and ours["factors"] > 0
    assert copy["mode"] == "copy" and copy["weight_copies"] > 0
    assert "| W0 copies kept (MB, tracked) | 0.0 |" in table
    sdxl = numbers["sdxl_memory"]
    assert sdxl["modules"] > 900 and 0 < sdxl["single_file_fused"] < sdxl["weights"]
