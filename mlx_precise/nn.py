"""Drop-in layers for ``mlx.nn.Linear`` and ``mlx.nn.LayerNorm`` with ``precision=``.

They subclass MLX's layers: the same parameter names, shapes and initialisation,
so ``load_weights`` / ``update`` take state dicts saved from the MLX layers
unchanged. ``precision`` is a plain attribute, not a parameter.

``precision="exact"`` takes a :class:`mlx_precise.pair.Pair` (or a float32 array, which
enters exactly) and returns a ``Pair``, unrounded: a stack of such layers rounds to
float32 once, where the caller takes ``.to_float32()`` of the last result.
"""

import mlx.nn

from . import pair
from ._ops import PRECISIONS
from ._strict import layer_norm, linear

LAYER_PRECISIONS = PRECISIONS + ("exact",)


def _checked_precision(layer: str, precision: str) -> str:
    if precision not in LAYER_PRECISIONS:
        raise ValueError(
            f"{layer}: precision must be one of {LAYER_PRECISIONS}, got {precision!r}"
        )
    return precision


class Linear(mlx.nn.Linear):
    """``mlx.nn.Linear`` computing ``x @ weight.T + bias`` with :func:`mlx_precise.linear`."""

    def __init__(
        self, input_dims: int, output_dims: int, bias: bool = True, precision: str = "float32"
    ) -> None:
        super().__init__(input_dims, output_dims, bias=bias)
        self.precision = _checked_precision("Linear", precision)

    def _extra_repr(self) -> str:
        return f"{super()._extra_repr()}, precision={self.precision!r}"

    def __call__(self, x):
        bias = self["bias"] if "bias" in self else None
        if self.precision == "exact":
            return pair.linear(x, self["weight"], bias)
        return linear(x, self["weight"], bias, precision=self.precision)


class LayerNorm(mlx.nn.LayerNorm):
    """``mlx.nn.LayerNorm`` computing with :func:`mlx_precise.layer_norm`."""

    def __init__(
        self,
        dims: int,
        eps: float = 1e-5,
        affine: bool = True,
        bias: bool = True,
        precision: str = "float32",
    ):
        super().__init__(dims, eps=eps, affine=affine, bias=bias)
        self.precision = _checked_precision("LayerNorm", precision)

    def _extra_repr(self):
        return f"{super()._extra_repr()}, precision={self.precision!r}"

    def __call__(self, x):
        weight = self.weight if "weight" in self else None
        bias = self.bias if "bias" in self else None
        if self.precision == "exact":
            return pair.layer_norm(x, weight, bias, self.eps)
        return layer_norm(x, weight, bias, self.eps, precision=self.precision)
