// The arithmetic of the pair gradients (pair_vjp_primitives.h) in one
// sequential order per output or row, written once for the CPU
// (backend/cpu/pair_ops.cpp), CUDA (backend/cuda/pair_kernels.cuh, one thread
// per output or row) and Metal (pair_kernels.metal), templated on the working
// precision: double on the CPU and CUDA, float pairs on Metal, where each
// result agrees with the double one to the float-pair bounds below, not
// bitwise. Where every operation is correctly rounded (+, -, *, /, sqrt:
// PairSum, PairRows' sums, PairLayerNormVJP) the CPU and CUDA give the same
// bits; exp and log (PairCrossEntropy) are each math library's own, within
// an ulp of double of each other (on Metal pair_math.h's dd_exp and dd_log).
#pragma once

#include "fft_butterflies.h"
#include "pair_math.h"
#include "portability.h"
#include "strict_arith.h"
#include "strict_params.h"

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

#endif

// ---------------------------------------- sums in the working precision ----
// Float-pair sums where there is no double (Metal): AccurateDWPlusDW in order,
// each addition within 3 u^2 (u = 2^-24) of the exact sum of its operands, so
// a sum's error is at most 3 u^2 times the sum of its partial sums' magnitudes
// (tests/test_metal_pair_gradients.py asserts that bound).
struct PairWordSum {
  ff sum = ff{0.0f, 0.0f};

  MP_INLINE void add(ff x) {
    sum = dd_add(sum, x);
  }
  MP_INLINE ff value() const {
    return sum;
  }
};

// The sum of the working precision whose tag is passed.
#if MP_HAS_DOUBLE
MP_INLINE NeumaierSum working_sum(double) {
  return NeumaierSum{};
}
#endif
MP_INLINE PairWordSum working_sum(ff) {
  return PairWordSum{};
}

// `count` in the working precision, exactly.
#if MP_HAS_DOUBLE
MP_INLINE double r_from_count(double, MP_INT64 count) {
  return static_cast<double>(count);
}
#endif
MP_INLINE ff r_from_count(ff, MP_INT64 count) {
  const float hi = static_cast<float>(count);
  return fast_two_sum(
      hi, static_cast<float>(count - static_cast<MP_INT64>(hi)));
}

// exp, log, order and NaN in the working precision (pair_math.h's dd_exp and
// dd_log for float pairs).
#if MP_HAS_DOUBLE
MP_INLINE double r_exp(double x) {
  return exp(x);
}
MP_INLINE double r_log(double x) {
  return log(x);
}
MP_INLINE bool r_less(double a, double b) {
  return a < b;
}
MP_INLINE double r_nan(double) {
  return static_cast<double>(MP_BITS_FLOAT(0x7fc00000u));
}
#endif
MP_INLINE ff r_exp(ff x) {
  return dd_exp(x);
}
MP_INLINE ff r_log(ff x) {
  return dd_log(x);
}
MP_INLINE bool r_less(ff a, ff b) {
  return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo);
}
MP_INLINE ff r_nan(ff) {
  const float nan = MP_BITS_FLOAT(0x7fc00000u);
  return ff{nan, nan};
}

// ------------------------------------------------------- cross-entropy ----
// log(sum_j exp(l_j)) of one row of `classes` logits (logit_at(j), in the
// working precision): the largest, then the sum of exp(l_j - largest); -inf
// for none.
template <class L>
MP_INLINE auto pair_log_sum_exp(MP_INT64 classes, L logit_at)
    -> decltype(logit_at(0)) {
  using R = decltype(logit_at(0));
  const R tag{};
  if (classes == 0)
    return r_log(r_from_float(tag, 0.0f));
  R top = logit_at(0);
  for (MP_INT64 j = 1; j < classes; ++j) {
    const R l = logit_at(j);
    top = r_less(top, l) ? l : top;
  }
  auto exp_sum = working_sum(tag);
  for (MP_INT64 j = 0; j < classes; ++j)
    exp_sum.add(r_exp(r_sub(logit_at(j), top)));
  return r_add(top, r_log(exp_sum.value()));
}

