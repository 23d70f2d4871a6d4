// Correctly rounded extended layer_norm, written once for the CPU and CUDA
// against portability.h (it needs double; Metal has none). The float64
// algorithm of strict_arith.h computes every output; then, per row:
//   1. a rigorous bound of each output's error (layer_norm_errors,
//      layer_norm_open) certifies it against half an ulp, as certify.h does
//      for rfft_conv and addmm;
//   2. the open outputs of a row are recomputed in double-word arithmetic
//      (about 106 bits) with the mean from the exact row sum
//      (layer_norm_wide_*), and certified against that computation's bound;
//   3. what is still open is rounded by exact big-integer comparisons
//      (exact_layer_norm.h).
// A certified output is the correctly rounded float32 whatever the order of
// the sums behind it, so backends that certify with this header agree bit
// for bit; an exact zero takes the sign layer_norm_exact_zero gives it at
// every stage.
//
// The float64 bound, with d_i = fl(x_i - shift), A1 = sum |d_i| / D,
// M2 = sum d_i^2 / D and u = 2^-53 (strict_arith.h: shifted two-pass mean
// with correction c, var = (sum d^2 - S1 c) / D, inv_std = 1/sqrt(var + eps)):
//   mean error    e1 = (k + 2) u A1 (+ u |c|)
//   var error     ev = (k + 6) u M2 + 3 e1 (|c| + e1)
//   inv_std       rel = (ev + 9u v) / (2 (v - 8u v - ev)) + 6u, v = var + eps
//                 (v read back from inv_std; 6u: sqrt and division)
//   numerator     |num^ - (x_i - mean)| <= u |d_i| + e1 + u |num^|
//   output        |y^ - y| <= |w| (|n^| rel + inv_std e_num + u |n^|)
//                 + u |n^ w| + u |y^|   (n = num * inv_std, y = n w + b)
// with k = layer_norm_sum_depth(D) (a term of a sum over kLayerNormLanes
// lanes meets about D / 8 roundings, not D) (gamma_n <= 1.01 n u for n u <
// 2^-10; times 1 + 2^-6 for second-order terms). The double-word stage has the
// same form with u = 2^-104 per operation (see layer_norm_wide_stats).
#pragma once

#include "exact_layer_norm.h"
#include "strict_arith.h"

#if MP_HAS_DOUBLE

