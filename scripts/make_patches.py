#!/usr/bin/env python3
"""Writes patches/: the series that puts rfft_conv and the precision= ops into
MLX itself, generated from this project's sources plus patches/glue/.

    python scripts/make_patches.py [OUTPUT_DIR]     # default: patches/

One source of truth: every C++ file the series adds is a file of
mlx_precise_ext/ mapped into MLX's tree by to_mlx() (namespace mlx_precise ->
mlx::core, `mx::` dropped, includes rewritten to MLX's paths); files MLX
already has get zero-context insertions (git diff -U0 form, applied with
`git apply --unidiff-zero`), anchored at line numbers of the base commit in
patches/BASE, holding only this project's lines. What exists only in the
series (build glue, the serial CPU adapter, the Python binding, tests, docs,
the commit messages) is in patches/glue/. No MLX checkout is read: the test
suite regenerates the series and fails if patches/ is stale.
"""

import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXT = ROOT / "mlx_precise_ext"
GLUE = ROOT / "patches" / "glue"

# Where each directory or file of the extension lives in MLX's tree.
PATH_MAP = {
    "precision.h": "mlx/precise/precision.h",
    "precision.cpp": "mlx/precise/precision.cpp",
    "primitives.h": "mlx/precise/primitives.h",
    "primitives.cpp": "mlx/precise/primitives.cpp",
    "strict_primitives.h": "mlx/precise/strict_primitives.h",
    "strict_primitives.cpp": "mlx/precise/strict_primitives.cpp",
    "vmap_inputs.h": "mlx/precise/vmap_inputs.h",
    "messages.h": "mlx/precise/messages.h",
    "ops.h": "mlx/fft.h",
    "strict_ops.h": "mlx/precise/strict_ops.h",
    "strict_ops.cpp": "mlx/precise/strict_ops.cpp",
    "kernels/": "mlx/backend/common/precise/",
    "backend/common/": "mlx/backend/common/precise/",
    "backend/cpu/": "mlx/backend/cpu/",
    "backend/cuda/": "mlx/backend/cuda/precise/",
    # MLX's make_jit_source takes a kernels/<name>.h and expands its includes.
    "backend/metal/rfft_conv_kernels.metal": "mlx/backend/metal/kernels/precise/rfft_conv_kernels.h",
    "backend/metal/strict_kernels.metal": "mlx/backend/metal/kernels/precise/strict_kernels.h",
    "backend/metal/": "mlx/backend/metal/precise/",
    "backend/gpu/": "mlx/backend/gpu/precise/",
}


def mlx_path(ext_path: str) -> str:
    if ext_path in PATH_MAP:
        return PATH_MAP[ext_path]
    for prefix, target in PATH_MAP.items():
        if prefix.endswith("/") and ext_path.startswith(prefix):
            return target + ext_path[len(prefix) :]
    raise KeyError(f"no place in MLX's tree for {ext_path}")


def _include(match: re.Match) -> str:
    path = match.group(1)
    try:
        return f'#include "{mlx_path(path)}"'
    except KeyError:
        return match.group(0)  # a sibling include ("dd.h") or a system header


def to_mlx(text: str) -> str:
    """The extension's C++ as it reads inside MLX (namespace mlx::core)."""
    lines = []
    for line in text.splitlines():
        if line in ("namespace mx = mlx::core;", "using mx::array;", "using mx::Shape;"):
            continue
        if re.match(r"// MLX's DEFINE_\w+ .*name these", line) or line == "// unqualified.":
            continue
        lines.append(line)
    text = "\n".join(lines) + "\n"
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = text.replace("namespace mlx_precise", "namespace mlx::core")
    text = text.replace("mlx_precise::", "mlx::core::")
    text = re.sub(r"\bmx::", "", text)
    text = re.sub(r"#include <(mlx/[^>]+)>", r'#include "\1"', text)
    text = re.sub(r'#include "([^"]+)"', _include, text)
    return text


