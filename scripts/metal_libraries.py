"""Writes each Metal kernel library exactly as MLX's Metal device receives it.

Runs backend/metal/CMakeLists.txt's generation step (cmake -P, with the
kernel-header list of mlx_precise_ext/CMakeLists.txt), extracts every
library source (mlx_precise::metal::<name>()) from the generated C++ file, fails if one is not ASCII
(MLX reads the source with NSASCIIStringEncoding), and writes it with Metal's
[[...]] attributes removed to OUT_DIR/<name>.cpp for scripts/check_metal.sh.
Usage: python3 scripts/metal_libraries.py OUT_DIR
"""

import pathlib
import re
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parent.parent
ext = root / "mlx_precise_ext"
out = pathlib.Path(sys.argv[1])
top = (ext / "CMakeLists.txt").read_text()
headers = re.search(r"set\(MP_GPU_KERNEL_HEADERS(.*?)\)", top, re.S).group(1).split()
script = out / "gen.cmake"
script.write_text(
    f"set(MP_EXT_DIR {ext})\n"
    f"set(CMAKE_CURRENT_BINARY_DIR {out})\n"
    f"set(MP_GPU_KERNEL_HEADERS {' '.join(headers)})\n"
    "function(target_sources)\nendfunction()\n"
    "function(set_property)\nendfunction()\n"
    f"include({ext}/backend/metal/CMakeLists.txt)\n"
)
subprocess.run(["cmake", "-P", str(script)], check=True)
generated = (out / "mp_metal_library_source.cpp").read_text()
names = re.findall(r'const char\* (\w+)\(\) \{\n  return R"mp_metal_source\(', generated)
if not names:
    sys.exit("no library source found in the generated file")
for name in names:
    src = re.search(name + r'\(\) \{\n  return R"mp_metal_source\((.*?)\)mp_metal_source"', generated, re.S).group(1)
    bad = sorted({c for c in src if ord(c) > 127})
    if bad:
        sys.exit(f"{name}: non-ASCII characters {bad}")
    (out / f"{name}.cpp").write_text(re.sub(r"\[\[[^]]*\]\]", "", src))
    print(name)
