#!/usr/bin/env bash
# The test command: set up, build the wheel, install it, type-check the Metal
# kernels, run the suite against the installed package (python -P keeps the
# source tree off sys.path).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/build.sh
python3 -m pip install -q --no-deps --force-reinstall dist/*.whl
# The Metal sources cannot run here; clang parses and type-checks them.
if ! command -v clang++ > /dev/null && command -v apt-get > /dev/null; then
  (apt-get update -qq && apt-get install -y -qq clang) > /dev/null
fi
bash scripts/check_metal.sh
python3 -P -m pytest tests "$@"
