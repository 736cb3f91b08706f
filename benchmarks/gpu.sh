#!/usr/bin/env bash
# The GPU measurements, in the order they matter, each with its own time limit so that one failure or
# overrun leaves the others standing. Writes each log to LOGS (default ./gpu-logs).
#
#   bash benchmarks/gpu.sh [LOGS]
#
# 1. trainer, SD1.5-shaped UNet at 512 px, bf16, eager (issue 4's GPU row);
# 2. stack manager, SD1.5 UNet + CLIP-L on the GPU (the CPU row is the target; this is the GPU view);
# 3. trainer as 1. with optim.compile=true, separate runs (a cold inductor compile, in its own cache folder).
set -u
LOGS=${1:-gpu-logs}
mkdir -p "$LOGS"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$LOGS/gpu.txt"
"$PY" -c "import torch, diffusers, transformers, peft, accelerate; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, \
'peft', peft.__version__, 'accelerate', accelerate.__version__)" 2>&1 | tee -a "$LOGS/gpu.txt"

TRAIN=(benchmarks/train.py --shape sd15 --resolution 512 --batch 4 --images 8 --steps 30 --block 5
       --precision bf16 --device cuda --threads 4 --paired 1 --repeats 1)
timeout "${TRAIN_LIMIT:-240}" "$PY" "${TRAIN[@]}" 2>&1 | tee "$LOGS/train_eager.txt"
timeout "${STACK_LIMIT:-150}" "$PY" benchmarks/stack.py --device cuda --json "$LOGS/stack.json" 2>&1 \
    | tee "$LOGS/stack.txt"
# separate runs only (--paired 0): each compiled process compiles again, and one cold compile of the SD1.5
# UNet took 130 s on an H200
TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout "${COMPILE_LIMIT:-300}" "$PY" "${TRAIN[@]}" --compile --paired 0 2>&1 \
    | tee "$LOGS/train_compile.txt"
