#!/usr/bin/env bash
# Incremental in-tree build for development: compiles the extension into
# build/dev and copies it into mlx_precise/ so `PYTHONPATH=.` imports it.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v python3)" > /dev/null
cmake --build build/dev
# Replace, not overwrite: a running process keeps its mapped copy intact.
for so in build/dev/_ext*.so; do cp "$so" "mlx_precise/$(basename "$so").tmp" && mv -f "mlx_precise/$(basename "$so").tmp" "mlx_precise/$(basename "$so")"; done
