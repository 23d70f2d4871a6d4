#!/usr/bin/env bash
# Installs what building, testing and benchmarking need into the current Python.
# torch is pinned: its CPU build is what this project tests against (an unpinned
# torch would pull a multi-GB CUDA build).
set -euo pipefail
python3 -m pip install -q --disable-pip-version-check \
  "mlx[cpu]==0.32.4" "nanobind>=2.9,<4" "scikit-build-core>=0.11" "scipy-openblas32>=0.3.27" \
  numpy mpmath pytest hypothesis "torch==2.13.0" safetensors tokenizers tqdm matplotlib \
  huggingface_hub
