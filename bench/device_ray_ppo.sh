#!/usr/bin/env bash
# The 14-runner point of bench/ppo_runners.py on the lent 16-core GPU machine, which has Python 3.12
# and torch but no Ray, gymnasium or MuJoCo and cannot download: their cp312 wheels travel in
# .devwheels/{a,b} (Ray's wheel split in two, since one transfer carries at most 64 MiB; each half
# in its own call while the machine stays warm). Prepare them here with
#   bash bench/device_ray_ppo.sh --prepare
# then run it there in a second call that carries .devwheels/b:  bash bench/device_ray_ppo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=.devwheels
if [ "${1:-}" = "--prepare" ]; then
  tmp=$(mktemp -d)
  pip download -q --only-binary=:all: --python-version 3.12 --no-deps -d "$tmp" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 ray==2.60.0 jsonschema referencing rpds-py \
    jsonschema-specifications gymnasium==1.4.0 farama-notifications mujoco==4.0.0 mujoco-core==4.0.0 \
    mujoco-studio==4.0.0 glfw pyopengl
  mkdir -p $wheels/a $wheels/b
  ray_wheel=$(ls "$tmp"/ray-*.whl)
  split -b 58M "$ray_wheel" $wheels/a/ray.part-
  mv $wheels/a/ray.part-ab $wheels/b/
  (cd "$tmp" && sha256sum "$(basename "$ray_wheel")") >$wheels/b/ray.sha256
  rm "$ray_wheel" && mv "$tmp"/*.whl $wheels/b/
  exit 0
fi
ray_wheel=/tmp/$(awk '{print $2}' $wheels/b/ray.sha256)
cat $wheels/a/ray.part-* $wheels/b/ray.part-* >"$ray_wheel"
(cd /tmp && sha256sum -c "$OLDPWD/$wheels/b/ray.sha256")
python3 -m pip install -q --no-deps --no-index --target /tmp/lop-ray-extra "$ray_wheel" $wheels/b/*.whl
export PYTHONPATH=$PWD:/tmp/lop-ray-extra PATH=/tmp/lop-ray-extra/bin:$PATH PYTHONUNBUFFERED=1
python3 -c "import ray, gymnasium, mujoco; print('ray', ray.__version__, 'mujoco', mujoco.__version__)"
nproc
timeout 420 python3 bench/ppo_runners.py --compare runners --runners "${RUNNERS:-1,2,4,8,14}" --iterations 2 2>&1 | tee "${OUT:-/tmp}/ppo_runners.log"
# the lever the 2-core target needs: the learner's update on more threads while the runners wait
timeout 120 python3 bench/ppo_runners.py --compare runners --runners 2 --iterations 2 --learner-threads 2 2>&1 | tee -a "${OUT:-/tmp}/ppo_runners.log"
