#!/usr/bin/env bash
# The test command: set up, build the wheel, install it, run the suite against
# the installed package (python -P keeps the source tree off sys.path).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/build.sh
python3 -m pip install -q --no-deps --force-reinstall dist/*.whl
python3 -P -m pytest tests "$@"
