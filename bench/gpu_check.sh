#!/usr/bin/env bash
# The GPU checks of issues 4 and 6 in one device call (see bench/lm_gpu.py, bench/diffusion_gpu.py).
# On a lent machine whose image has torch/transformers/accelerate but not diffusers or Hydra, the
# missing wheels travel in .whl/ (ignored). Output goes to $OUT/gpu_check.log when $OUT is set.
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
log=${OUT:-/tmp}/gpu_check.log
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
  [ -n "${ONLY_DIFFUSION:-}" ] || {
  echo "== lm_gpu: fused loss"
  timeout 170 python3 bench/lm_gpu.py --steps 300 --warmup 40 --loss fused
  echo "== lm_gpu: plain loss"
  timeout 120 python3 bench/lm_gpu.py --steps 150 --warmup 40 --loss plain
  }
  echo "== diffusion_gpu"
  timeout 200 python3 bench/diffusion_gpu.py --batch-sizes 16 32 --steps 25 --warmup 8
} 2>&1 | tee "$log"
