#!/usr/bin/env bash
# The GPU checks behind docs/performance.md, in one run on a bare CUDA machine that has torch, numpy
# and scikit-learn but no Ray or MLflow (every script here is pure PyTorch). Each check has its own
# time limit so that one slow check cannot take the others' time; everything goes to one log.
#   bash bench/device_checks.sh [LOG_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
log_dir=${1:-${OUT:-/tmp/lop-ray-device-checks}}
mkdir -p "$log_dir"
log=$log_dir/device_checks.log
check() {
  local limit=$1
  shift
  echo "== $(date -u +%T) $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
# 8 minutes in all (issue 14): the seed-axis targets first, then agreement and profiles
# permuted MNIST at S = 30 against one seed per trial (target >= 10x, and the memory floor)
check 75 python3 bench/seed_batching.py --problem mnist --device cuda --seeds 1 30 --mnist-examples 300 --alone 2
# continual ImageNet at S = 16 (target >= 5x) and incremental CIFAR-100 at S = 4 (target >= 2x)
check 90 python3 bench/seed_batching_imagenet.py --device cuda --seeds 1 16 --epochs 3 --alone 2 --learners bp cbp
check 120 python3 bench/seed_batching_cifar.py --device cuda --seeds 1 4 --repeats 1
check 60 python3 bench/cuda_agreement.py
if python3 -c "import pytest" 2>/dev/null; then  # the CUDA tests (skipped on a machine without one)
  check 45 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cbp_device.py
fi
# the seed-batched CBP step at S = 30 against BP: time per step, host syncs per step, top kernels
check 45 python3 bench/cbp_profile.py --seeds 30
check 45 python3 bench/imagenet_task_time.py --device cuda --epochs 10 --tasks 2 --algorithm cbp --seeds 16
# seed-batched PPO (issue 15) needs gymnasium and MuJoCo wheels carried: bash bench/device_ppo.sh
echo "== $(date -u +%T) done" | tee -a "$log"
