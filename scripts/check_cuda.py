#!/usr/bin/env python3
"""Compile every CUDA JIT source of the extension with NVRTC, without a GPU.

The extension compiles its kernels at run time (backend/cuda/jit.cpp), so a
kernel that does not compile is only found on a CUDA machine. This check
compiles the same sources with the same options and the same kernel name
lists (read from the C++ sources, so they cannot drift) for one architecture,
and with -v prints each kernel's registers, spills and shared memory.

NVRTC comes from NVIDIA's wheel: pip install --target DIR "nvidia-cuda-nvrtc==13.0.*",
then pass --nvrtc DIR/nvidia/cu13/lib/libnvrtc.so.13 (or set MP_NVRTC).
Usage: scripts/check_cuda.py [-v] [--arch 90] [--nvrtc PATH]
"""

import argparse
import ctypes
import glob
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "mlx_precise_ext")
CUDA = os.path.join(ROOT, "backend", "cuda")
DEFAULT_NVRTC = "/tmp/nvrtc130/nvidia/cu13/lib/libnvrtc.so.13"


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def jit_options():
    """The literal options of compile_options in jit.cpp but the architecture (added here)."""
    body = re.search(r"compile_options\(int major, int minor\) \{(.*?)\n\}", read(os.path.join(CUDA, "jit.cpp")), re.S)
    return [o for o in re.findall(r'"([^"]+)"', body.group(1)) if not o.startswith("--gpu-architecture")]


def listed_names(source_file, function):
    """The string literals returned by `function` (strict_kernel_names, ...)."""
    text = read(os.path.join(CUDA, source_file))
    body = re.search(function + r"\(\) \{\s*return \{(.*?)\};", text, re.S)
    if body is None:
        sys.exit(f"check_cuda: no {function}() in {source_file}")
    return re.findall(r'"([^"]+)"', body.group(1))


def conv_names(working_type):
    """conv_kernel_names(p) of kernel_support.cpp for one working type."""
    table = re.findall(
        r'\{"(\w+)",\s*(true|false),\s*(true|false)(?:,\s*(true|false))?'
        r'(?:,\s*"(\w+)",\s*"(\w+)")?\}',
        read(os.path.join(CUDA, "kernel_support.cpp")),
    )
    if not table:
        sys.exit("check_cuda: no kernel table in kernel_support.cpp")
    names = []
    for name, typed, row_storage, certified_only, form_of, form in table:
        if certified_only == "true" and working_type == "float":
            continue
        base = "mlx_precise::gpu::" + (form_of or name)
        if typed == "false":
            names.append(base)
            continue
        suffix = f", mlx_precise::gpu::{form}" if form else ""
        for shared in (("true", "false") if row_storage == "true" else (None,)):
            names.append(
                f"{base}<{working_type}" + (f", {shared}" if shared else "") + suffix + ">"
            )
    return names


def headers():
    """The headers backend/cuda/CMakeLists.txt embeds: kernels/*.h, the CUDA-only
    ones (device helpers, the pair operand), and the rfft_conv kernels (the pair
    kernels include their transforms)."""
    paths = sorted(glob.glob(os.path.join(ROOT, "kernels", "*.h"))) + [
        os.path.join(CUDA, name)
        for name in ("device_utils.cuh", "pair_operand.h", "rfft_conv_kernels.cuh")
    ]
    return [(os.path.basename(p), read(p)) for p in paths]


class Nvrtc:
    def __init__(self, path):
        builtins = glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so*"))
        for b in builtins:
            ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
        self.lib = ctypes.CDLL(path)

    def check(self, result, what):
        if result != 0:
            self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            raise RuntimeError(f"{what}: {self.lib.nvrtcGetErrorString(result).decode()}")

    def compile(self, name, source, names, options):
        prog = ctypes.c_void_p()
        hdrs = headers()
        n = len(hdrs)
        contents = (ctypes.c_char_p * n)(*[h[1].encode() for h in hdrs])
        include_names = (ctypes.c_char_p * n)(*[h[0].encode() for h in hdrs])
        self.check(
            self.lib.nvrtcCreateProgram(
                ctypes.byref(prog), source.encode(), name.encode(), n, contents, include_names
            ),
            "nvrtcCreateProgram",
        )
        for expr in names:
            self.check(self.lib.nvrtcAddNameExpression(prog, expr.encode()), "nvrtcAddNameExpression")
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        result = self.lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        self.lib.nvrtcGetProgramLog(prog, log)
        lowered = {}
        if result == 0:
            for expr in names:
                out = ctypes.c_char_p()
                self.check(self.lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(out)), expr)
                lowered[out.value.decode()] = expr
        self.lib.nvrtcDestroyProgram(ctypes.byref(prog))
        return result == 0, log.value.decode(errors="replace"), lowered


def print_resources(log, lowered):
    """ptxas -v lines, with mangled names replaced by the name expressions."""
    current = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = lowered.get(m.group(1), m.group(1))
            continue
        if current and ("registers" in line or "spill" in line):
            print(f"  {current}: {line.split('info    :')[-1].strip()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="print registers, spills, shared memory")
    parser.add_argument("--arch", default="90", help="compute capability, e.g. 90 (H100) or 80")
    parser.add_argument("--nvrtc", default=os.environ.get("MP_NVRTC", DEFAULT_NVRTC))
    parser.add_argument(
        "--only", default="", help="compile only the jobs whose title contains this text, e.g. 'double' or 'strict'"
    )
    args = parser.parse_args()
    if not os.path.exists(args.nvrtc):
        sys.exit(f"check_cuda: no NVRTC at {args.nvrtc}; see this script's docstring")
    nvrtc = Nvrtc(args.nvrtc)
    options = [f"--gpu-architecture=sm_{args.arch}"] + jit_options()
    if args.verbose:
        options.append("--ptxas-options=-v")
    jobs = [
        ("rfft_conv_kernels.cuh (float)", "rfft_conv_kernels.cuh", conv_names("float")),
        ("rfft_conv_kernels.cuh (double)", "rfft_conv_kernels.cuh", conv_names("double")),
        ("strict_kernels.cuh", "strict_kernels.cuh", listed_names("strict_ops.cpp", "strict_kernel_names")),
        ("pair_kernels.cuh", "pair_kernels.cuh", listed_names("pair_ops.cpp", "pair_kernel_names")),
    ]
    jobs = [job for job in jobs if args.only in job[0]]
    if not jobs:
        sys.exit(f"check_cuda: no job title contains {args.only!r}")
    failed = False
    for title, source, names in jobs:
        ok, log, lowered = nvrtc.compile(source, read(os.path.join(CUDA, source)), names, options)
        print(f"{'ok  ' if ok else 'FAIL'} {title}: {len(names)} kernels")
        if not ok:
            failed = True
            print(log)
        elif args.verbose:
            print_resources(log, lowered)
        elif "warning" in log:
            print(log)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
