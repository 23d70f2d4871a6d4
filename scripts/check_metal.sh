#!/usr/bin/env bash
# Parses and type-checks every Metal source of mlx-precise with clang, as C++
# against a minimal shim of the Metal standard library (scripts/metal_shim):
# syntax, names, overloads and template instantiations fail here as they would
# in Apple's compiler. Not checked: address spaces (the shim erases the
# qualifiers) and Metal's [[...]] attributes (removed before parsing, line
# numbers kept, since C++ does not allow them where Metal does).
# Needs clang (Debian: apt-get install -y clang). Fails on any error.
set -euo pipefail
cd "$(dirname "$0")/.."
clang=${CLANG:-clang++}
status=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for src in $(find mlx_precise_ext -name '*.metal' | sort); do
  sed -E 's/\[\[[^]]*\]\]//g' "$src" > "$tmp/$(basename "$src").cpp"
  if "$clang" -x c++ -std=c++17 -fsyntax-only -D__METAL_VERSION__=310 \
      -Iscripts/metal_shim -Imlx_precise_ext/kernels -I"$(dirname "$src")" \
      -Wno-unknown-pragmas "$tmp/$(basename "$src").cpp"; then
    echo "ok    $src"
  else
    echo "FAIL  $src"
    status=1
  fi
done
exit $status
