"""Benchmark: a library of 1,000 LoRAs listed, filtered and searched (issue 24: under a second, warm cache).

Run: .venv/bin/python benchmarks/library.py [--files 1000] [--runs 5]

It writes `--files` tiny Kohya LoRAs (one module, rank 2, fp16: about 8 KB each) into 20 folders of a temp
library, a third of them with an A1111 `<stem>.json` (tags, favourite) and a Civitai `<stem>.civitai.info`, then
times, in this process (median of `--runs`):

- cold scan: no header cache (every header read: what the first listing costs);
- warm scan: the header cache written by the first scan (no header read; notes, previews and Civitai info are
  still looked up per file, as the Library tab does on every refresh);
- filter and search over the warm scan's entries (a folder, a tag, a base model, favourites; a two-word query);
- the duplicate grouping with every hash cached (`sdlora library dupes` a second time).

The peer in the same run is the cold scan: the warm paths must be the fast ones. Target: warm scan + filter +
search under 1 s for 1,000 files.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODULE = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"


def make_library(root: Path, files: int) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    for n in range(files):
        folder = root / f"group{n % 20:02d}" / ("sub" if n % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"{MODULE}.lora_down.weight": rng.standard_normal((2, 768)).astype(np.float16),
                   f"{MODULE}.lora_up.weight": rng.standard_normal((1280, 2)).astype(np.float16),
                   f"{MODULE}.alpha": np.array(2.0, dtype=np.float32)}
        path = folder / f"lora{n:04d}.safetensors"
        save_file(tensors, str(path), metadata={"modelspec.trigger_phrase": f"word{n % 50}"})
        if n % 3 == 0:
            notes = {"activation text": f"word{n % 50}", "tags": [f"tag{n % 7}", "style"], "favourite": n % 9 == 0}
            path.with_suffix(".json").write_text(json.dumps(notes))
            path.with_suffix(".civitai.info").write_text(json.dumps({"baseModel": "SD 1.5" if n % 2 else "Pony"}))


def timed(fn, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from sdlora.library import scan, search
    from sdlora.library.dupes import find_duplicates
    from sdlora.library.organise import filter_entries

    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "loras", Path(tmp) / "cache.json"
        make_library(root, args.files)
        cold, _ = timed(lambda: scan(root, cache_path=False), args.runs)
        scan(root, cache_path=cache)  # writes the cache
        warm, result = timed(lambda: scan(root, cache_path=cache), args.runs)
        assert result.files_read == 0 and len(result.entries) == args.files
        entries = result.entries
        filters, found = timed(lambda: [filter_entries(entries, folder="group03"), filter_entries(entries, tag="tag2"),
                                        filter_entries(entries, base_model="Pony"),
                                        filter_entries(entries, favourites=True)], args.runs)
        searched, hits = timed(lambda: search(entries, "word7 style", "date"), args.runs)
        find_duplicates(entries, cache_path=cache)  # hashes every file once, into the cache
        dupes, _ = timed(lambda: find_duplicates(scan(root, cache_path=cache).entries, cache_path=cache), args.runs)
    print(f"{args.files} LoRAs, median of {args.runs} runs")
    print("| what | seconds | vs cold scan |")
    print("|---|---|---|")
    for what, seconds in (("cold scan (no cache)", cold), ("warm scan", warm), ("4 filters", filters),
                          ("search, 2 words, sort by date", searched), ("warm scan + dupes (hashes cached)", dupes)):
        print(f"| {what} | {seconds:.3f} | {seconds / cold:.2f}x |")
    total = warm + filters + searched
    print(f"warm scan + filters + search: {total:.3f} s ({'under' if total < 1 else 'OVER'} the 1 s target); "
          f"filters found {[len(f) for f in found]}, search {len(hits)}")


if __name__ == "__main__":
    main()
