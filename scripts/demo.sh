#!/usr/bin/env bash
# The main job: set up, build and install, then the accuracy/speed demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/build.sh
python3 -m pip install -q --no-deps --force-reinstall dist/*.whl
python3 -P -m mlx_precise.demo "$@"
