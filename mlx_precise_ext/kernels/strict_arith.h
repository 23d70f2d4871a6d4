// Arithmetic of the strict ops (addmm / linear / layer_norm), written once for
// every backend against portability.h and dd.h:
//   - float-pair ("dd") square root and division, which layer_norm needs;
//   - the dd dot-product step and the dd forms of addmm's and layer_norm's
//     final expressions;
//   - for backends with float64 ("extended"): a double-word accumulator in
//     double (exact enough to decide any float32 rounding), a correct
//     rounding of such a pair to float32, and the test that certifies that a
//     float64 value with a known error bound rounds to the same float32 as
//     the exact value.
// Contraction must be off wherever this header is compiled (see dd.h).
#pragma once

#include "fft_butterflies.h"

namespace mlx_precise {

// ----------------------------------------------------------- float pairs ----
// (dd.h has the error-free transforms and +, -, *; fft_butterflies.h the
// r_add / r_mul / ... overloads for float, double and ff used below.)

// sqrt of a pair: s = sqrt(hi) corrected by one Newton step computed with
// the exact residual x - s*s (TwoProd). Relative error a few u^2 (u = 2^-24).
MP_INLINE ff dd_sqrt(ff x) {
  if (x.hi <= 0.0f)
    return ff{MP_ADDF(x.hi, 0.0f), 0.0f};
  float s = MP_SQRTF(x.hi);
  ff s2 = two_prod(s, s);
  float residual = MP_ADDF(MP_SUBF(MP_SUBF(x.hi, s2.hi), s2.lo), x.lo);
  float correction = MP_DIVF(residual, MP_MULF(2.0f, s));
  return fast_two_sum(s, correction);
}

// x / y: quotient of the leading parts, then one correction from the exact
// remainder x - y*q (DWTimesFP3). Relative error a few u^2.
MP_INLINE ff dd_div(ff x, ff y) {
  float q = MP_DIVF(x.hi, y.hi);
  ff remainder = dd_sub(x, dd_mul_f(y, q));
  float correction = MP_DIVF(remainder.hi, y.hi);
  return fast_two_sum(q, correction);
}

// One step of the dd dot product: acc + a*b with the product exact (TwoProd)
// and the accurate pair addition. Every dd dot product in mlx-precise is this
// step applied for k = 0, 1, ..., K-1 in order, starting from zero.
MP_INLINE ff dd_dot_step(ff acc, float a, float b) {
  return dd_add(acc, two_prod(a, b));
}

// addmm's output in dd: alpha*acc + beta*c (beta*c exact), rounded once.
MP_INLINE float dd_addmm_result(ff acc, float alpha, float beta, float c) {
  return dd_round(dd_add(dd_mul_f(acc, alpha), two_prod(beta, c)));
}

MP_INLINE float dd_scaled_result(ff acc, float alpha) {
  return dd_round(dd_mul_f(acc, alpha));
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
#endif

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
  if (has_weight)
    v = r_mul(v, r_from_float(s.shift, w));
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

#if MP_HAS_DOUBLE

// ------------------------------------------------- double-word in double ----

// A value hi + lo carried in two doubles (about 106 bits). Products of two
// float32 values are exact in double, so accumulating them with TwoSum leaves
// an error of order K * 2^-106 * sum|products|: far below any float32 rounding
// decision the fast path could not make.
struct dpair {
  double hi;
  double lo;
};

MP_INLINE dpair two_sum_d(double a, double b) {
  double s = a + b;
  double bb = s - a;
  double e = (a - (s - bb)) + (b - bb);
  return dpair{s, e};
}

// acc + p, with the rounding error of the leading sum kept (Neumaier-style
// compensated summation; the compensation is renormalised at the end).
MP_INLINE dpair dpair_add(dpair acc, double p) {
  dpair s = two_sum_d(acc.hi, p);
  return dpair{s.hi, acc.lo + s.lo};
}

MP_INLINE dpair dpair_normalize(dpair x) {
  return two_sum_d(x.hi, x.lo);
}

// f * x for a float32 f: f*hi exact as a pair through fma, f*lo rounded.
MP_INLINE dpair dpair_scale(dpair x, float f) {
  double fd = static_cast<double>(f);
  double p = fd * x.hi;
  double e = fma(fd, x.hi, -p);
  return two_sum_d(p, e + fd * x.lo);
}

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
MP_INLINE int64_t mp_double_bits(double x) {
  return __double_as_longlong(x);
}
MP_INLINE double mp_bits_double(int64_t bits) {
  return __longlong_as_double(bits);
}
#else
MP_INLINE int64_t mp_double_bits(double x) {
  int64_t bits;
  __builtin_memcpy(&bits, &x, sizeof bits);
  return bits;
}

MP_INLINE double mp_bits_double(int64_t bits) {
  double x;
  __builtin_memcpy(&x, &bits, sizeof x);
  return x;
}
#endif

// The float32 nearest to hi + lo (hi = fl(hi + lo)). Rounding hi to float32
// directly could round twice wrongly when hi sits on a float32 midpoint, so hi
// is first rounded to odd using lo (when lo != 0 and hi's last bit is even,
// step one double toward lo): 53 >= 24 + 2 bits make round-to-odd followed by
// round-to-nearest equal to a single rounding of hi + lo.
MP_INLINE float dpair_round(dpair x) {
  int64_t bits = mp_double_bits(x.hi);
  if (x.lo != 0.0 && (bits & 1) == 0 && x.hi != 0.0) {
    const bool away_from_zero = (x.lo > 0.0) == (x.hi > 0.0);
    bits += away_from_zero ? 1 : -1;
  }
  return static_cast<float>(mp_bits_double(bits));
}

// Exact-enough recomputation of one addmm output the float64 fast path could
// not certify: alpha * sum_k a(k) b(k) [+ beta * c]. The float64 products are
// exact; their sum is kept as double-word pairs in kExactDotLanes independent
// lanes (the TwoSum chain is latency-bound), lane l taking k = l, l + 4, ...
// a(k) and b(k) return the float32 inputs widened to double.
constexpr int kExactDotLanes = 4;

template <class RowA, class ColumnB>
MP_INLINE float exact_addmm_entry(
    RowA a,
    ColumnB b,
    int64_t k,
    float alpha,
    bool has_c,
    float beta,
    float c) {
  dpair lane[kExactDotLanes];
  for (int l = 0; l < kExactDotLanes; ++l)
    lane[l] = dpair{0.0, 0.0};
  int64_t p = 0;
  for (; p + kExactDotLanes <= k; p += kExactDotLanes)
    for (int l = 0; l < kExactDotLanes; ++l)
      lane[l] = dpair_add(lane[l], a(p + l) * b(p + l));
  for (; p < k; ++p)
    lane[0] = dpair_add(lane[0], a(p) * b(p));
  dpair acc = dpair_normalize(lane[0]);
  for (int l = 1; l < kExactDotLanes; ++l) {
    acc = dpair_add(acc, lane[l].hi);
    acc = dpair_add(acc, lane[l].lo);
  }
  dpair scaled = dpair_scale(dpair_normalize(acc), alpha);
  if (has_c) {
    const double bc = static_cast<double>(beta) * static_cast<double>(c);
    dpair s = two_sum_d(scaled.hi, bc);
    scaled = two_sum_d(s.hi, s.lo + scaled.lo);
  }
  return dpair_round(scaled);
}

// ----------------------------------------- certified rounding of float64 ----

constexpr double kUnitRoundoff64 = 1.1102230246251565e-16; // 2^-53

// gamma_n = n u / (1 - n u): the classic bound on the relative error of a sum
// of n terms of one sign (Higham, Accuracy and Stability, Lemma 3.1); for
// inner products with exact products, |computed - exact| <= gamma_n sum|a_k
// b_k| holds for any summation order, blocking or fma use.
MP_INLINE double gamma_bound(int64_t n) {
  double nu = static_cast<double>(n) * kUnitRoundoff64;
  return nu / (1.0 - nu);
}

// v approximates an exact real x with |v - x| <= err. When every real within
// err of v rounds to the same float32, that float is round(x): it is written
// to *out and true returned. v - err and v + err are widened by 4u|v| to cover
// their own rounding in double; conversion to float32 is a correct rounding
// and rounding is monotone, so equal ends prove the whole interval.
// *out is always written with float32(v), the answer when certified (it
// equals both ends then, and keeps the sign of a zero).
MP_INLINE bool certified_round(double v, double err, MP_THREAD float* out) {
  double margin = err + 4.0 * kUnitRoundoff64 * fabs(v);
  float lo = static_cast<float>(v - margin);
  float hi = static_cast<float>(v + margin);
  *out = static_cast<float>(v);
  return lo == hi; // false for NaN, which never compares equal
}

#endif // MP_HAS_DOUBLE

} // namespace mlx_precise