def drop_definitions(text: str, starts: list) -> str:
    """Removes the lines in `starts` (exact) and each top-level definition whose
    first line begins with one of them, through its closing brace at column 0,
    together with the comment just above it: the extension's own extras (the
    Pair ops) that the series does not carry."""
    lines = text.splitlines()
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line in starts and not line.endswith("("):
            if line.endswith(";"):  # a declaration: with its comment
                while out and out[-1].startswith("//"):
                    out.pop()
                if i + 1 < len(lines) and lines[i + 1] == "" and out and out[-1] == "":
                    i += 1
            i += 1
            continue
        if any(line.startswith(s) for s in starts if s.endswith("(")):
            while out and out[-1].startswith("//"):
                out.pop()
            while lines[i] != "}":
                i += 1
            i += 1
            if i < len(lines) and lines[i] == "" and out and out[-1] == "":
                i += 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out) + "\n"


# The extension's own extras (the pair ops) in files the series maps whole:
# dropped from the mapped text, and their includes not followed.
PAIR_EXTRAS = {
    "backend/cpu/rfft_conv.cpp": (
        '#include "pair_primitives.h"',
        '#include "pair_vjp_primitives.h"',
        "RealRow pair_row(",
        "void pair_convolve(",
        "void PairRFFTConv::eval_cpu(",
        "void PairRFFTCorrelate::eval_cpu(",
    ),
    "backend/cuda/rfft_conv.cpp": (
        '#include "pair_primitives.h"',
        '#include "backend/gpu/pair_conv_layout.h"',
        '#include "pair_vjp_primitives.h"',
        "void launch_pair_conv(",
        "void eval_pair_conv(",
        "void PairRFFTConv::eval_gpu(",
        "void PairRFFTCorrelate::eval_gpu(",
    ),
    "backend/metal/rfft_conv.cpp": (
        '#include "pair_primitives.h"',
        '#include "backend/gpu/pair_conv_layout.h"',
        '#include "pair_vjp_primitives.h"',
        "void launch_pair_conv(",
        "void eval_pair_conv(",
        "void PairRFFTConv::eval_gpu(",
        "void PairRFFTCorrelate::eval_gpu(",
    ),
}


def ext_source(path: str) -> str:
    """An extension file's text without its PAIR_EXTRAS."""
    text = (EXT / path).read_text()
    return drop_definitions(text, list(PAIR_EXTRAS[path])) if path in PAIR_EXTRAS else text


def ext_file(path: str, drop: tuple = ()) -> str:
    return to_mlx(drop_definitions(ext_source(path), list(drop)))


def ext_body(path: str, namespace: str) -> str:
    """The lines of an extension file inside `namespace <namespace> {`, mapped:
    what is inserted into a namespace MLX's file already opens."""
    text = (EXT / path).read_text()
    start = text.index(f"namespace {namespace} {{\n") + len(f"namespace {namespace} {{\n")
    end = text.index(f"}} // namespace {namespace}\n")
    return to_mlx(text[start:end]).strip("\n") + "\n"


def ext_includes(path: str) -> list:
    """The extension files `path` includes with quotes (siblings resolved)."""
    found = []
    for inc in re.findall(r'#include "([^"]+)"', ext_source(path)):
        sibling = str(Path(path).parent / inc) if "/" in path else inc
        # CUDA kernel sources include the kernels/ headers by file name.
        by_name = f"kernels/{inc}" if path.endswith(".cuh") else inc
        for candidate in (inc, sibling, by_name):
            if (EXT / candidate).is_file():
                found.append(candidate)
                break
    return found


def with_includes(paths: list, carried: set) -> list:
    """paths plus every extension file they include, directly or not, that no
    earlier patch carries: a file a kernel starts to include joins the series."""
    out, todo = [], list(paths)
    while todo:
        path = todo.pop(0)
        if path in out or path in carried:
            continue
        out.append(path)
        todo += [p for p in ext_includes(path) if p not in out]
    return out


def glue(path: str) -> str:
    return (GLUE / path).read_text()


def insertions(path: str, before: str, after: str) -> list:
    """The inserts (path, line of `before`, text) that turn `before` into
    `after`, which only adds lines: what a later patch adds to a file an
    earlier one created without them."""
    old, new = before.splitlines(), after.splitlines()
    out = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, _, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        if tag != "insert":
            raise ValueError(f"{path}: the later version must only add lines")
        out.append((path, i1, "\n".join(new[j1:j2]) + "\n"))
    return out


@dataclass
class Patch:
    name: str  # file name stem, e.g. "0001-fft-rfft_conv"
    message: str  # glue path of the commit message (first line: the subject)
    new_files: dict = field(default_factory=dict)  # MLX path -> text
    # (MLX path, insert after this line of the file at the base commit, text)
    inserts: list = field(default_factory=list)
    # (MLX path, text an earlier patch inserted): taken out again
    removals: list = field(default_factory=list)


