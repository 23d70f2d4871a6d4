"""mlx-precise: extended-precision, correctly rounded operations for MLX.

``import mlx_precise`` also installs :func:`rfft_conv` as ``mx.fft.rfft_conv``.
"""

import mlx.core as mx  # registers MLX's nanobind types before the extension loads

from . import _ext

__version__ = "0.1.0"

if _ext.mlx_build_version != mx.__version__:
    raise ImportError(
        f"mlx-precise was built against MLX {_ext.mlx_build_version} but MLX "
        f"{mx.__version__} is installed; its C++ ABI matches only the MLX it was built "
        f"against: install mlx=={_ext.mlx_build_version} or rebuild mlx-precise"
    )

from ._ops import PRECISIONS, rfft_conv  # noqa: E402

mx.fft.rfft_conv = rfft_conv

__all__ = ["PRECISIONS", "rfft_conv"]
