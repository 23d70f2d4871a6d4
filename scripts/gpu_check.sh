#!/usr/bin/env bash
# On a machine with a GPU that MLX supports (CUDA or Metal): builds mlx-precise
# in place against the MLX of the current Python (it must be MLX's CUDA or Metal
# build), runs the GPU tests and the GPU benchmarks. Logs and result tables go
# to $OUT, or ./gpu_out.
# Usage: scripts/gpu_check.sh [--wheels DIR]... [all|tests|bench|bench-strict] [benchmark lengths...]
#   --wheels DIR  install every wheel in DIR (no index, no dependencies) into
#                 build/gpu-check/site and put it first on PYTHONPATH: for a
#                 machine without a package index (e.g. MLX's CUDA wheel
#                 downloaded elsewhere). May be repeated.
# MP_GPU_TESTS overrides the test files (default: every GPU test file).
set -uo pipefail
cd "$(dirname "$0")/.."
wheel_dirs=()
while [ "${1:-}" = --wheels ]; do
  wheel_dirs+=("$2")
  shift 2
done
what=${1:-all}
shift || true
out=${OUT:-$PWD/gpu_out}
mkdir -p "$out"

if [ ${#wheel_dirs[@]} -gt 0 ]; then
  site=$PWD/build/gpu-check/site
  rm -rf "$site"
  wheels=()
  for dir in "${wheel_dirs[@]}"; do wheels+=("$dir"/*.whl); done
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "${wheels[@]}" || exit 1
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:$PWD/models:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}
python3 -c 'import mlx.core as mx; print("MLX", mx.__version__, "CUDA:", mx.cuda.is_available(), "Metal:", mx.metal.is_available())' |
  tee "$out/device.txt"
command -v nvidia-smi > /dev/null && nvidia-smi -L | tee -a "$out/device.txt"

cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v python3)" > "$out/build.log" 2>&1 &&
  cmake --build build/gpu >> "$out/build.log" 2>&1 &&
  cp build/gpu/_ext*.so mlx_precise/ || { tail -40 "$out/build.log"; exit 1; }
echo "build ok"

# Every kernel module compiled once, in parallel, into the disk cache (minutes, once per
# machine and kernel version), so that the tests' and benchmarks' processes load cubins.
if python3 -c 'import mlx.core as mx; raise SystemExit(not mx.cuda.is_available())'; then
  python3 scripts/warm_kernels.py | tee "$out/warm_kernels.log"
fi

status=0
if [ "$what" = all ] || [ "$what" = tests ]; then
  timeout 420 python3 -m pytest ${MP_GPU_TESTS:-tests/test_gpu.py tests/test_gpu_strict.py tests/test_gpu_pair.py} -v -rs 2>&1 | tee "$out/tests.log" | tail -45
  status=${PIPESTATUS[0]}
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
  timeout 420 python3 benchmarks/bench_gpu.py --out "$out/results_gpu.md" ${1:+--lengths "$@"} \
    2>&1 | tee "$out/bench.log" | tail -30
fi
if [ "$what" = all ] || [ "$what" = bench-strict ]; then
  timeout 300 python3 benchmarks/bench_gpu_strict.py --out "$out/results_gpu_strict.md" \
    2>&1 | tee "$out/bench_strict.log" | tail -30
fi
exit $status
