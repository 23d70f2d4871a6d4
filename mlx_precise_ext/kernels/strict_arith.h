// Arithmetic of the strict ops (addmm / linear / layer_norm), written once for
// every backend against portability.h and dd.h:
//   - float-pair ("dd") square root and division, which layer_norm needs;
//   - the dd dot-product step and the dd forms of addmm's and layer_norm's
//     final expressions;
//   - the exact recomputation of an addmm output that the float64 fast path
//     could not certify (certify.h has the certification itself).
// Contraction must be off wherever this header is compiled (see dd.h).
#pragma once

#include "certify.h"
#include "fft_butterflies.h"

namespace mlx_precise {

// ----------------------------------------------------------- float pairs ----
// (dd.h has the error-free transforms and +, -, *, /, sqrt; fft_butterflies.h
// the r_add / r_mul / ... overloads for float, double and ff used below.)

// One step of the dd dot product: acc + a*b with the product exact (TwoProd)
// and the accurate pair addition. Every dd dot product in mlx-precise is this
// step applied for k = 0, 1, ..., K-1 in order, starting from zero.
MP_INLINE ff dd_dot_step(ff acc, float a, float b) {
  return dd_add(acc, two_prod(a, b));
}

MP_INLINE ff r_div(ff a, ff b) {
  return dd_div(a, b);
}
MP_INLINE ff r_sqrt(ff a) {
  return dd_sqrt(a);
}
MP_INLINE bool r_is_negative(ff a) {
  return a.hi < 0.0f;
}
MP_INLINE bool r_is_finite(ff a) {
  return is_finite_bits(MP_FLOAT_BITS(a.hi)) &&
      is_finite_bits(MP_FLOAT_BITS(a.lo));
}
MP_INLINE ff r_overflowed_product(ff a, float w) {
  return ff{MP_MULF(a.hi, w), 0.0f};
}
#if MP_HAS_DOUBLE
MP_INLINE double r_div(double a, double b) {
  return a / b;
}
MP_INLINE double r_sqrt(double a) {
  return sqrt(a);
}
MP_INLINE bool r_is_negative(double a) {
  return a < 0.0;
}
MP_INLINE bool r_is_finite(double a) {
  return fabs(a) <= 1.7976931348623157e308;
}
MP_INLINE double r_overflowed_product(double a, float w) {
  return a * static_cast<double>(w);
}
#endif

#if MP_HAS_DOUBLE
// alpha * sum_k a(k) b(k) [+ beta * c] from the products summed in double
// with a running error bound (certify.h's RunningSum argument: each addition
// errs by at most u |partial sum|, so |s - exact| <= u (1 + 2^-10) mass),
// then alpha * s and + beta * c (exact) rounding once each, as the GEMM's
// certification does. Writes the correctly rounded output and returns true
// when that decides it (all but heavy cancellations), at a few double
// operations per product instead of the exact accumulator's. Lanes indexed
// by constants only, so that a GPU keeps them in registers.
constexpr int kRunningLanes = 4;

template <class RowA, class ColumnB>
MP_INLINE bool running_addmm_entry(
    RowA a,
    ColumnB b,
    MP_INT64 k,
    float alpha,
    bool has_c,
    float beta,
    float c,
    MP_THREAD float* out) {
  double sum[kRunningLanes], mass[kRunningLanes];
  for (int l = 0; l < kRunningLanes; ++l)
    sum[l] = mass[l] = 0.0;
  MP_INT64 p = 0;
  for (; p + kRunningLanes <= k; p += kRunningLanes)
    for (int l = 0; l < kRunningLanes; ++l) {
      sum[l] += static_cast<double>(a(p + l)) * static_cast<double>(b(p + l));
      mass[l] += fabs(sum[l]);
    }
  for (; p < k; ++p) {
    sum[0] += static_cast<double>(a(p)) * static_cast<double>(b(p));
    mass[0] += fabs(sum[0]);
  }
  double total = sum[0], total_mass = mass[0];
  for (int l = 1; l < kRunningLanes; ++l) {
    total += sum[l];
    total_mass += mass[l] + fabs(total);
  }
  const double scale = static_cast<double>(alpha);
  const double scaled = scale * total;
  double value = scaled;
  if (has_c)
    value = value + static_cast<double>(beta) * static_cast<double>(c);
  const double err =
      kUnitRoundoff64 * (1.0 + 1.0 / 1024.0) * total_mass * fabs(scale) +
      kUnitRoundoff64 * (fabs(scaled) + fabs(value));
  return certified_round(value, err, out);
}
#endif // MP_HAS_DOUBLE

// The correctly rounded addmm output alpha * sum_k a(k) b(k) [+ beta * c],
// for outputs the fast path could not certify: first running_addmm_entry
// (where there is double), else every product and the scaling exact
// (certify.h), one rounding. Either way the same float. a(k) and b(k) return
// the float32 inputs (widened to double or not).
template <class RowA, class ColumnB>
MP_INLINE float exact_addmm_entry(
    RowA a,
    ColumnB b,
    MP_INT64 k,
    float alpha,
    bool has_c,
    float beta,
    float c) {
#if MP_HAS_DOUBLE
  float decided;
  if (running_addmm_entry(a, b, k, alpha, has_c, beta, c, &decided))
    return decided;
#endif
  ExactSum s;
  exact_sum_init(s);
  for (MP_INT64 p = 0; p < k; ++p)
    exact_sum_add_product(
        s, static_cast<float>(a(p)), static_cast<float>(b(p)));
  exact_sum_scale(s, alpha);
  if (has_c)
    exact_sum_add_product(s, beta, c);
  return exact_sum_round(s);
}

// ------------------------------------------------------------ layer_norm ----
// One algorithm for the working precisions T = double ("extended") and ff
// ("dd"), so that the dd bits are fixed by this code alone:
//   shift      = (sum x) / D
//   correction = (sum (x - shift)) / D           (corrected two-pass mean:
//   var        = (sum (x - shift)^2 - (sum (x - shift)) * correction) / D
//   inv_std    = 1 / sqrt(max(var, 0) + eps)
//   y          = ((x - shift) - correction) * inv_std [* w] [+ b], rounded
//   once.
// The correction makes the mean exact to far below float32 rounding even when
// |mean| is many orders above the spread (heavy cancellation). Every sum runs
// over kLayerNormLanes lanes, lane l taking i = l, l + 8, ... in order, and
// the lanes combine as ((0+1)+(2+3))+((4+5)+(6+7)).
constexpr int kLayerNormLanes = 8;

template <class T>
MP_INLINE T combine_lanes(MP_THREAD const T* lane) {
  return r_add(
      r_add(r_add(lane[0], lane[1]), r_add(lane[2], lane[3])),
      r_add(r_add(lane[4], lane[5]), r_add(lane[6], lane[7])));
}

template <class T>
struct LayerNormStats {
  T shift;
  T correction;
  T inv_std;
};

// One step of lane l's sums in the second pass: deviation from the shift and
// its square.
template <class T>
MP_INLINE void
layer_norm_deviation_step(MP_THREAD T& dev, MP_THREAD T& sq, float x, T shift) {
  T d = r_sub(r_from_float(shift, x), shift);
  dev = r_add(dev, d);
  sq = r_add(sq, r_mul(d, d));
}

// The statistics from the lanes of the second pass (CPU and GPU fill the
// lanes in the same order, so they share every bit from here on).
template <class T>
MP_INLINE LayerNormStats<T> layer_norm_finish(
    T shift,
    MP_THREAD const T* dev,
    MP_THREAD const T* sq,
    T count,
    T eps) {
  const T zero = r_from_float(eps, 0.0f);
  const T dev_sum = combine_lanes(dev);
  const T correction = r_div(dev_sum, count);
  T var = r_div(r_sub(combine_lanes(sq), r_mul(dev_sum, correction)), count);
  if (r_is_negative(var))
    var = zero;
  const T inv_std = r_div(r_from_float(eps, 1.0f), r_sqrt(r_add(var, eps)));
  return LayerNormStats<T>{shift, correction, inv_std};
}

template <class T>
MP_INLINE LayerNormStats<T>
layer_norm_stats(const MP_DEVICE float* x, int64_t dim, T eps) {
  const T zero = r_from_float(eps, 0.0f);
  const T count =
      r_from_float(eps, static_cast<float>(dim)); // exact: dim < 2^24
  T sum[kLayerNormLanes];
  for (int l = 0; l < kLayerNormLanes; ++l)
    sum[l] = zero;
  int64_t i = 0;
  for (; i + kLayerNormLanes <= dim; i += kLayerNormLanes)
    for (int l = 0; l < kLayerNormLanes; ++l)
      sum[l] = r_add(sum[l], r_from_float(eps, x[i + l]));
  for (int l = 0; i + l < dim; ++l)
    sum[l] = r_add(sum[l], r_from_float(eps, x[i + l]));
  const T shift = r_div(combine_lanes(sum), count);

  T dev[kLayerNormLanes], sq[kLayerNormLanes];
  for (int l = 0; l < kLayerNormLanes; ++l)
    dev[l] = sq[l] = zero;
  for (i = 0; i + kLayerNormLanes <= dim; i += kLayerNormLanes)
    for (int l = 0; l < kLayerNormLanes; ++l)
      layer_norm_deviation_step(dev[l], sq[l], x[i + l], shift);
  for (int l = 0; i + l < dim; ++l)
    layer_norm_deviation_step(dev[l], sq[l], x[i + l], shift);
  return layer_norm_finish(shift, dev, sq, count, eps);
}

// (x - mean) / sqrt(var + eps) in the working precision.
template <class T>
MP_INLINE T
layer_norm_normalized(const MP_THREAD LayerNormStats<T>& s, float x) {
  return r_mul(
      r_sub(r_sub(r_from_float(s.shift, x), s.shift), s.correction), s.inv_std);
}

// The layer_norm output for one element: normalised, [* w], [+ b], rounded
// once.
template <class T>
MP_INLINE float layer_norm_output(
    const MP_THREAD LayerNormStats<T>& s,
    float x,
    bool has_weight,
    float w,
    bool has_bias,
    float b) {
  T v = layer_norm_normalized(s, x);
  if (has_weight) {
    // A product beyond float's range is NaN in float pairs (dd.h): its
    // leading part alone then gives the right infinity.
    const T scaled = r_mul(v, r_from_float(s.shift, w));
    v = r_is_finite(scaled) ? scaled : r_overflowed_product(v, w);
  }
  if (has_bias)
    v = r_add(v, r_from_float(s.shift, b));
  return r_round(v);
}

// Gradient of layer_norm with respect to x for one element, from the
// weighted cotangent gw = g * w (exact), the normalised input n and the row
// means of gw and gw * n.
template <class T>
MP_INLINE float layer_norm_grad_x(
    const MP_THREAD LayerNormStats<T>& s,
    T gw,
    T n,
    T mean_gw,
    T mean_gwn) {
  return r_round(
      r_mul(s.inv_std, r_sub(r_sub(gw, mean_gw), r_mul(n, mean_gwn))));
}

} // namespace mlx_precise
