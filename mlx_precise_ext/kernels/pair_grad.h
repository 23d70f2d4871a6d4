// The arithmetic of the pair gradients (pair_vjp_primitives.h) in double,
// in one sequential order per output or row, written once for the CPU
// (backend/cpu/pair_ops.cpp) and CUDA (backend/cuda/pair_kernels.cuh, one
// thread per output or row). Where every operation is correctly rounded (+,
// -, *, /, sqrt: PairSum, PairRows' sums, PairLayerNormVJP) the two backends
// give the same bits; exp and log (PairCrossEntropy) are each math library's
// own, within an ulp of double of each other.
#pragma once

#include "portability.h"

namespace mlx_precise {

#if MP_HAS_DOUBLE
// Sums in double with Neumaier's compensation: the error stays near one
// rounding of the sum whatever the length, so a mean far from zero does not
// leave D roundings of itself in the centred values.
struct NeumaierSum {
  double sum = 0.0;
  double correction = 0.0;

  MP_INLINE void add(double x) {
    const double t = sum + x;
    correction += fabs(sum) >= fabs(x) ? (sum - t) + x : (x - t) + sum;
    sum = t;
  }
  MP_INLINE double value() const {
    return sum + correction;
  }
};

// torch's layer_norm backward for one row of `dim`, in double: xhat = (x -
// mean) rstd, gw = g w, dx = rstd (gw - mean(gw) - xhat mean(gw xhat)).
// x_at(i), g_at(i) and weight_at(i) (called only with has_weight) read the
// row; store_g_xhat(i, g xhat) (whose sum over rows is the weight's gradient)
// and store_dx(i, dx) write it. xhat and gw are recomputed where needed
// (the same operations, so the same values) rather than kept per element.
template <class X, class G, class W, class StoreGXhat, class StoreDx>
MP_INLINE void pair_layer_norm_vjp_row(
    MP_INT64 dim,
    double eps,
    bool has_weight,
    X x_at,
    G g_at,
    W weight_at,
    StoreGXhat store_g_xhat,
    StoreDx store_dx) {
  const double n = static_cast<double>(dim);
  NeumaierSum sum, squares, gw_sum, gw_xhat_sum;
  for (MP_INT64 i = 0; i < dim; ++i)
    sum.add(x_at(i));
  const double mean = sum.value() / n;
  for (MP_INT64 i = 0; i < dim; ++i) {
    const double centred = x_at(i) - mean;
    squares.add(centred * centred);
  }
  const double rstd = 1.0 / sqrt(squares.value() / n + eps);
  for (MP_INT64 i = 0; i < dim; ++i) {
    const double g = g_at(i);
    const double xhat = (x_at(i) - mean) * rstd;
    const double gw = has_weight ? g * weight_at(i) : g;
    gw_sum.add(gw);
    gw_xhat_sum.add(gw * xhat);
    store_g_xhat(i, g * xhat);
  }
  const double gw_mean = gw_sum.value() / n;
  const double gw_xhat_mean = gw_xhat_sum.value() / n;
  for (MP_INT64 i = 0; i < dim; ++i) {
    const double g = g_at(i);
    const double xhat = (x_at(i) - mean) * rstd;
    const double gw = has_weight ? g * weight_at(i) : g;
    store_dx(i, rstd * (gw - gw_mean - xhat * gw_xhat_mean));
  }
}

// log(sum_j exp(l_j)) of one row of `classes` logits (logit_at(j)): the
// largest, then the compensated sum of exp(l_j - largest); -inf for none.
template <class L>
MP_INLINE double pair_log_sum_exp(MP_INT64 classes, L logit_at) {
  if (classes == 0)
    return log(0.0);
  double top = logit_at(0);
  for (MP_INT64 j = 1; j < classes; ++j) {
    const double l = logit_at(j);
    top = top < l ? l : top;
  }
  NeumaierSum exp_sum;
  for (MP_INT64 j = 0; j < classes; ++j)
    exp_sum.add(exp(logit_at(j) - top));
  return top + log(exp_sum.value());
}

// The cross-entropy gradient of logit l in a row with log_sum_exp, target or
// not: scale (softmax - onehot), scale = c w_i / sum w.
MP_INLINE double cross_entropy_logit_grad(
    double scale,
    double l,
    double log_sum_exp,
    bool target) {
  return scale * (exp(l - log_sum_exp) - (target ? 1.0 : 0.0));
}
#endif

} // namespace mlx_precise