# The extension files patch 0001 maps whole (with what they include).
CONV_FILES = [
    "precision.h",
    "precision.cpp",
    "primitives.h",
    "primitives.cpp",
    "vmap_inputs.h",
    "messages.h",
    "kernels/portability.h",
    "kernels/dd.h",
    "kernels/fft_butterflies.h",
    "kernels/rfft_conv_core.h",
    "kernels/fft_plan.h",
    "kernels/fft_plan.cpp",
    "kernels/twiddles.h",
    "kernels/twiddles.cpp",
    "backend/common/conv_geometry.h",
    "backend/common/conv_geometry.cpp",
    "backend/common/shapes.h",
    "backend/cpu/conv_job.h",
    "backend/cpu/cpu_runtime.h",
    "backend/cpu/rfft_conv_kernels.cpp",
]


# The extension files patch 0002 maps whole (with what they include).
STRICT_FILES = [
    "strict_ops.h",
    "strict_ops.cpp",
    "strict_primitives.h",
    "strict_primitives.cpp",
    "backend/cpu/strict_ops.cpp",
    "backend/cpu/strict_kernels.cpp",
]

# Mapped with drops (rfft_conv.cpp) or replaced by glue (parallel.h).
CONV_SPECIAL = {"backend/cpu/rfft_conv.cpp", "backend/cpu/parallel.h"}


