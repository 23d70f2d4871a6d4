#!/usr/bin/env bash
# On a CUDA machine: install MLX's CUDA build (staged by
# ../shared/tools/stage-mlx-cuda.sh, see docs/gpu.md), build mlx-precise
# against it, run the GPU tests and the GPU benchmark. Logs go to $OUT (the
# device tool's output folder) or ./gpu_out.
# Usage: scripts/gpu_check.sh [all|tests|bench|bench-strict] [benchmark lengths...]
# MP_GPU_TESTS overrides the test files (default: every GPU test file).
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
shift || true
out=${OUT:-$PWD/gpu_out}
mkdir -p "$out"
stage=${MLX_CUDA_STAGE:-../.mlxcuda_b}

if [ ! -d /tmp/mlx/mlx ]; then
  wheel=$(cat "$stage/WHEEL_NAME")
  cat /root/mlxcuda/part_aa "$stage"/part_a? > "/root/mlxcuda/$wheel" &&
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/mlx \
      "$stage"/mlx-*.whl "/root/mlxcuda/$wheel" || exit 1
fi
# Python packages the device image lacks travel as wheels (docs/gpu.md).
wheels=${MP_WHEELS:-.whl}
if [ -d "$wheels" ] && [ ! -d /tmp/mlx/scipy_openblas32 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/mlx "$wheels"/*.whl || exit 1
fi
export PYTHONPATH=/tmp/mlx:$PWD
nvidia-smi -L | tee "$out/device.txt"

cmake -S . -B build/cuda -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v python3)" > "$out/build.log" 2>&1 &&
  cmake --build build/cuda >> "$out/build.log" 2>&1 &&
  cp build/cuda/_ext*.so mlx_precise/ || { tail -40 "$out/build.log"; exit 1; }
echo "build ok"

status=0
if [ "$what" = all ] || [ "$what" = tests ]; then
  timeout 420 python3 -m pytest ${MP_GPU_TESTS:-tests/test_gpu.py tests/test_gpu_strict.py} -v -rs 2>&1 | tee "$out/tests.log" | tail -45
  status=${PIPESTATUS[0]}
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
  timeout 420 python3 benchmarks/bench_gpu.py --out "$out/results_gpu_h100.md" ${1:+--lengths "$@"} \
    2>&1 | tee "$out/bench.log" | tail -30
fi
if [ "$what" = all ] || [ "$what" = bench-strict ]; then
  timeout 300 python3 benchmarks/bench_gpu_strict.py --out "$out/results_gpu_strict_h100.md" \
    2>&1 | tee "$out/bench_strict.log" | tail -30
fi
exit $status
