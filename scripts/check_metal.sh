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
      -Iscripts/metal_shim -Imlx_precise_ext -Imlx_precise_ext/kernels -I"$(dirname "$src")" \
      -Wno-unknown-pragmas "$tmp/$(basename "$src").cpp"; then
    echo "ok    $src"
  else
    echo "FAIL  $src"
    status=1
  fi
done
# Each library as MLX's Metal device receives it (the concatenation of
# backend/metal/CMakeLists.txt, project #include lines dropped), checked the
# same way; scripts/metal_libraries.py also requires it to be ASCII.
if command -v cmake >/dev/null; then
  if names=$(python3 scripts/metal_libraries.py "$tmp"); then
    for name in $names; do
      if "$clang" -x c++ -std=c++17 -fsyntax-only -D__METAL_VERSION__=310 -Iscripts/metal_shim \
          -Wno-unknown-pragmas "$tmp/$name.cpp"; then
        echo "ok    library $name"
      else
        echo "FAIL  library $name"
        status=1
      fi
      # Metal has no double: after preprocessing as Metal (MP_HAS_DOUBLE 0), the
      # library's own lines must not name it (C++ parses it, Apple's compiler not).
      if "$clang" -x c++ -std=c++17 -E -D__METAL_VERSION__=310 -Iscripts/metal_shim \
          -Wno-unknown-pragmas "$tmp/$name.cpp" 2> /dev/null |
          awk -v f="$tmp/$name.cpp" '/^# [0-9]+ "/ { mine = ($3 == "\"" f "\"") } !/^#/ && mine' |
          grep -wE 'double'; then
        echo "FAIL  library $name uses double (Metal has no float64)"
        status=1
      fi
    done
  else
    echo "FAIL  generating the Metal libraries"
    status=1
  fi
else
  echo "skip  generated libraries (no cmake)"
fi
exit $status