def series() -> list:
    conv = Patch(
        "0001-fft-rfft_conv-cpu",
        "0001.msg",
        new_files={
            "mlx/precise/CMakeLists.txt": glue("0001/mlx/precise/CMakeLists.txt"),
            **{
                mlx_path(p): ext_file(p)
                for p in with_includes(
                    CONV_FILES,
                    # rfft_conv.cpp is mapped below; the adapter is glue.
                    carried=CONV_SPECIAL,
                )
            },
            "mlx/backend/cpu/rfft_conv.cpp": ext_file("backend/cpu/rfft_conv.cpp"),
            # The one CPU difference: MLX's CPU backend starts no threads.
            "mlx/backend/cpu/parallel.h": glue("0001/mlx/backend/cpu/parallel.h"),
        },
        inserts=[
            ("mlx/CMakeLists.txt", 90, "add_subdirectory(${CMAKE_CURRENT_SOURCE_DIR}/precise)\n"),
            ("mlx/backend/cpu/CMakeLists.txt", 90, glue("0001/mlx/backend/cpu/CMakeLists.txt")),
            ("mlx/fft.h", 6, "#include <optional>\n#include <string>\n"),
            ("mlx/fft.h", 10, '#include "mlx/precise/precision.h"\n'),
            ("mlx/fft.h", 235, "\n" + ext_body("ops.h", "mlx_precise::fft")),
            ("mlx/fft.cpp", 5, "#include <stdexcept>\n"),
            ("mlx/fft.cpp", 8, '#include "mlx/precise/messages.h"\n#include "mlx/precise/primitives.h"\n'),
            ("mlx/fft.cpp", 336, "\n" + ext_body("ops.cpp", "mlx_precise::fft")),
            ("mlx/backend/no_gpu/primitives.cpp", 5, '#include "mlx/precise/primitives.h"\n'),
            ("mlx/backend/no_gpu/primitives.cpp", 170, "NO_GPU(RFFTConv)\nNO_GPU(BiasGradient)\n"),
            ("mlx/backend/cuda/primitives.cpp", 5, '#include "mlx/precise/primitives.h"\n'),
            ("mlx/backend/cuda/primitives.cpp", 33, "NO_GPU(RFFTConv)\nNO_GPU(BiasGradient)\n"),
            ("mlx/backend/metal/primitives.cpp", 15, '#include "mlx/precise/primitives.h"\n'),
            ("mlx/backend/metal/primitives.cpp", 215, glue("0001/mlx/backend/metal/primitives.cpp")),
            ("python/src/fft.cpp", 636, glue("0001/python/src/fft.cpp")),
            ("python/tests/test_fft.py", 482, glue("0001/python/tests/test_fft.py")),
            ("docs/src/python/fft.rst", 26, "  rfft_conv\n"),
        ],
    )
    carried = set(with_includes(CONV_FILES, CONV_SPECIAL)) | CONV_SPECIAL
    strict = Patch(
        "0002-precision-addmm-layer_norm-cpu",
        "0002.msg",
        new_files={
            **{
                mlx_path(p): ext_file(p)
                for p in with_includes(STRICT_FILES, carried=carried | {"backend/cpu/blas.h"})
            },
            # The one BLAS difference: MLX's cblas_dgemm.
            "mlx/backend/cpu/blas.h": glue("0002/mlx/backend/cpu/blas.h"),
            "python/src/precise.cpp": glue("0002/python/src/precise.cpp"),
        },
        inserts=[
            ("mlx/precise/CMakeLists.txt", 17, glue("0002/mlx/precise/CMakeLists.txt")),
            ("mlx/backend/cpu/CMakeLists.txt", 90, glue("0002/mlx/backend/cpu/CMakeLists.txt")),
            ("mlx/backend/no_gpu/primitives.cpp", 5, STRICT_INCLUDE),
            ("mlx/backend/no_gpu/primitives.cpp", 170, STRICT_NO_GPU),
            ("mlx/backend/cuda/primitives.cpp", 5, STRICT_INCLUDE),
            ("mlx/backend/cuda/primitives.cpp", 33, STRICT_NO_GPU),
            ("mlx/backend/metal/primitives.cpp", 15, STRICT_INCLUDE),
            ("mlx/backend/metal/primitives.cpp", 215, glue("0002/mlx/backend/metal/primitives.cpp")),
            ("python/src/CMakeLists.txt", 31, "  ${CMAKE_CURRENT_SOURCE_DIR}/precise.cpp\n"),
            ("python/src/mlx.cpp", 26, "void init_precise(nb::module_&);\n"),
            ("python/src/mlx.cpp", 47, "  init_precise(m);\n"),
            ("python/tests/test_blas.py", 1681, glue("0002/python/tests/test_blas.py")),
            ("python/tests/test_fast.py", 8, "import numpy as np\n"),
            ("python/tests/test_fast.py", 1179, glue("0002/python/tests/test_fast.py")),
        ],
    )
    carried |= set(with_includes(STRICT_FILES, carried)) | {"backend/cpu/blas.h"}
    # jit.h is mapped with drops below; allocation.h is MLX's cu::malloc_async (glue).
    carried |= {"backend/cuda/jit.h", "backend/cuda/allocation.h"}
    cuda_conv = Patch(
        "0003-fft-rfft_conv-cuda",
        "0003.msg",
        new_files={
            **{
                mlx_path(p): ext_file(p)
                for p in with_includes(CUDA_CONV_FILES, carried=carried)
            },
            "mlx/backend/cuda/precise/jit.h": ext_file("backend/cuda/jit.h", drop=CUDA_LATER),
            # The CUDA differences: kernels compiled by MLX's cu::JitModule, arrays
            # allocated by MLX's cu::malloc_async.
            "mlx/backend/cuda/precise/jit.cpp": glue("0003/mlx/backend/cuda/precise/jit.cpp"),
            "mlx/backend/cuda/precise/allocation.h": glue(
                "0003/mlx/backend/cuda/precise/allocation.h"
            ),
        },
        inserts=[
            ("mlx/backend/cuda/CMakeLists.txt", 73, glue("0003/mlx/backend/cuda/CMakeLists.txt")),
            (
                "mlx/backend/cuda/CMakeLists.txt",
                106,
                cuda_jit_sources("rfft_conv", "rfft_conv_kernels.cuh", CUDA_CONV_HEADERS),
            ),
            ("mlx/backend/cuda/jit_module.cpp", 280, jit_header_names("mx.fft.rfft_conv", CUDA_CONV_HEADERS)),
            ("mlx/backend/cuda/jit_module.cpp", 302, jit_header_sources(CUDA_CONV_HEADERS)),
            ("mlx/backend/cuda/jit_module.cpp", 342, JIT_NO_CONTRACTION),
            ("mlx/backend/gpu/CMakeLists.txt", 4, "          ${CMAKE_CURRENT_SOURCE_DIR}/precise/conv_layout.cpp\n"),
        ],
        removals=[
            ("mlx/backend/cuda/primitives.cpp", '#include "mlx/precise/primitives.h"\n'),
            ("mlx/backend/cuda/primitives.cpp", "NO_GPU(RFFTConv)\nNO_GPU(BiasGradient)\n"),
        ],
    )
    metal_conv = Patch(
        "0004-fft-rfft_conv-metal",
        "0004.msg",
        new_files={
            **{
                mlx_path(p): ext_file(p)
                for p in with_includes(
                    METAL_CONV_FILES, carried=carried | set(with_includes(CUDA_CONV_FILES, carried))
                )
                if p != "backend/metal/kernel_sources.h"
            },
            "mlx/backend/metal/precise/kernel_sources.h": ext_file(
                "backend/metal/kernel_sources.h",
                drop=("const char* strict_kernels();", "const char* pair_kernels();"),
            ),
        },
        inserts=[
            ("mlx/backend/metal/CMakeLists.txt", 36, metal_jit_source("rfft_conv_kernels", METAL_CONV_HEADERS)),
            ("mlx/backend/metal/CMakeLists.txt", 140, "          ${CMAKE_CURRENT_SOURCE_DIR}/precise/rfft_conv.cpp\n"),
        ],
        removals=[
            ("mlx/backend/metal/primitives.cpp", '#include "mlx/precise/primitives.h"\n'),
            ("mlx/backend/metal/primitives.cpp", glue("0001/mlx/backend/metal/primitives.cpp")),
        ],
    )
    carried |= set(with_includes(CUDA_CONV_FILES, carried))
    carried |= set(with_includes(METAL_CONV_FILES, carried))
    sources_h = metal_conv.new_files["mlx/backend/metal/precise/kernel_sources.h"]
    metal_strict = Patch(
        "0005-precision-addmm-layer_norm-metal",
        "0005.msg",
        new_files={
            mlx_path(p): ext_file(p)
            for p in with_includes(METAL_STRICT_FILES, carried=carried)
        },
        inserts=[
            (
                "mlx/backend/metal/precise/kernel_sources.h",
                sources_h.splitlines().index("const char* rfft_conv_kernels();") + 1,
                "const char* strict_kernels();\n",
            ),
            ("mlx/backend/metal/CMakeLists.txt", 36, metal_jit_source("strict_kernels", STRICT_HEADERS)),
            ("mlx/backend/metal/CMakeLists.txt", 140, "          ${CMAKE_CURRENT_SOURCE_DIR}/precise/strict_ops.cpp\n"),
        ],
        removals=[
            ("mlx/backend/metal/primitives.cpp", STRICT_INCLUDE),
            ("mlx/backend/metal/primitives.cpp", glue("0002/mlx/backend/metal/primitives.cpp")),
        ],
    )
    carried |= set(with_includes(METAL_STRICT_FILES, carried))
    jit_h = "mlx/backend/cuda/precise/jit.h"
    cuda_strict = Patch(
        "0006-precision-addmm-layer_norm-cuda",
        "0006.msg",
        new_files={
            **{mlx_path(p): ext_file(p) for p in with_includes(CUDA_STRICT_FILES, carried)},
            # The one cuBLASLt difference: MLX's CublasMatmulBase.
            "mlx/backend/cuda/precise/blas.cpp": glue("0006/mlx/backend/cuda/precise/blas.cpp"),
        },
        inserts=[
            *insertions(
                jit_h,
                cuda_conv.new_files[jit_h],
                ext_file("backend/cuda/jit.h", drop=CUDA_PAIR_ONLY),
            ),
            (
                "mlx/backend/cuda/precise/jit.cpp",
                cuda_conv.new_files["mlx/backend/cuda/precise/jit.cpp"]
                .splitlines()
                .index("} // namespace mlx::core::cuda"),
                glue("0006/mlx/backend/cuda/precise/jit.cpp"),
            ),
            ("mlx/backend/cuda/CMakeLists.txt", 73, glue("0006/mlx/backend/cuda/CMakeLists.txt")),
            (
                "mlx/backend/cuda/CMakeLists.txt",
                106,
                cuda_jit_sources("strict-ops", "strict_kernels.cuh", CUDA_STRICT_HEADERS),
            ),
            ("mlx/backend/cuda/jit_module.cpp", 280, jit_header_names("the precision= ops", CUDA_STRICT_HEADERS)),
            ("mlx/backend/cuda/jit_module.cpp", 302, jit_header_sources(CUDA_STRICT_HEADERS)),
        ],
        removals=[
            ("mlx/backend/cuda/primitives.cpp", STRICT_INCLUDE),
            ("mlx/backend/cuda/primitives.cpp", STRICT_NO_GPU),
        ],
    )
    return [conv, strict, cuda_conv, metal_conv, metal_strict, cuda_strict]


