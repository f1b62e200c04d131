#!/usr/bin/env bash
# Calibrate `actscale plan` for a CUDA GPU: both embedded models' training steps (batch 32, K = 1, 4, 8, 16
# trials in one forward, bf16 autocast), evaluation forward and unit preparation, timed by actscale's own
# trainer on random weights of each model's shape (bench/gpu_calibrate.py), within about 4 minutes.
#   bench/gpu.sh OUT_DIR [CARRY_DIR]
# Figures go to OUT_DIR: gpu.txt, calibration-<model>.json (for `actscale plan SWEEP --calibration FILE`),
# calibrate.log. It runs on a GPU machine that has torch and transformers but no network and no room for the
# weights: CARRY_DIR (default .devcarry) holds each model's config.json and tokenizer files (copied from
# ~/.cache/actscale/models/<name>/) and, in whl/, wheels of what that machine lacks (pydantic and its
# needs), installed into /tmp/site. On a machine with the project's own .venv, the wheels are not needed.
set -euo pipefail
OUT=${1:?usage: bench/gpu.sh OUT_DIR [CARRY_DIR]}
CARRY=${2:-.devcarry}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if compgen -G "$CARRY/whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$CARRY"/whl/*.whl
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
for model in smollm2-135m gemma3-270m; do
  PYTHONUNBUFFERED=1 timeout 150 "$PY" bench/gpu_calibrate.py "$CARRY/$model" "$model" \
    --out "$OUT/calibration-$model.json" 2>&1 | tee -a "$OUT/calibrate.log" || echo "calibration of $model ended early"
done
