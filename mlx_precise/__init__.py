"""mlx-precise: extended-precision, correctly rounded operations for MLX.

``import mlx_precise`` also installs :func:`rfft_conv` as ``mx.fft.rfft_conv``.
"""

import ctypes
import glob
import os

import mlx.core as mx  # registers MLX's nanobind types before the extension loads

# The extension links OpenBLAS from the scipy-openblas32 wheel (extended addmm);
# loading it first lets the extension find it from any install layout.
# (.so on Linux, .dylib on macOS; importing scipy_openblas32 loads it too.)
# OpenBLAS's idle threads spin for 2^OPENBLAS_THREAD_TIMEOUT cycles (default
# 2^28, ~0.1 s) after each dgemm, taking a core from the certification pass that
# follows it (2 cores: extended addmm 2048x768x2304 ~100 ms -> ~85 ms with 4, the
# minimum). OpenBLAS reads the variable once, when the library loads; a value the
# user set wins, and the process environment is left as it was.
_had_timeout = "OPENBLAS_THREAD_TIMEOUT" in os.environ
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
try:
    import scipy_openblas32

    for _library in glob.glob(os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.*")):
        ctypes.CDLL(_library, mode=ctypes.RTLD_GLOBAL)
finally:
    if not _had_timeout:
        del os.environ["OPENBLAS_THREAD_TIMEOUT"]

try:
    from . import _ext  # noqa: E402
except ImportError:
    _here = os.path.dirname(os.path.abspath(__file__))
    if glob.glob(os.path.join(_here, "_ext*")):
        raise
    # Python puts the working directory first on sys.path, so from the repository root
    # the source folder shadows an installed wheel.
    raise ImportError(
        f"mlx_precise was imported from {_here}, a source folder without the built "
        f"extension (_ext*.so). Build it there with `bash scripts/dev_build.sh`, or run "
        f"outside the repository root (or with `python -P`) to use the installed wheel"
    ) from None

__version__ = "0.1.0"

if _ext.mlx_build_version != mx.__version__:
    raise ImportError(
        f"mlx-precise was built against MLX {_ext.mlx_build_version} but MLX "
        f"{mx.__version__} is installed; its C++ ABI matches only the MLX it was built "
        f"against: install mlx=={_ext.mlx_build_version} or rebuild mlx-precise"
    )

from . import nn, pair  # noqa: E402
from ._ops import PRECISIONS, rfft_conv  # noqa: E402
from ._strict import addmm, layer_norm, linear  # noqa: E402

mx.fft.rfft_conv = rfft_conv

__all__ = ["PRECISIONS", "addmm", "layer_norm", "linear", "nn", "pair", "rfft_conv"]