# The extension files patch 0003 maps whole (with what they include).
CUDA_CONV_FILES = [
    "backend/cuda/rfft_conv.cpp",
    "backend/cuda/kernel_support.cpp",
    "backend/cuda/rfft_conv_kernels.cuh",
    "backend/gpu/conv_layout.cpp",
]

# The extension files patch 0004 maps whole (with what they include).
METAL_CONV_FILES = ["backend/metal/rfft_conv.cpp", "backend/metal/rfft_conv_kernels.metal"]

# The extension files patch 0005 maps whole (with what they include).
METAL_STRICT_FILES = ["backend/metal/strict_ops.cpp", "backend/metal/strict_kernels.metal"]

# The extension files patch 0006 maps whole (with what they include; its
# blas.cpp is glue).
CUDA_STRICT_FILES = ["backend/cuda/strict_ops.cpp", "backend/cuda/strict_kernels.cuh"]

# What jit.h declares for ops patch 0003 does not carry: the strict ops come
# with their CUDA patch (0006); the pair ops stay in the extension.
CUDA_PAIR_ONLY = (
    "CUfunction get_pair_kernel(int device, const std::string& name_expression);",
    "std::vector<std::string> pair_kernel_names();",
)
CUDA_LATER = CUDA_PAIR_ONLY + (
    "CUfunction get_strict_kernel(int device, const std::string& name_expression);",
    "std::vector<std::string> strict_kernel_names();",
)

