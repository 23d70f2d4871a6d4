"""Argument checks shared by the Python front-ends (Python's error types)."""

import mlx.core as mx

PRECISIONS = ("float32", "extended", "dd")


def require_float32_array(op: str, name: str, value) -> None:
    if not isinstance(value, mx.array):
        raise TypeError(
            f"{op}: {name} must be an mlx.core.array of dtype float32, got "
            f"{type(value).__name__}; pass mx.array(..., dtype=mx.float32)"
        )
    if value.dtype != mx.float32:
        raise TypeError(
            f"{op}: {name} has dtype {value.dtype}; {op} takes float32 and never casts "
            f"silently: pass {name}.astype(mx.float32) if that rounding is intended"
        )