namespace mlx_precise {

constexpr double kLayerNormSlack = 1.0 + 1.0 / 64.0;

// ------------------------------------------------------ float64 stage ----
// Bounds of a row's statistics: the mean's absolute error and inv_std's
// relative error (1e300 when var + eps is not safely positive: nothing
// certifies).
struct LayerNormErrors {
  double mean_err;
  double inv_rel;
};

// inv_std = 1/sqrt(var + eps)'s relative error from the bound ev on var's:
// var + eps read back from inv_std (to within a few u, counted), 6u for the
// square root and the division.
MP_INLINE double layer_norm_inv_std_error(double inv_std, double ev) {
  const double u = kUnitRoundoff64;
  const double v = 1.0 / (inv_std * inv_std);
  const double low = v * (1.0 - 8.0 * u) - ev;
  return low > 0.0
      ? ((ev + 9.0 * u * v) / (2.0 * low) + 6.0 * u) * kLayerNormSlack
      : 1e300;
}

// One more than the roundings a term of a float64 sum of D terms meets in
// strict_arith.h's lanes: at most ceil(D / 8) - 1 in its lane and 3 combining
// the lanes, and never more than D - 1 (gamma_(k-1) for the sum).
MP_INLINE double layer_norm_sum_depth(MP_INT64 dim) {
  const MP_INT64 lanes = (dim + kLayerNormLanes - 1) / kLayerNormLanes + 3;
  return static_cast<double>(lanes < dim ? lanes : dim);
}

// From the row's sums a1_sum = sum |d_i| and m2_sum = sum d_i^2 (in any
// order: their rounding is within the slack).
MP_INLINE LayerNormErrors layer_norm_errors(
    double a1_sum,
    double m2_sum,
    MP_INT64 dim,
    double correction,
    double inv_std) {
  const double u = kUnitRoundoff64, D = static_cast<double>(dim);
  const double k = layer_norm_sum_depth(dim);
  const double a1 = a1_sum / D * kLayerNormSlack;
  const double m2 = m2_sum / D * kLayerNormSlack;
  const double c = fabs(correction);
  const double e1 = ((k + 2.0) * u * a1 + u * c) * kLayerNormSlack;
  const double ev =
      ((k + 6.0) * u * m2 + 3.0 * e1 * (c + e1)) * kLayerNormSlack;
  return LayerNormErrors{e1, layer_norm_inv_std_error(inv_std, ev)};
}

// The bound on |y^ - y| (the header's "output" line), for either stage: u is
// the relative error of one operation.
MP_INLINE double layer_norm_output_error(
    double inv_rel,
    double inv_std,
    double e_num,
    double abs_n,
    double abs_w,
    double abs_y,
    double u) {
  return (abs_w *
              (abs_n * inv_rel + inv_std * (1.0 + inv_rel) * e_num +
               u * abs_n) +
          u * abs_n * abs_w + u * abs_y) *
      kLayerNormSlack;
}

// The float64 output and the terms its bound needs: d = x - shift, num =
// d - c, n = num inv_std, v = n wd + bd, exactly the operations of
// strict_arith.h's layer_norm_output (wd = 1, bd = 0 when absent).
struct LayerNormTerms {
  double d, num, n, wd, bd, v;
};

MP_INLINE LayerNormTerms layer_norm_terms(
    const LayerNormStats<double> s,
    float x,
    bool has_weight,
    float w,
    bool has_bias,
    float b) {
  LayerNormTerms t;
  t.d = static_cast<double>(x) - s.shift;
  t.num = t.d - s.correction;
  t.n = t.num * s.inv_std;
  t.wd = has_weight ? static_cast<double>(w) : 1.0;
  t.bd = has_bias ? static_cast<double>(b) : 0.0;
  t.v = has_weight ? t.n * t.wd : t.n;
  if (has_bias)
    t.v = t.v + t.bd;
  return t;
}

// The numerator's error bound: |num^ - (x - mean)| <= u |d| + e1 + u |num^|.
MP_INLINE double layer_norm_numerator_error(
    const LayerNormErrors e,
    const LayerNormTerms t) {
  return kUnitRoundoff64 * fabs(t.d) + e.mean_err +
      kUnitRoundoff64 * fabs(t.num);
}

// Whether the float64 output t.v stays open: not certified, v not NaN,
// weight and bias finite (an Inf or NaN there gives IEEE's value). A zero v
// certifies only when its sign is certain: the product n w is an exact +-0
// (w = 0 with num's sign certain, or num exactly 0), so that v = +-0 + b
// exactly. Branch-free, so that a CPU loop over a row vectorises.
MP_INLINE bool layer_norm_open(
    const LayerNormErrors e,
    double inv_std,
    const LayerNormTerms t) {
  const double u = kUnitRoundoff64;
  const double e_num = layer_norm_numerator_error(e, t);
  const double err = layer_norm_output_error(
      e.inv_rel, inv_std, e_num, fabs(t.n), fabs(t.wd), fabs(t.v), u);
  const double margin = err + 4.0 * u * fabs(t.v);
  const float lo = static_cast<float>(t.v - margin);
  const float hi = static_cast<float>(t.v + margin);
  const bool rounded_open =
      (MP_FLOAT_BITS(lo) != MP_FLOAT_BITS(hi)) | !(fabs(t.v) < 1e300);
  const bool zero_known =
      ((t.wd == 0.0) & ((fabs(t.num) > e_num) | (e_num == 0.0))) |
      ((t.num == 0.0) & (e_num == 0.0));
  const bool is_zero = t.v == 0.0;
  const bool open = (is_zero & !zero_known) | (!is_zero & rounded_open);
  return open & (t.v == t.v) & (fabs(t.wd) <= 3.5e38) & (fabs(t.bd) <= 3.5e38);
}

// ------------------------------------------------------- double words ----
// value = hi + lo with |lo| <= ulp(hi) / 2: the algorithms of dd.h (Joldes,
// Muller, Popescu, ACM TOMS 44(2), 2017; Muller, Rideau, ACM TOMS 48(1),
// 2022) on doubles, each with relative error at most kWordRoundoff = 4u^2
// (u = 2^-53): dw_add (AccurateDWPlusDW) 3u^2 + 13u^3, dw_add_d (DWPlusFP)
// 2u^2, dw_mul (DWTimesDW3) 4u^2, dw_mul_d (DWTimesFP3) 2u^2, dw_div_d
// (DWDivFP3) 3u^2. layer_norm's magnitudes stay far inside double's range
// (float32 data: 2^-298 ... 2^280), where the bounds hold.
constexpr double kWordRoundoff = 4.930380657631324e-32; // 2^-104

struct dword {
  double hi;
  double lo;
};

MP_INLINE dword dw_two_sum(double a, double b) {
  const double s = a + b;
  const double bb = s - a;
  return dword{s, (a - (s - bb)) + (b - bb)};
}

MP_INLINE dword dw_fast_two_sum(double a, double b) {
  const double s = a + b;
  return dword{s, b - (s - a)};
}

MP_INLINE dword dw_two_prod(double a, double b) {
  const double p = a * b;
  return dword{p, MP_FMA(a, b, -p)};
}

MP_INLINE dword dw_neg(dword x) {
  return dword{-x.hi, -x.lo};
}

MP_INLINE dword dw_add(dword x, dword y) {
  const dword s = dw_two_sum(x.hi, y.hi);
  const dword t = dw_two_sum(x.lo, y.lo);
  const dword v = dw_fast_two_sum(s.hi, s.lo + t.hi);
  return dw_fast_two_sum(v.hi, t.lo + v.lo);
}

MP_INLINE dword dw_add_d(dword x, double y) {
  const dword s = dw_two_sum(x.hi, y);
  return dw_fast_two_sum(s.hi, x.lo + s.lo);
}

MP_INLINE dword dw_mul(dword x, dword y) {
  const dword c = dw_two_prod(x.hi, y.hi);
  const double t = MP_FMA(x.hi, y.lo, x.lo * y.lo);
  return dw_fast_two_sum(c.hi, c.lo + MP_FMA(x.lo, y.hi, t));
}

MP_INLINE dword dw_mul_d(dword x, double y) {
  const dword c = dw_two_prod(x.hi, y);
  return dw_fast_two_sum(c.hi, MP_FMA(x.lo, y, c.lo));
}

MP_INLINE dword dw_div_d(dword x, double y) {
  const double th = x.hi / y;
  const dword p = dw_two_prod(th, y);
  return dw_fast_two_sum(th, (((x.hi - p.hi) - p.lo) + x.lo) / y);
}

// ------------------------------------------------- double-word stage ----
struct LayerNormWideStats {
  dword mean;
  dword inv_std;
  double mean_err; // |mean - exact mean|
  double inv_rel; // inv_std's relative error (1e300: nothing certifies)
};

// The row's mean from its exact sum: the sum's five leading float parts
// (each the float nearest to what is left: 120 bits) added in double words
// (|sum - S| <= 2.01 w |S|, w = kWordRoundoff), then divided by D (0.75 w):
// mean_err = 4 w |mean|. A sum beyond float's range is read out scaled by
// 2^-64, and a nonzero sum below 2^-60 (products of tiny cotangents and
// weights reach 2^-298) scaled up by 2^100 until it is not, exactly: float
// parts in the subnormal range would keep too few bits.
MP_INLINE dword layer_norm_wide_mean(ExactSum s, MP_INT64 dim) {
  double unit = 1.0;
  ExactSum probe = s;
  float rounded = exact_sum_round(probe);
  if (!is_finite_bits(MP_FLOAT_BITS(rounded))) {
    exact_sum_scale(s, 0x1p-64f);
    unit = 0x1p64;
  }
  for (int k = 0; k < 3 && fabs(rounded) < 0x1p-60f && exact_sum_sign(s) != 0;
       ++k) {
    exact_sum_scale(s, 0x1p100f);
    unit *= 0x1p-100;
    probe = s;
    rounded = exact_sum_round(probe);
  }
  dword sum{0.0, 0.0};
  for (int part = 0; part < 5; ++part) {
    ExactSum rest = s;
    const float p = exact_sum_round(rest);
    sum = dw_add_d(sum, static_cast<double>(p) * unit);
    exact_sum_add_product(s, -p, 1.0f);
  }
  return dw_div_d(sum, static_cast<double>(dim));
}

// One term of the sum of squares about the double-word mean (any order).
MP_INLINE dword layer_norm_wide_square(dword acc, float x, dword mean) {
  const dword d = dw_add_d(dw_neg(mean), static_cast<double>(x));
  return dw_add(acc, dw_mul(d, d));
}

// The statistics from the mean and the sum of squares about it, with their
// bounds. var = squares / D exceeds the variance about the exact mean by
// mean_err^2 at most, and the D + 3 roundings of each square, the sum and
// the division add (D + 3) w var. inv_std: 1/sqrt(v) in double, v = var +
// eps, then one Newton step in double words; its error a posteriori: with
// rho = 1 - v_exact r^2, r sqrt(v_exact) = sqrt(1 - rho) is off from 1 by at
// most |rho| / (1 + sqrt(1 - |rho|)) <= 0.6 |rho| for |rho| <= 1/4, and rho
// is the computed residual (off by 2.01 w |v r^2| and w |residual|) plus r^2
// (v - v_exact), |v - v_exact| <= ev + w v.
MP_INLINE LayerNormWideStats
layer_norm_wide_stats(dword mean, dword squares, MP_INT64 dim, double eps) {
  const double w = kWordRoundoff;
  const double e1 = 4.0 * w * fabs(mean.hi);
  const dword var = dw_div_d(squares, static_cast<double>(dim));
  const double ev = ((static_cast<double>(dim) + 3.0) * w * var.hi + e1 * e1) *
      kLayerNormSlack;
  const dword v = dw_add_d(var, eps);
  const double r0 = 1.0 / sqrt(v.hi);
  const dword step = dw_add_d(dw_neg(dw_mul_d(dw_mul_d(v, r0), r0)), 1.0);
  const dword r = dw_add_d(dw_mul_d(step, 0.5 * r0), r0);
  const dword q = dw_mul(dw_mul(r, r), v);
  const dword residual = dw_add_d(dw_neg(q), 1.0);
  const double rho = (fabs(residual.hi) * (1.0 + w) + 3.0 * w * fabs(q.hi) +
                      r.hi * r.hi * (ev + w * v.hi)) *
      kLayerNormSlack;
  const bool bounded = v.hi > 0.0 && rho <= 0.25; // false for NaN
  return LayerNormWideStats{
      mean, r, e1, bounded ? 0.6 * rho * kLayerNormSlack : 1e300};
}

// A row's double-word statistics, in one thread: its exact sum into `sum`,
// the mean from it, the squares about the mean (x(j): the row's elements,
// finite).
template <class Row>
MP_INLINE LayerNormWideStats
layer_norm_wide_row(Row x, MP_INT64 dim, double eps, MP_THREAD ExactSum& sum) {
  exact_sum_init(sum);
  for (MP_INT64 j = 0; j < dim; ++j)
    exact_sum_add_product(sum, x(j), 1.0f);
  const dword mean = layer_norm_wide_mean(sum, dim);
  dword squares{0.0, 0.0};
  for (MP_INT64 j = 0; j < dim; ++j)
    squares = layer_norm_wide_square(squares, x(j), mean);
  return layer_norm_wide_stats(mean, squares, dim, eps);
}

// Sign of y - m for the real y within err of the double word y: 1, -1, or 0
// when err and the test's own roundings leave it open (hi - m is exact as a
// TwoSum, then two roundings of u each).
MP_INLINE int dword_sign_against(dword y, double err, double m) {
  const dword t = dw_two_sum(y.hi, -m);
  const double rest = t.lo + y.lo;
  const double z = t.hi + rest;
  const double tol = (err + kUnitRoundoff64 * (fabs(rest) + fabs(z)) + 1e-300) *
      (1.0 + 1.0 / 1024.0);
  return z > tol ? 1 : (z < -tol ? -1 : 0);
}

// The midpoint between the floats of ordinals k and k + 1 (exact in double;
// the ordinal +-kFloatOrdinalTop stands for +-2^128).
MP_INLINE double float_ordinal_midpoint(MP_INT64 k) {
  const double big = 3.4028236692093846e38; // 2^128
  const double a = k == -kFloatOrdinalTop
      ? -big
      : static_cast<double>(float_from_ordinal(k));
  const double b = k + 1 == kFloatOrdinalTop
      ? big
      : static_cast<double>(float_from_ordinal(k + 1));
  return 0.5 * (a + b);
}

// certified_round for a double word: writes the correctly rounded float32 of
// every real within err of y and returns true, when they all round alike.
// The candidate is y.hi's float, moved by one when y lies beyond a midpoint;
// a result of +-0 also needs y's sign. Otherwise *out is left as float(y.hi)
// (the exact stage's first guess).
MP_INLINE bool
certified_round_dword(dword y, double err, MP_THREAD float* out) {
  *out = static_cast<float>(y.hi);
  if (!(fabs(y.hi) <= 1.7976931348623157e308))
    return false;
  const MP_INT64 top = kFloatOrdinalTop;
  MP_INT64 k = float_ordinal(*out);
  for (int step = 0; step < 3; ++step) {
    const int above =
        k >= top ? -1 : dword_sign_against(y, err, float_ordinal_midpoint(k));
    const int below = k <= -top
        ? 1
        : dword_sign_against(y, err, float_ordinal_midpoint(k - 1));
    if (above < 0 && below > 0) {
      if (k != 0) {
        *out = float_from_ordinal(k);
        return true;
      }
      const int sign = dword_sign_against(y, err, 0.0);
      if (sign != 0)
        *out = sign < 0 ? -0.0f : 0.0f;
      return sign != 0;
    }
    if (above > 0)
      ++k;
    else if (below < 0)
      --k;
    else
      return false;
  }
  return false;
}

// The output for element x (w = 1 without weight, b = -0 without bias) from
// the double-word statistics: writes it and returns true when certified.
// row_sum, the row's exact sum, decides the numerator's sign where the
// double words cannot (N = D x - S, exactly): an exact zero product (N = 0
// or w = 0) gives layer_norm_exact_zero's value.
MP_INLINE bool layer_norm_wide_output(
    const MP_THREAD LayerNormWideStats& s,
    MP_THREAD const ExactSum& row_sum,
    MP_INT64 dim,
    float x,
    float w,
    float b,
    MP_THREAD float* out) {
  const double u = kWordRoundoff;
  const dword num = dw_add_d(dw_neg(s.mean), static_cast<double>(x));
  const double e_num = (s.mean_err + u * fabs(num.hi)) * kLayerNormSlack;
  int num_sign = num.hi > e_num ? 1 : (num.hi < -e_num ? -1 : 2);
  if (num_sign == 2) {
    ExactSum n = row_sum; // S - D x
    exact_sum_add_product(n, x, -static_cast<float>(dim));
    num_sign = -exact_sum_sign(n);
  }
  if (num_sign == 0 || w == 0.0f) {
    *out = layer_norm_exact_zero(num_sign < 0, w, b);
    return true;
  }
  const dword n = dw_mul(num, s.inv_std);
  const dword y = dw_add_d(dw_mul_d(n, static_cast<double>(w)), b);
  const double err = layer_norm_output_error(
      s.inv_rel,
      s.inv_std.hi,
      e_num,
      fabs(n.hi),
      fabs(static_cast<double>(w)),
      fabs(y.hi),
      u);
  return certified_round_dword(y, err, out);
}

// ------------------------------------------------------ gradients ----
// Both gradients need the error of n = num inv_std (the output bound without
// w and b), linearly in |n^|: with |num^| <= (1 + u) |n^| / inv_std and |d^|
// <= (1 + u) |num^| + |c|, it is at most slope |n^| + offset with
//   slope  = inv_rel + u + 2.01 u (1 + inv_rel)
//   offset = inv_std (1 + inv_rel) (e1 + u |c|)
// (times the slack), so that a row's sums of it need no pass of their own.
struct NormalizedBound {
  double slope;
  double offset;
};

MP_INLINE NormalizedBound layer_norm_normalized_bound(
    const LayerNormErrors e,
    double inv_std,
    double correction) {
  const double u = kUnitRoundoff64;
  if (!(e.inv_rel < 1e300) || !(inv_std < 1e300)) // nothing certifies
    return NormalizedBound{1e300, 1e300};
  return NormalizedBound{
      (e.inv_rel + u + 2.01 * u * (1.0 + e.inv_rel)) * kLayerNormSlack,
      inv_std * (1.0 + e.inv_rel) * (e.mean_err + u * fabs(correction)) *
          kLayerNormSlack};
}

// grad x = inv_std ((gw - mean gw) - n mean(gw n)), gw = g w exact in double,
// as strict_arith.h's layer_norm_grad_x computes it from the lanes' means.
// The bound, with e_n the error of n and k = layer_norm_sum_depth(D):
//   mean gw    (k + 1) u sum |gw| / D + u |mean gw|
//   mean gw n  (sum |gw| e_n + (k + 1) u sum |gw n|) / D + u |mean gw n|
//   t          = (gw - mean gw) - n mean(gw n): the means' errors, |n| times
//              mean(gw n)'s, (|mean gw n| + its error) e_n, and u per operation
//   grad x     |t| inv_std rel + inv_std (1 + rel) err_t + u |grad x|
// What does not certify is rounded exactly (exact_grad_x_output).
struct GradXErrors {
  double mean_gw_err;
  double mean_gwn_err;
};

// From the row's sums of |gw| and |gw n| (any order) and n's bound nb.
MP_INLINE GradXErrors grad_x_errors(
    MP_INT64 dim,
    double abs_gw,
    double abs_gwn,
    const NormalizedBound nb,
    double mean_gw,
    double mean_gwn) {
  const double u = kUnitRoundoff64, D = static_cast<double>(dim);
  const double k = layer_norm_sum_depth(dim);
  const double gw_en = nb.slope * abs_gwn + nb.offset * abs_gw;
  return GradXErrors{
      ((k + 1.0) * u * abs_gw / D + u * fabs(mean_gw)) * kLayerNormSlack,
      ((gw_en + (k + 1.0) * u * abs_gwn) / D + u * fabs(mean_gwn)) *
          kLayerNormSlack};
}

// The bound on grad x = inv_std t, t = t1 - t2, t1 = gw - mean gw, t2 = n
// mean(gw n) (computed values; u per operation), either stage.
MP_INLINE double grad_x_error(
    const GradXErrors ge,
    double inv_rel,
    double inv_std,
    double n,
    double e_n,
    double mean_gwn,
    double t1,
    double t2,
    double t,
    double dx,
    double u) {
  const double err_t = ge.mean_gw_err + u * fabs(t1) +
      fabs(n) * ge.mean_gwn_err + (fabs(mean_gwn) + ge.mean_gwn_err) * e_n +
      u * fabs(t2) + u * fabs(t);
  return (fabs(t) * inv_std * inv_rel + inv_std * (1.0 + inv_rel) * err_t +
          u * fabs(dx)) *
      kLayerNormSlack;
}

// grad x from gw and n, rounded as layer_norm_grad_x rounds it (the same
// operations), into *out; returns whether it stays open. Branch-free, so that
// a CPU loop over a row vectorises.
MP_INLINE bool grad_x_open(
    const LayerNormErrors e,
    const NormalizedBound nb,
    const GradXErrors ge,
    double inv_std,
    double gw,
    double n,
    double mean_gw,
    double mean_gwn,
    MP_THREAD float* out) {
  const double e_n = nb.slope * fabs(n) + nb.offset;
  const double t1 = gw - mean_gw, t2 = n * mean_gwn, t = t1 - t2;
  const double dx = inv_std * t;
  return !certified_round(
      dx,
      grad_x_error(
          ge,
          e.inv_rel,
          inv_std,
          n,
          e_n,
          mean_gwn,
          t1,
          t2,
          t,
          dx,
          kUnitRoundoff64),
      out);
}

// Step 2 for grad x: the row's statistics in double words (layer_norm_wide_*),
// mean gw from the exact sum of the exact products g w, mean(gw n) in double
// words, with the bounds of grad_x_errors for u = kWordRoundoff.
struct GradXWide {
  LayerNormWideStats s;
  dword mean_gw;
  dword mean_gwn;
  GradXErrors ge;
};

// n = (x - mean) inv_std in double words and its bound.
MP_INLINE dword wide_normalized(
    const MP_THREAD LayerNormWideStats& s,
    float x,
    MP_THREAD double& e_n) {
  const dword num = dw_add_d(dw_neg(s.mean), static_cast<double>(x));
  const dword n = dw_mul(num, s.inv_std);
  e_n = layer_norm_output_error(
      s.inv_rel,
      s.inv_std.hi,
      (s.mean_err + kWordRoundoff * fabs(num.hi)) * kLayerNormSlack,
      fabs(n.hi),
      1.0,
      0.0,
      kWordRoundoff);
  return n;
}

// x(j), g(j), w(j): the row, its cotangent, the weight (1 without); finite.
template <class Row, class Grad, class Weight>
MP_INLINE GradXWide
grad_x_wide_row(Row x, Grad g, Weight w, MP_INT64 dim, double eps) {
  ExactSum sum, gw_sum;
  GradXWide r;
  r.s = layer_norm_wide_row(x, dim, eps, sum);
  exact_sum_init(gw_sum);
  for (MP_INT64 j = 0; j < dim; ++j)
    exact_sum_add_product(gw_sum, g(j), w(j));
  r.mean_gw = layer_norm_wide_mean(gw_sum, dim);
  dword gwn{0.0, 0.0};
  double abs_gw = 0.0, abs_gwn = 0.0, gw_en = 0.0;
  for (MP_INT64 j = 0; j < dim; ++j) {
    const double gw = static_cast<double>(g(j)) * static_cast<double>(w(j));
    double e_n;
    const dword n = wide_normalized(r.s, x(j), e_n);
    gwn = dw_add(gwn, dw_mul_d(n, gw));
    abs_gw += fabs(gw);
    abs_gwn += fabs(gw * n.hi);
    gw_en += fabs(gw) * e_n;
  }
  r.mean_gwn = dw_div_d(gwn, static_cast<double>(dim));
  const double u = kWordRoundoff, D = static_cast<double>(dim);
  // mean gw: from the exact sum (layer_norm_wide_mean's 4u).
  r.ge = GradXErrors{
      4.0 * u * fabs(r.mean_gw.hi),
      ((gw_en + (D + 1.0) * u * abs_gwn) / D + u * fabs(r.mean_gwn.hi)) *
          kLayerNormSlack};
  return r;
}

// grad x for element x (cotangent g, weight w) from the double words:
// writes it and returns true when certified.
MP_INLINE bool grad_x_wide_output(
    const MP_THREAD GradXWide& r,
    float x,
    float g,
    float w,
    MP_THREAD float* out) {
  double e_n;
  const dword n = wide_normalized(r.s, x, e_n);
  const double gw = static_cast<double>(g) * static_cast<double>(w);
  const dword t1 = dw_add_d(dw_neg(r.mean_gw), gw);
  const dword t2 = dw_mul(n, r.mean_gwn);
  const dword t = dw_add(t1, dw_neg(t2));
  const dword dx = dw_mul(t, r.s.inv_std);
  return certified_round_dword(
      dx,
      grad_x_error(
          r.ge,
          r.s.inv_rel,
          r.s.inv_std.hi,
          n.hi,
          e_n,
          r.mean_gwn.hi,
          t1.hi,
          t2.hi,
          t.hi,
          dx.hi,
          kWordRoundoff),
      out);
}

// ------------------------------------------------------ grad weight ----
// grad weight_j = sum over the rows r of g_rj n_rj, n the normalised input
// (strict_arith.h's layer_norm_normalized), summed in double in row order.
// Stage 1: n's error is at most slope |n^| + offset (NormalizedBound), each
// product g n^ rounds once and each addition errs by at most u |its result|
// (a running bound, Higham 3.3), so
//   |dw^ - dw| <= sum |g| (slope |n^| + offset) + u sum |g n^| + u sum |dw_r|.
// One row's term of stage 1's bound (the sum's own roundings aside).
MP_INLINE double
weight_grad_term_error(const NormalizedBound nb, double g, double n, double p) {
  return fabs(g) * (nb.slope * fabs(n) + nb.offset) + kUnitRoundoff64 * fabs(p);
}

// Stage 1's verdict from the sums of weight_grad_term_error and of |dw_r|
// (1 + 2^-10: their own rounding).
MP_INLINE bool weight_grad_certified(
    double dw,
    double term_errors,
    double mass,
    MP_THREAD float* out) {
  return certified_round(
      dw, (term_errors + kUnitRoundoff64 * mass) * (1.0 + 1.0 / 1024.0), out);
}

// Stage 2 for one column, in double words over the rows: n from row r's
// double-word statistics wide(r) (wide_normalized, error e_n), the products
// g n (w each) and the sum (w |its result| per addition). x(r), g(r): the
// column's entries, finite. Writes the output and returns true when
// certified.
template <class Wide, class XEntry, class GEntry>
MP_INLINE bool weight_grad_wide_output(
    Wide wide,
    XEntry x,
    GEntry g,
    MP_INT64 rows,
    MP_THREAD float* out) {
  const double w = kWordRoundoff;
  dword sum{0.0, 0.0};
  double err = 0.0, mass = 0.0;
  for (MP_INT64 r = 0; r < rows; ++r) {
    const double gr = static_cast<double>(g(r));
    double e_n;
    const dword n = wide_normalized(wide(r), x(r), e_n);
    const dword p = dw_mul_d(n, gr);
    sum = dw_add(sum, p);
    err += fabs(gr) * e_n + w * fabs(p.hi);
    mass += fabs(sum.hi);
  }
  return certified_round_dword(sum, (err + w * mass) * kLayerNormSlack, out);
}

// grad bias = the sum over the rows of the cotangent's column, correctly
// rounded: `sum` is that sum in double (rows in any order) and `mass` the sum
// of |partial sums| (each addition errs by at most u |its result|; 1 + 2^-10
// covers the mass's own rounding), certified; else the column summed exactly.
// g(r) returns row r's entry.
template <class Column>
MP_INLINE float
bias_grad_output(double sum, double mass, Column g, MP_INT64 rows) {
  float out;
  if (certified_round(sum, kUnitRoundoff64 * (1.0 + 1.0 / 1024.0) * mass, &out))
    return out;
  ExactSum s;
  exact_sum_init(s);
  for (MP_INT64 r = 0; r < rows; ++r)
    exact_sum_add_product(s, g(r), 1.0f);
  return exact_sum_round(s);
}

} // namespace mlx_precise

#endif // MP_HAS_DOUBLE
