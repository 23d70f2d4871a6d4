#!/usr/bin/env bash
# Compiles (clang -fsyntax-only, -target arm64-apple-macos14, C++20 as MLX's
# CMake config requires) every C++ source a macOS build of mlx-precise compiles
# (the Metal host code backend/metal/*.cpp included; the Python bindings and the
# CUDA backend not) against the real headers of MLX's macOS wheel: MLX's own,
# its Metal backend's (device.h, utils.h ...) and metal-cpp. The wheel
# (mlx-metal, the pinned version) is downloaded once into a git-ignored cache.
# What stands in for the macOS SDK: scripts/macos_shim (a few Apple headers,
# our own minimal declarations, and Darwin's int64_t = long long), the aarch64
# glibc and libstdc++ headers (Debian: apt-get install libc6-dev-arm64-cross
# libstdc++-12-dev-arm64-cross). Nothing here runs or links Metal code.
set -euo pipefail
cd "$(dirname "$0")/.."
clang=${CLANG:-clang++}
version=$(sed -nE 's/.*"mlx(\[[a-z0-9]+\])?==([0-9.]+).*/\2/p' pyproject.toml | head -1)
cache=${MLX_PRECISE_MACOS_WHEEL_CACHE:-build/macos-wheel}
wheel_dir="$cache/mlx-metal-$version"
if [ ! -f "$wheel_dir/mlx/include/mlx/backend/metal/device.h" ]; then
  mkdir -p "$cache"
  if ! python3 -m pip download -q --disable-pip-version-check --retries 2 --timeout 60 \
      --no-deps --only-binary=:all: \
      --platform macosx_14_0_arm64 --python-version 3.12 -d "$cache" "mlx-metal==$version"; then
    echo "FAIL  downloading mlx-metal==$version for macosx_14_0_arm64 (needs PyPI; cache: $cache)" >&2
    exit 1
  fi
  python3 - "$cache" "$wheel_dir" "$version" <<'PY'
import glob, sys, zipfile
cache, out, version = sys.argv[1:]
(wheel,) = glob.glob(f"{cache}/mlx_metal-{version}-*macosx_14_0_arm64.whl")
with zipfile.ZipFile(wheel) as z:
    z.extractall(out, [n for n in z.namelist() if n.startswith(("mlx/include/", "mlx/share/"))])
PY
fi
mlx_include="$wheel_dir/mlx/include"
cross=/usr/aarch64-linux-gnu/include
cxx_include=$(ls -d "$cross"/c++/* 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$cxx_include" ]; then
  echo "FAIL  no aarch64 C/C++ headers in $cross: apt-get install libc6-dev-arm64-cross libstdc++-12-dev-arm64-cross" >&2
  exit 1
fi
# -U__nonnull: clang predefines it on Apple targets (a nullability keyword),
# which glibc's headers use as an attribute macro. -D_GNU_SOURCE: as clang
# defines it for Linux targets, which libstdc++ expects.
flags=(-target arm64-apple-macos14 -std=c++20 -fsyntax-only
  -U__nonnull -D_GNU_SOURCE -nostdinc++ -nostdlibinc
  -include darwin_integer_types.h
  -isystem "$cxx_include" -isystem "$cxx_include/aarch64-linux-gnu" -isystem "$cross"
  -isystem scripts/macos_shim
  # MLXConfig.cmake of the wheel: MLX_CXX_FLAGS and MLX_INCLUDE_DIRS.
  -D_METAL_ -DACCELERATE_NEW_LAPACK
  -isystem "$mlx_include/metal_cpp" -isystem "$mlx_include"
  -isystem "$mlx_include/mlx/backend/metal/kernels/metal_3_1"
  -isystem "$(python3 -c 'import scipy_openblas32 as s; print(s.get_include_dir())')"
  -Imlx_precise_ext -DMP_CPU_ISA=base -DMLX_PRECISE_MLX_VERSION=\""$version"\")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sources=$(find mlx_precise_ext -name '*.cpp' -not -path '*/cuda/*' -not -path '*/python/*' \
  -not -name no_gpu.cpp | sort)
for src in $sources; do
  log="$tmp/$(echo "$src" | tr / _).log"
  ( "$clang" "${flags[@]}" "$src" > "$log" 2>&1 && echo "ok    $src" ) ||
    { echo "FAIL  $src"; cat "$log"; touch "$tmp/failed"; } &
  # Two at a time: the check must not take the machine.
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n || true; done
done
wait
echo "checked against the headers of mlx-metal==$version ($mlx_include)"
[ ! -e "$tmp/failed" ]
