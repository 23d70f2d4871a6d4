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
# The Metal sources cannot run here; clang parses and type-checks them.
if ! command -v clang++ > /dev/null && command -v apt-get > /dev/null; then
  (apt-get update -qq && apt-get install -y -qq clang) > /dev/null
fi
bash scripts/check_metal.sh
python3 -P -m pytest tests "$@"
