"""mlx-precise: extended-precision, correctly rounded operations for MLX.

``import mlx_precise`` also installs :func:`rfft_conv` as ``mx.fft.rfft_conv``.
"""

from ._native import load_extension

load_extension()

from . import nn, pair  # noqa: E402
from ._ops import PRECISIONS, rfft_conv  # noqa: E402
from ._strict import addmm, layer_norm, linear  # noqa: E402

__version__ = "0.1.0"
__all__ = ["PRECISIONS", "addmm", "layer_norm", "linear", "nn", "pair", "rfft_conv"]


def _install_into_mlx() -> None:
    import mlx.core as mx

    mx.fft.rfft_conv = rfft_conv


_install_into_mlx()
del load_extension, _install_into_mlx


def __dir__() -> list:
    # The API only: private submodules (_ext, _ops, ...) stay importable but unlisted.
    return sorted(__all__ + ["__version__"])