# The kernel headers the GPU rfft_conv kernels include, by file name: MLX's
# CUDA CMake embeds them (bin2h: jit_source_<stem>) and jit_module.cpp hands
# them to NVRTC under these names; Metal's make_jit_source expands them.
def kernel_headers(source: str) -> list:
    """The headers a CUDA or Metal kernel source includes, directly or not: the
    kernels/ ones and the CUDA-only device headers of backend/cuda/."""
    return [
        Path(p).name
        for p in with_includes([source], set())[1:]
        if p.startswith(("kernels/", "backend/cuda/"))
    ]


def cuda_jit_path(header: str) -> str:
    """A kernel header's path relative to mlx/backend/cuda (MLX_JIT_SOURCES)."""
    if (EXT / "backend" / "cuda" / header).is_file():
        return f"precise/{header}"
    return f"../common/precise/{header}"


CUDA_CONV_HEADERS = kernel_headers("backend/cuda/rfft_conv_kernels.cuh")
METAL_CONV_HEADERS = kernel_headers("backend/metal/rfft_conv_kernels.metal")


def cuda_jit_sources(what: str, kernels: str, headers: list) -> str:
    """The kernel source and the headers it adds to MLX_JIT_SOURCES, which
    MLX's CMake embeds (bin2h: jit_source_<stem>)."""
    listed = "".join(f"  {cuda_jit_path(h)}\n" for h in headers)
    return (
        f"# The {what} kernels and the headers they share with the CPU backend.\n"
        f"list(\n  APPEND\n  MLX_JIT_SOURCES\n  precise/{kernels}\n"
        + listed.rstrip("\n")
        + ")\n"
    )


def jit_header_names(what: str, headers: list) -> str:
    return f"    // The kernel headers of {what}, included by file name.\n" + "".join(
        f'    "{h}",\n' for h in headers
    )


def jit_header_sources(headers: list) -> str:
    return "".join(f"    jit_source_{Path(h).stem},\n" for h in headers)


# The kernel headers the Metal strict-ops kernels include.
STRICT_HEADERS = [
    Path(p).name for p in with_includes(["kernels/strict_params.h", "kernels/strict_arith.h"], set())
]


# The kernel headers the CUDA strict-ops kernels include beyond rfft_conv's.
CUDA_STRICT_HEADERS = [
    h for h in kernel_headers("backend/cuda/strict_kernels.cuh") if h not in CUDA_CONV_HEADERS
]


def metal_jit_source(name: str, headers: list) -> str:
    """MLX's make_jit_source for one Metal library (metal::<name>(), built
    into a library at first use), with the shared headers it includes as
    dependencies."""
    deps = "".join(f"  ../common/precise/{h}\n" for h in headers)
    return (
        f"# mlx/precise: metal::{name}(), built into a library at first use.\n"
        f"make_jit_source(\n  precise/{name}\n" + deps.rstrip("\n") + ")\n"
    )


