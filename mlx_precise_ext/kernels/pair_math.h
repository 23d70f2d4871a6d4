// The elementwise operations of the pair ops (pair_ops.h) on one value in the
// working precision: double on the CPU and CUDA. Written once against
// portability.h for every backend.
#pragma once

#include "dd.h"

namespace mlx_precise {

// The elementwise operations of a pair chain; gelu is torch's exact-erf GELU,
// x/2 (1 + erf(x / sqrt 2)).
enum class PairOp { Add, Multiply, Gelu, Sin, Exp, Tanh };

#if MP_HAS_DOUBLE
// GELU as x/2 erfc(-x / sqrt 2): the same function as x/2 (1 + erf(x /
// sqrt 2)) without the cancellation of 1 + erf for negative x. The double
// libraries' erfc, sin, exp and tanh are accurate to about an ulp of double.
MP_INLINE double pair_unary_double(PairOp op, double x) {
  switch (op) {
    case PairOp::Gelu:
      return 0.5 * x * erfc(x * -0.70710678118654752440);
    case PairOp::Sin:
      return sin(x);
    case PairOp::Exp:
      return exp(x);
    default:
      return tanh(x);
  }
}

MP_INLINE double pair_binary_double(PairOp op, double x, double y) {
  return op == PairOp::Add ? x + y : x * y;
}
#endif

} // namespace mlx_precise
