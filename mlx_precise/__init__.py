"""mlx-precise: extended-precision, correctly rounded operations for MLX.

``import mlx_precise`` also installs :func:`rfft_conv` as ``mx.fft.rfft_conv``.
"""

import ctypes
import glob
import os

import mlx.core as mx  # registers MLX's nanobind types before the extension loads
import scipy_openblas32

# The extension links OpenBLAS from the scipy-openblas32 wheel (extended addmm);
# loading it first lets the extension find it from any install layout.
# (.so on Linux, .dylib on macOS)
for _library in glob.glob(os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.*")):
    ctypes.CDLL(_library, mode=ctypes.RTLD_GLOBAL)

from . import _ext  # noqa: E402

__version__ = "0.1.0"

if _ext.mlx_build_version != mx.__version__:
    raise ImportError(
        f"mlx-precise was built against MLX {_ext.mlx_build_version} but MLX "
        f"{mx.__version__} is installed; its C++ ABI matches only the MLX it was built "
        f"against: install mlx=={_ext.mlx_build_version} or rebuild mlx-precise"
    )

from . import nn  # noqa: E402
from ._ops import PRECISIONS, rfft_conv  # noqa: E402
from ._strict import addmm, layer_norm, linear  # noqa: E402

mx.fft.rfft_conv = rfft_conv

__all__ = ["PRECISIONS", "addmm", "layer_norm", "linear", "nn", "rfft_conv"]
