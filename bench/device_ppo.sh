#!/usr/bin/env bash
# Seed-batched PPO on the lent GPU machine (issue 15): the learner on CUDA, rollouts on the CPU, the
# seeds' envs stepped by worker processes (the machine has 16 cores but no Ray, gymnasium or MuJoCo
# and cannot download: their cp312 wheels travel in .devwheels/ppo, well under one transfer's 64 MiB).
# Prepare them here once:   bash bench/device_ppo.sh --prepare
# then there, carrying .devwheels/ppo:   bash bench/device_ppo.sh   (about 6 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=.devwheels/ppo
if [ "${1:-}" = "--prepare" ]; then
  mkdir -p $wheels
  pip download -q --only-binary=:all: --python-version 3.12 --no-deps -d $wheels \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 gymnasium==1.4.0 farama-notifications mujoco==4.0.0 \
    mujoco-core==4.0.0 mujoco-studio==4.0.0 glfw pyopengl
  du -sh $wheels
  exit 0
fi
python3 -m pip install -q --no-deps --no-index --target /tmp/lop-ray-ppo $wheels/*.whl
export PYTHONPATH=$PWD:/tmp/lop-ray-ppo PYTHONUNBUFFERED=1
python3 -c "import gymnasium, mujoco, torch; print('mujoco', mujoco.__version__, 'cuda', torch.cuda.is_available())"
nproc
log=${OUT:-/tmp}/ppo_device.log
# S = 32 on Ant (target >= 100,000 env steps/s): 15 worker processes step the 32 seeds' envs, the
# learner updates all 32 on the GPU; beside it the single-seed loop and in-process threads
timeout 420 python3 bench/ppo_runners.py --seeds 32 --device cuda --no-ray --processes 15 \
  --env-threads 16 --iterations 2 --baseline-seeds 1 --no-parallel-baseline 2>&1 | tee "$log"
# the CUDA learner against the CPU one
timeout 90 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_ppo_seed_batched.py -k cuda 2>&1 | tee -a "$log"
