"""Load time of a LoRA file with many keys that map to no module (issue 15: it was quadratic).

Prints one line per size; 20k keys should take well under a second. Run:
    PYTHONPATH=. python benchmarks/load_keys.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from sdlora.errors import FormatError
from sdlora.formats import load_lora


def unknown_keys_file(path: Path, keys: int) -> Path:
    """`keys` Kohya keys (down/up pairs) of modules no SD family has."""
    tensors = {}
    for i in range(keys // 2):
        tensors[f"lora_unet_nowhere_{i}.lora_down.weight"] = torch.zeros(1, 2)
        tensors[f"lora_unet_nowhere_{i}.lora_up.weight"] = torch.zeros(2, 1)
    save_file(tensors, str(path))
    return path


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        for keys in (5_000, 10_000, 20_000):
            path = unknown_keys_file(Path(folder) / f"unknown_{keys}.safetensors", keys)
            start, cpu = time.perf_counter(), time.process_time()
            try:
                load_lora(path)
                outcome = "loaded"
            except FormatError:
                outcome = "refused (no usable module)"
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            # CPU time too: on a shared machine the wall time mostly measures the other processes
            print(f"{keys:>6} unknown keys: {wall:.2f} s wall, {cpu:.2f} s CPU, {outcome}")


if __name__ == "__main__":
    main()