// The cross-entropy gradient of logit l in a row with log_sum_exp, target or
// not: scale (softmax - onehot), scale = c w_i / sum w.
template <class R>
MP_INLINE R cross_entropy_logit_grad(R scale, R l, R log_sum_exp, bool target) {
  return r_mul(
      scale,
      r_sub(
          r_exp(r_sub(l, log_sum_exp)),
          r_from_float(scale, target ? 1.0f : 0.0f)));
}

// The weights' total, and (with `loss`) the mean loss sum_i w_i
// (log_sum_exp_i - l_{i,t_i}) / total into *loss (NaN for a weighted row
// whose target is outside [0, classes)): the rows in order, as the CPU.
// weight_at(i) (float), target_at(i), logit_at(i, j) and log_sum_exp_at(i)
// read the rows.
template <class R, class W, class T, class L, class S>
MP_INLINE R cross_entropy_total(
    MP_INT64 rows,
    MP_INT64 classes,
    W weight_at,
    T target_at,
    L logit_at,
    S log_sum_exp_at,
    MP_THREAD R* loss) {
  const R tag{};
  auto weight_sum = working_sum(tag);
  auto loss_sum = working_sum(tag);
  for (MP_INT64 i = 0; i < rows; ++i)
    weight_sum.add(r_from_float(tag, weight_at(i)));
  const R total = weight_sum.value();
  if (!loss)
    return total;
  for (MP_INT64 i = 0; i < rows; ++i) {
    const float w = weight_at(i);
    if (w == 0.0f)
      continue;
    const MP_INT64 t = target_at(i);
    loss_sum.add(r_mul(
        r_from_float(tag, w),
        t >= 0 && t < classes ? r_sub(log_sum_exp_at(i), logit_at(i, t))
                              : r_nan(tag)));
  }
  *loss = r_div(loss_sum.value(), total);
  return total;
}

// The gradient of logit j of a row with weight w, target t and log_sum_exp,
// for the scalar cotangent c and the weights' total: c w / total (softmax -
// onehot); NaN for a target outside [0, classes).
template <class R>
MP_INLINE R cross_entropy_grad_output(
    R c,
    R total,
    float w,
    MP_INT64 t,
    MP_INT64 classes,
    MP_INT64 j,
    R l,
    R log_sum_exp) {
  const R scale = r_div(r_mul(c, r_from_float(total, w)), total);
  return t >= 0 && t < classes
      ? cross_entropy_logit_grad(scale, l, log_sum_exp, j == t)
      : r_nan(total);
}

// torch's layer_norm backward for one row of `dim` in the working precision R
// (double: the CPU and CUDA; float pairs: Metal): xhat = (x - mean) rstd, gw =
// g w, dx = rstd (gw - mean(gw) - xhat mean(gw xhat)). x_at(i), g_at(i) and
// weight_at(i) (called only with has_weight) read the row as R;
// store_g_xhat(i, g xhat) (whose sum over rows is the weight's gradient) and
// store_dx(i, dx) write it. xhat and gw are recomputed where needed (the same
// operations, so the same values) rather than kept per element.
template <class R, class X, class G, class W, class StoreGXhat, class StoreDx>
MP_INLINE void pair_layer_norm_vjp_row(
    MP_INT64 dim,
    R eps,
    bool has_weight,
    X x_at,
    G g_at,
    W weight_at,
    StoreGXhat store_g_xhat,
    StoreDx store_dx) {
  const R n = r_from_count(eps, dim);
  auto sum = working_sum(eps);
  auto squares = working_sum(eps);
  auto gw_sum = working_sum(eps);
  auto gw_xhat_sum = working_sum(eps);
  for (MP_INT64 i = 0; i < dim; ++i)
    sum.add(x_at(i));
  const R mean = r_div(sum.value(), n);
  for (MP_INT64 i = 0; i < dim; ++i) {
    const R centred = r_sub(x_at(i), mean);
    squares.add(r_mul(centred, centred));
  }
  const R rstd = r_div(
      r_from_float(eps, 1.0f), r_sqrt(r_add(r_div(squares.value(), n), eps)));
  for (MP_INT64 i = 0; i < dim; ++i) {
    const R g = g_at(i);
    const R xhat = r_mul(r_sub(x_at(i), mean), rstd);
    const R gw = has_weight ? r_mul(g, weight_at(i)) : g;
    gw_sum.add(gw);
    gw_xhat_sum.add(r_mul(gw, xhat));
    store_g_xhat(i, r_mul(g, xhat));
  }
  const R gw_mean = r_div(gw_sum.value(), n);
  const R gw_xhat_mean = r_div(gw_xhat_sum.value(), n);
  for (MP_INT64 i = 0; i < dim; ++i) {
    const R g = g_at(i);
    const R xhat = r_mul(r_sub(x_at(i), mean), rstd);
    const R gw = has_weight ? r_mul(g, weight_at(i)) : g;
    store_dx(
        i, r_mul(rstd, r_sub(r_sub(gw, gw_mean), r_mul(xhat, gw_xhat_mean))));
  }
}

