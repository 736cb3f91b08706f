#!/usr/bin/env bash
# The README's first command: set up .venv, train a style LoRA on sample_data/ with the embedded model,
# export it, and draw a before/after grid (same prompts and seeds at strength 0, 0.5 and 1).
# Outputs go to outputs/quickstart/ (or $SDLORA_QUICKSTART_OUT); extra arguments go to `sdlora train`
# (for example --steps 100).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${SDLORA_QUICKSTART_OUT:-outputs/quickstart}
# One thread: the model is tiny, and on a busy 2-core machine two OpenMP threads spin-wait for each other
# (measured here: 30 s per step with 2 threads vs 0.4 s with 1). Set OMP_NUM_THREADS to override.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f sample_data/000.png ] || .venv/bin/python scripts/make_sample_data.py
start=$(date +%s)
# the `embedded` preset (sdlora/configs/presets/embedded.yaml) is what `sdlora train` uses for this base anyway
.venv/bin/sdlora train --config embedded --data sample_data --base embedded --output "$OUT" \
    --set output.name=zqx_style "$@"
echo "quickstart: training took $(( $(date +%s) - start )) s; LoRA: $OUT/zqx_style.safetensors"
.venv/bin/python scripts/before_after.py --lora "$OUT/zqx_style.safetensors" --out "$OUT/before_after.png"
