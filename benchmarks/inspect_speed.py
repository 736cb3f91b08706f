"""Benchmark: `sdlora inspect` (header only, no torch) against loading the file with safetensors+torch.

Run: .venv/bin/python benchmarks/inspect_speed.py [--runs 5] [--rank 32]

It writes a realistic SD1.5 Kohya LoRA (every Linear/1x1-conv of the transformer blocks and the text
encoder, the "LoRA-LierLa" module set, fp16) to a temp folder, then times whole processes (interpreter
start included) for each command on that file and on the wild files, and prints a table of medians.
Target (issue 2): `sdlora inspect` under 1 s including interpreter start.
"""

from __future__ import annotations

import sys
from pathlib import Path

# this file is named like the standard library's `inspect`: keep its folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import statistics
import subprocess
import tempfile
import time

REPO = Path(__file__).resolve().parent.parent
WILD = REPO.parent / "shared" / "wild_loras"
LIERLA = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
          "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")  # fmt: skip


def make_sd15_lora(path: Path, rank: int) -> int:
    """Write an SD1.5 Kohya LoRA of the default module set; returns the module count."""
    import torch
    from safetensors.torch import save_file

    from sdlora.arch.naming import kohya_name
    from sdlora.arch.tables import family_table

    tensors = {}
    modules = [(n, i) for n, i in family_table("sd1").items() if n.endswith(LIERLA) and "attentions" in n or
               n.startswith("text_encoder") and n.endswith(LIERLA)]  # fmt: skip
    for name, info in modules:
        lora = kohya_name(name, "sd1")
        tail = (1, 1) if len(info.shape) == 4 else ()
        tensors[f"{lora}.lora_down.weight"] = torch.randn(rank, info.shape[1], *tail, dtype=torch.float16)
        tensors[f"{lora}.lora_up.weight"] = torch.zeros(info.shape[0], rank, *tail, dtype=torch.float16)
        tensors[f"{lora}.alpha"] = torch.tensor(rank / 2, dtype=torch.float16)
    save_file(
        tensors, str(path), metadata={"ss_network_dim": str(rank), "ss_tag_frequency": '{"10_x": {"x": 3}}'}
    )
    return len(modules)


def timed(command: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=REPO)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def commands(path: Path) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "sdlora inspect": [py, "-m", "sdlora", "inspect", str(path)],
        "sdlora inspect --no-hash": [py, "-m", "sdlora", "inspect", "--no-hash", str(path)],
        "sdlora inspect --json": [py, "-m", "sdlora", "inspect", "--json", str(path)],
        "peer: safetensors.torch.load_file": [
            py,
            "-c",
            f"import safetensors.torch as s; s.load_file({str(path)!r})",
        ],
        "peer: python -c pass (interpreter only)": [py, "-c", "pass"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        synthetic = Path(folder) / f"sd15_kohya_r{args.rank}_fp16.safetensors"
        count = make_sd15_lora(synthetic, args.rank)
        files = [
            synthetic,
            WILD / "lycoris_lokr_sd1_d16_f16.safetensors",
            WILD / "cloneofsimo_sd15_r4_f16.safetensors",
        ]
        print(
            f"median of {args.runs} runs, whole process (interpreter start included); synthetic file: {count} modules"
        )
        print("| file | MB | command | seconds |\n|---|---:|---|---:|")
        for path in files:
            if not path.exists():
                continue
            size = path.stat().st_size / 1e6
            for label, command in commands(path).items():
                print(f"| {path.name} | {size:.1f} | {label} | {timed(command, args.runs):.3f} |", flush=True)


if __name__ == "__main__":
    main()