# NVRTC contracts a*b+c by default; the correctly rounded ops' modules
# ("precise_*") need every double operation rounded on its own. (MLX's
# compile() already passes --device-as-default-execution-space, which the
# certification lambdas of kernels/ need, to every module.)
JIT_NO_CONTRACTION = """  // The correctly rounded ops (mlx/precise) round each double operation once:
  // their modules compile without contraction.
  if (module_name.starts_with("precise_")) {
    args.push_back("--fmad=false");
  }
"""

STRICT_INCLUDE = '#include "mlx/precise/strict_primitives.h"\n'
STRICT_NO_GPU = "NO_GPU(StrictAddmm)\nNO_GPU(StrictLayerNorm)\nNO_GPU_MULTI(StrictLayerNormVJP)\n"


def _header(patch: Patch, number: int, total: int) -> str:
    subject, _, body = glue(patch.message).partition("\n")
    return (
        f"From: mlx-precise\nSubject: [PATCH {number}/{total}] {subject}\n{body.rstrip()}\n\n---\n"
    )


def _new_file_diff(path: str, text: str) -> str:
    lines = text.splitlines()
    out = [
        f"diff --git a/{path} b/{path}",
        "new file mode 100644",
        "--- /dev/null",
        f"+++ b/{path}",
        f"@@ -0,0 +1,{len(lines)} @@",
    ]
    out += ["+" + line for line in lines]
    return "\n".join(out) + "\n"


def _hunks(ops: list) -> list:
    """ops: (line of the file before this patch, lines to insert after it or
    None, lines removed from there on), in file order -> diff -U0 hunk lines."""
    out, added = [], 0
    for line, inserted, removed in ops:
        if removed:
            out.append(f"@@ -{line},{len(removed)} +{line - 1 + added},0 @@")
            out += ["-" + r for r in removed]
            added -= len(removed)
        else:
            out.append(f"@@ -{line},0 +{line + added + 1},{len(inserted)} @@")
            out += ["+" + r for r in inserted]
            added += len(inserted)
    return out


def _edit_diff(path: str, ops: list) -> str:
    out = [f"diff --git a/{path} b/{path}", f"--- a/{path}", f"+++ b/{path}"]
    return "\n".join(out + _hunks(ops)) + "\n"


def render(patches: list) -> dict:
    """File name -> text of every file under patches/ the generator owns."""
    files = {}
    # MLX path -> the blocks earlier patches inserted, in file order:
    # [base line they follow, their lines]
    blocks = {}
    for number, patch in enumerate(patches, 1):
        diffs = {}
        for path, text in patch.new_files.items():
            diffs[path] = _new_file_diff(path, text)
        ops = {}  # MLX path -> [(sort key, line, inserted, removed)]
        for path, text in patch.removals:
            lines = text.splitlines()
            placed = blocks.get(path, [])
            i = next(i for i, (_, b) in enumerate(placed) if b == lines)
            start = placed[i][0] + sum(len(b) for _, b in placed[:i]) + 1
            ops.setdefault(path, []).append((start, start, None, lines))
        for path, base_line, text in patch.inserts:
            after = base_line + sum(len(b) for n, b in blocks.get(path, []) if n <= base_line)
            ops.setdefault(path, []).append((after + 0.5, after, text.splitlines(), None))
        for path, path_ops in ops.items():
            path_ops.sort(key=lambda op: op[0])
            diffs[path] = _edit_diff(path, [op[1:] for op in path_ops])
        for path, text in patch.removals:
            blocks[path].remove(next(b for b in blocks[path] if b[1] == text.splitlines()))
        for path, base_line, text in sorted(patch.inserts, key=lambda i: i[1]):
            placed = blocks.setdefault(path, [])
            at = sum(1 for n, _ in placed if n <= base_line)
            placed.insert(at, [base_line, text.splitlines()])
        body = "".join(diffs[p] for p in sorted(diffs))
        files[f"{patch.name}.patch"] = _header(patch, number, len(patches)) + body
    return files


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "patches"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("[0-9]*.patch"):
        old.unlink()
    for name, text in render(series()).items():
        (out / name).write_text(text)


if __name__ == "__main__":
    main()
