"""Loads the compiled extension ``mlx_precise._ext`` and the libraries it needs.

Kept out of ``mlx_precise/__init__.py`` so the package namespace holds only the API.
"""

import ctypes
import glob
import importlib
import os

import mlx.core as mx  # registers MLX's nanobind types before the extension loads

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _load_openblas() -> None:
    # The extension links OpenBLAS from the scipy-openblas32 wheel (extended addmm);
    # loading it first lets the extension find it from any install layout
    # (.so on Linux, .dylib on macOS).
    # OpenBLAS's idle threads spin for 2^OPENBLAS_THREAD_TIMEOUT cycles (default
    # 2^28, ~0.1 s) after each dgemm, taking a core from the certification pass that
    # follows it (2 cores: extended addmm 2048x768x2304 ~100 ms -> ~85 ms with 4, the
    # minimum). OpenBLAS reads the variable once, when the library loads; a value the
    # user set wins, and the process environment is left as it was.
    had_timeout = "OPENBLAS_THREAD_TIMEOUT" in os.environ
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    try:
        import scipy_openblas32

        for library in glob.glob(os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.*")):
            ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
    finally:
        if not had_timeout:
            del os.environ["OPENBLAS_THREAD_TIMEOUT"]


def load_extension():
    """Returns ``mlx_precise._ext``, with a clear ImportError where it cannot load."""
    _load_openblas()
    if not glob.glob(os.path.join(_PACKAGE_DIR, "_ext.*")):
        # Python puts the working directory first on sys.path, so from the repository
        # root the source folder shadows an installed wheel.
        raise ImportError(
            f"mlx_precise was imported from {_PACKAGE_DIR}, a source folder without the "
            "built extension (_ext*.so). Build it there with `bash scripts/dev_build.sh`, "
            "or run outside the repository root (or with `python -P`) to use the "
            "installed wheel"
        )
    ext = importlib.import_module("mlx_precise._ext")
    if ext.mlx_build_version != mx.__version__:
        raise ImportError(
            f"mlx-precise was built against MLX {ext.mlx_build_version} but MLX "
            f"{mx.__version__} is installed; its C++ ABI matches only the MLX it was built "
            f"against: install mlx=={ext.mlx_build_version} or rebuild mlx-precise"
        )
    return ext
