#!/usr/bin/env bash
# Builds mlx-precise the way a user's pip does, in a clean virtual environment:
# an sdist, then the wheel from that sdist with pip's default build isolation
# (build requirements, MLX's backend wheel included, from the package index),
# then installs the wheel there with its dependencies and runs a smoke test
# from outside the source tree. Leaves the sdist and the wheel in dist/.
# Needs network access to PyPI; fails (with pip's message) without it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "check_install: $1 failed (a clean venv needs PyPI to install build requirements)" >&2; exit 1; }
python3 -m venv "$tmp/venv"
py="$tmp/venv/bin/python"
"$py" -m pip install -q build || fail "installing the 'build' frontend"
rm -rf dist
"$py" -m build -q --sdist -o dist . > "$tmp/sdist.log" 2>&1 || { tail -20 "$tmp/sdist.log"; fail "building the sdist"; }
"$py" -m pip wheel -q --no-deps -w dist dist/*.tar.gz || fail "building the wheel from the sdist"
"$py" -m pip install -q dist/*.whl || fail "installing the wheel"
cd "$tmp"
"$py" -P - <<'PY'
import mlx.core as mx
import mlx_precise as mp

# Small integers: the extended modes' convolution is exact, so compare exactly.
u = mx.array([[1, 2, 3, 4, 5, 6, 7, 8]], dtype=mx.float32)
k = mx.array([1, -1, 2], dtype=mx.float32)
expect = [1, 1, 3, 5, 7, 9, 11, 13]
for precision in ("extended", "dd"):
    got = mp.rfft_conv(u, k, precision=precision)[0].tolist()
    assert got == expect, (precision, got)
c = mp.addmm(mx.zeros((2, 2)), mx.ones((2, 3)), mx.ones((3, 2)), precision="extended")
assert c.tolist() == [[3, 3], [3, 3]], c
print("check_install: ok", mp.__file__, "MLX", mx.__version__)
PY
ls "$root"/dist
