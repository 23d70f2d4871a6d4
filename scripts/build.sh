#!/usr/bin/env bash
# Builds the mlx-precise wheel into dist/ against the installed MLX (pip's
# mlx==<pin>; no MLX source build). Needs scikit-build-core, nanobind and the
# pinned mlx in the current Python (scripts/setup_env.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf dist
python3 -m pip wheel . --no-deps --no-build-isolation -w dist -q
ls dist/*.whl