// PairSum's output t: the pair x (hi, lo) summed over its summed dims, the
// terms j at the summed layouts' row starts, in j's order; output t at the
// kept layouts' row start of t (backend/gpu/pair_grad_layout.h).
template <class R, class P>
MP_INLINE ff pair_sum_to_output(
    P x_hi,
    P x_lo,
    const MP_THREAD RowsLayout& kept_hi,
    const MP_THREAD RowsLayout& kept_lo,
    const MP_THREAD RowsLayout& summed_hi,
    const MP_THREAD RowsLayout& summed_lo,
    MP_INT64 terms,
    MP_INT64 t) {
  const R tag{};
  const P hi = x_hi + row_start(kept_hi, t);
  const P lo = x_lo + row_start(kept_lo, t);
  auto sum = working_sum(tag);
  for (MP_INT64 j = 0; j < terms; ++j)
    sum.add(r_from_pair(
        tag, hi[row_start(summed_hi, j)], lo[row_start(summed_lo, j)]));
  return r_to_pair(sum.value());
}

// The positions of each table row's id in order, a counting sort as the
// CPU's (one thread: ids and table rows are few next to the sums): first
// (table_rows + 1 words; row v's positions are first[v] .. first[v + 1]) and
// positions (count words). Ids outside [0, table_rows) are left out.
template <class Ids, class Words>
MP_INLINE void pair_rows_count_sort(
    Ids ids,
    const MP_THREAD RowsLayout& ids_l,
    MP_INT64 ids_inner,
    MP_INT64 count,
    MP_INT64 table_rows,
    Words first,
    Words positions) {
  for (MP_INT64 v = 0; v <= table_rows; ++v)
    first[v] = 0;
  for (MP_INT64 i = 0; i < count; ++i) {
    const MP_INT64 id = ids[element_offset(ids_l, i, ids_inner)];
    if (id >= 0 && id < table_rows)
      ++first[id + 1];
  }
  for (MP_INT64 v = 0; v < table_rows; ++v)
    first[v + 1] += first[v];
  // positions[first[id] + k] = the k-th i with that id; first[v] is
  // advanced as the rows fill and restored after.
  for (MP_INT64 i = 0; i < count; ++i) {
    const MP_INT64 id = ids[element_offset(ids_l, i, ids_inner)];
    if (id >= 0 && id < table_rows)
      positions[first[id]++] = i;
  }
  for (MP_INT64 v = table_rows; v > 0; --v)
    first[v] = first[v - 1];
  first[0] = 0;
}

// ScatterAdd's output e = (v, j) of the (table_rows, dim) table: g[i, j]
// summed over row v's positions i in order (pair_rows_count_sort); g rows of
// `dim` at (g_hi_l, g_lo_l).
template <class R, class P, class Words>
MP_INLINE ff pair_scatter_add_output(
    P g_hi,
    const MP_THREAD RowsLayout& g_hi_l,
    P g_lo,
    const MP_THREAD RowsLayout& g_lo_l,
    Words first,
    Words positions,
    MP_INT64 dim,
    MP_INT64 e) {
  const R tag{};
  const MP_INT64 v = e / dim, j = e - v * dim;
  auto sum = working_sum(tag);
  for (MP_INT64 p = first[v]; p < first[v + 1]; ++p) {
    const MP_INT64 i = positions[p];
    sum.add(r_from_pair(
        tag,
        g_hi[row_start(g_hi_l, i) + j * g_hi_l.element_stride],
        g_lo[row_start(g_lo_l, i) + j * g_lo_l.element_stride]));
  }
  return r_to_pair(sum.value());
}

} // namespace mlx_precise
