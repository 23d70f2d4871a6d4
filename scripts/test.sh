#!/usr/bin/env bash
# The test command: set up, build the wheel (isolated, from an sdist), install
# it, type-check the Metal sources, run the suite against the installed package
# (python -P keeps the source tree off sys.path).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# The wheel as a user's pip builds it (sdist -> wheel with build isolation, in a
# clean venv, installed there with its dependencies and smoke-tested); the suite
# then runs against that same wheel.
bash scripts/check_install.sh
python3 -m pip install -q --no-deps --force-reinstall dist/*.whl
# The Metal sources cannot run here; clang parses and type-checks the kernels
# (check_metal.sh) and compiles the host code for arm64 macOS against the real
# headers of MLX's macOS wheel (check_metal_host.sh, aarch64 C/C++ headers).
if command -v apt-get > /dev/null && { ! command -v clang++ > /dev/null ||
    ! ls -d /usr/aarch64-linux-gnu/include/c++/* > /dev/null 2>&1; }; then
  (apt-get update -qq && apt-get install -y -qq clang libc6-dev-arm64-cross \
    "$(apt-cache pkgnames libstdc++ | grep -E '^libstdc\+\+-[0-9]+-dev-arm64-cross$' | sort -V | tail -1)") > /dev/null
fi
bash scripts/check_metal.sh
bash scripts/check_metal_host.sh
python3 -P -m pytest tests "$@"
