// Certified layer_norm in float pairs, for the backends without double
// (Metal's extended and dd layer_norm): the forward and the gradients.
// Written once against portability.h: the Metal kernels (strict_kernels.metal:
// layer_norm_rows_dd, layer_norm_recompute_open, layer_norm_grad_rows_dd,
// layer_norm_grad_x_recompute_open, layer_norm_param_grads_dd,
// layer_norm_weight_grad_recompute_open) and their CPU emulation
// (mlx_precise._ext.testing.metal_certified_layer_norm,
// metal_certified_layer_norm_grad_x, metal_certified_layer_norm_grad_weight,
// metal_layer_norm_bias_grad) run this code.
//
// Per row (docs/certification.md, "Metal layer_norm", has the derivation):
//   1. the row is scaled by a power of two, x_s = x 2^-e with max |x_s| in
//      [1/2, 1), so that no pair value overflows and underflow only adds
//      absolute errors far below the statistics;
//   2. strict_arith.h's two-pass mean (shift, correction) and variance on x_s
//      in pairs, with layer_norm_certify.h's a priori bounds for the mean and
//      the variance, each pair operation counting as one rounding of
//      kPairOpError = 2^-45 (dd_add, dd_mul, dd_mul_f, and the division by
//      the count);
//   3. r = 1/sqrt(v), v = var 2^(2(e - g)) + eps 2^-2g, inv_std = r 2^-g
//      (g >= e chosen so that v <= 3), its relative error bounded a posteriori
//      from the residual 1 - v r^2 (the double-word stage of
//      layer_norm_certify.h in float pairs);
//   4. each output y = n w + b, n = num r 2^(e - g), as a pair times 2^t
//      (w's and b's exponents taken out), with its bound, certified by
//      certified_round_pair (round_pair.h);
//   5. what does not certify is rounded exactly by exact_layer_norm.h (big
//      integers, no double: eps arrives as ExactEps).
// Rows with a non-finite element give NaN, outputs with a non-finite weight
// or bias IEEE's value, as the CPU's float64 computation does; a constant row
// gives layer_norm_exact_zero's value (NaN for eps = 0: 0 / 0).
#pragma once

#include "addmm_pair.h"
#include "exact_layer_norm.h"
#include "round_pair.h"
#include "strict_arith.h"

namespace mlx_precise {

// 2^-45: one pair operation's relative error (dd_add 3u^2 + 13u^3, dd_mul 4u^2,
// dd_mul_f 2u^2, the division by the count 2^-45; u = 2^-24).
constexpr MP_CONSTANT float kPairOpError = 2.842170943040401e-14f;
// 2^-130: the absolute error that underflow can add to a row's statistics
// and numerators in units of 2^e (each of the few underflowing operations
// per element errs by < 2^-148; the statistics are means), far below a
// non-constant row's variance (>= 2^-78 in those units).
constexpr MP_CONSTANT float kPairUnderflowStats = 7.346839692639297e-40f;
// 2^-146: the absolute error underflow adds to an output in units of 2^t
// (the scaling of the product and of b, the bound's own products).
constexpr MP_CONSTANT float kPairUnderflowOutput = 1.1210387714598537e-44f;
// 1 + 2^-6: second-order terms and the bound's own float roundings.
constexpr MP_CONSTANT float kPairLayerNormSlack = 1.015625f;

// The row's sums run in kPairLanes lanes (lane l: elements l, l + 32, ... in
// order; Metal's SIMD-group), combined by a balanced tree: a term meets at
// most ceil(D / 32) + 5 roundings, which the bounds count.
constexpr MP_CONSTANT int kPairLanes = 32;

template <class T>
MP_INLINE T combine_pair_lanes(MP_THREAD const T* lane) {
  T level[kPairLanes / 2];
  for (int l = 0; l < kPairLanes / 2; ++l)
    level[l] = r_add(lane[2 * l], lane[2 * l + 1]);
  for (int n = kPairLanes / 4; n >= 1; n /= 2)
    for (int l = 0; l < n; ++l)
      level[l] = r_add(level[2 * l], level[2 * l + 1]);
  return level[0];
}

// combine_pair_lanes for pairs, adding |every sum it forms| to mass: each
// addition errs by at most u |its result| (dd_add), so u mass bounds the
// tree's part of a running error bound.
MP_INLINE ff
combine_pair_lanes_mass(MP_THREAD const ff* lane, MP_THREAD float& mass) {
  ff level[kPairLanes / 2];
  for (int l = 0; l < kPairLanes / 2; ++l) {
    level[l] = dd_add(lane[2 * l], lane[2 * l + 1]);
    mass = MP_ADDF(mass, abs_float(level[l].hi));
  }
  for (int n = kPairLanes / 4; n >= 1; n /= 2)
    for (int l = 0; l < n; ++l) {
      level[l] = dd_add(level[2 * l], level[2 * l + 1]);
      mass = MP_ADDF(mass, abs_float(level[l].hi));
    }
  return level[0];
}

// eps as the kernels receive it: exactly (the exact stage), and as a pair
// mantissa in [1, 2) (48 bits: within 2^-48 relative) times 2^exponent.
struct PairLayerNormEps {
  ExactEps exact;
  ff mantissa; // 0 for eps = 0
  int exponent;
};

#if MP_HAS_DOUBLE
// The host's side (Metal's strict_ops.cpp, the CPU emulation).
MP_INLINE PairLayerNormEps pair_layer_norm_eps(double eps) {
  PairLayerNormEps p{exact_eps(eps), ff{0.0f, 0.0f}, 0};
  int bits = 0; // the significand's length
  for (BigWord i = p.exact.integer; i != 0; i >>= 1)
    ++bits;
  if (bits > 0) {
    p.exponent = p.exact.exponent + bits - 1;
    p.mantissa = dd_from_double(
        MP_LDEXP(static_cast<double>(p.exact.integer), 1 - bits));
  }
  return p;
}
#endif

// The row's kind: its outputs certified one by one, all exact zeros (N = 0
// everywhere: a constant row, V > 0), or all NaN (a non-finite element, or a
// constant row with eps = 0).
enum PairRowKind : int { kPairRowCertify = 0, kPairRowZero, kPairRowNan };

// One pass over the row: its largest magnitude's bits, its extremes and
// whether it is finite (merge any order: max / min).
struct PairRowScan {
  unsigned int max_bits; // max |x| as bits (>= 0x7f800000: not finite)
  float lowest;
  float highest;
};

MP_INLINE PairRowScan pair_row_scan_init() {
  return PairRowScan{
      0u, MP_BITS_FLOAT(0x7f800000u), MP_BITS_FLOAT(0xff800000u)};
}

MP_INLINE PairRowScan pair_row_scan_step(PairRowScan s, float x) {
  const unsigned int bits = MP_FLOAT_BITS(x) & 0x7fffffffu;
  return PairRowScan{
      bits > s.max_bits ? bits : s.max_bits,
      x < s.lowest ? x : s.lowest,
      x > s.highest ? x : s.highest};
}

MP_INLINE PairRowScan pair_row_scan_merge(PairRowScan a, PairRowScan b) {
  return PairRowScan{
      a.max_bits > b.max_bits ? a.max_bits : b.max_bits,
      a.lowest < b.lowest ? a.lowest : b.lowest,
      a.highest > b.highest ? a.highest : b.highest};
}

// The row's scale exponent e: max |x| 2^-e in [1/2, 1) (0 for a zero row).
MP_INLINE int pair_row_exponent(PairRowScan s) {
  return s.max_bits == 0u ? 0 : magnitude_exponent(s.max_bits);
}

// x 2^-e: exact unless subnormal (then within 2^-149).
MP_INLINE float pair_scaled_element(float x, int e) {
  return MP_LDEXPF(x, -e);
}

// A lane's sums for the bounds of its second pass: sum |d|, and the masses
// (sums of |partial sums|) of its deviation and square sums.
struct PairDevMass {
  float abs_dev;
  float dev_mass;
  float sq_mass;
};

// One step of lane l's second pass: deviation d = x_s - shift, its square,
// and the bounds' sums.
MP_INLINE void pair_deviation_step(
    MP_THREAD ff& dev,
    MP_THREAD ff& sq,
    MP_THREAD PairDevMass& m,
    float x_s,
    ff shift) {
  const ff d = dd_sub(ff{x_s, 0.0f}, shift);
  dev = dd_add(dev, d);
  sq = dd_add(sq, dd_mul(d, d));
  m.abs_dev = MP_ADDF(m.abs_dev, abs_float(d.hi));
  m.dev_mass = MP_ADDF(m.dev_mass, abs_float(dev.hi));
  m.sq_mass = MP_ADDF(m.sq_mass, abs_float(sq.hi));
}

// A row's certified statistics (units: x_s = x 2^-e, inv_std = r 2^-g).
struct PairLayerNormRow {
  ff shift;
  ff correction;
  ff r;
  int e;
  int g;
  int kind; // PairRowKind
  float mean_err; // |shift + correction - mean(x_s)|
  float inv_rel; // r's relative error (inf: nothing certifies)
};

// One more than the roundings a term of a row's lane sums meets: ceil(D /
// 32) - 1 in its lane and 5 combining the lanes, never more than D - 1.
MP_INLINE float pair_lanes_depth(MP_INT64 dim) {
  const MP_INT64 lanes_depth = (dim + kPairLanes - 1) / kPairLanes + 5;
  return static_cast<float>(lanes_depth < dim ? lanes_depth : dim);
}

// The float sum of m nonnegative terms is >= (1 - u)^m >= 1 - m u of the real
// one: the factor that bounds the real sum from the float one (inf for
// m >= 2^21, where nothing certifies).
MP_INLINE float pair_sum_inflation(MP_INT64 m) {
  const float shrink =
      MP_SUBF(1.0f, MP_MULF(static_cast<float>(m), 1.1920928955078125e-07f));
  return shrink > 0.5f ? MP_DIVF(1.0f, shrink) : MP_BITS_FLOAT(0x7f800000u);
}

// The statistics from the scan and the lanes of the second pass (sum[l]: the
// first pass's sums of x_s; dev, sq, mass: pair_deviation_step's), and
// their bounds:
//   e1 = ((k + 2) u A1 + u |c|) slack + mu      (the mean; A1 = sum |d| / D)
//   ev = ((k + 6) u M2 + 3 e1 (|c| + e1)) slack + mu   (var; M2 = sum d^2 / D)
// (layer_norm_certify.h's float64 bounds with u = kPairOpError, k = the
// lanes' depth, min(ceil(D / 32) + 5, D), mu = kPairUnderflowStats), each
// replaced by its running form where that is smaller: the sum's (k - 1) u A1
// (resp. M2) by u Mass / D, Mass the sum of |every partial sum| in the lanes
// and the tree (each pair addition errs by at most u |its result|), so
//   e1 = ((3 u A1 + u Mass_dev / D) + u |c|) slack + mu,
//   ev = ((7 u M2 + u Mass_sq / D) + 3 e1 (|c| + e1)) slack + mu; then r and
// its a posteriori bound: with q = r^2 v and the residual 1 - q,
//   rho = |1 - q| (1 + 2^-22) + 3u |q| + r^2 (1 + 2^-22) ev_total
//   inv_rel = 0.6 rho slack   (rho <= 1/4; else nothing certifies)
// where ev_total bounds |v - (var + eps) 2^-2g| (ev scaled, eps's 2^-48 and
// the addition's u |v|).
MP_INLINE PairLayerNormRow pair_layer_norm_finish(
    PairRowScan scan,
    ff shift,
    MP_THREAD const ff* dev,
    MP_THREAD const ff* sq,
    MP_THREAD const PairDevMass* mass,
    MP_INT64 dim,
    PairLayerNormEps eps) {
  PairLayerNormRow row;
  const float inf = MP_BITS_FLOAT(0x7f800000u);
  const ff zero{0.0f, 0.0f};
  row.shift = shift;
  row.correction = zero;
  row.r = zero;
  row.e = pair_row_exponent(scan);
  row.g = row.e;
  row.mean_err = inf;
  row.inv_rel = inf;
  row.kind = kPairRowCertify;
  const bool eps_zero = eps.mantissa.hi == 0.0f;
  if (scan.max_bits >= 0x7f800000u) {
    row.kind = kPairRowNan;
    return row;
  }
  // A constant row has every N = D x - S = 0: n = 0 exactly, var = 0, and r
  // comes from eps alone (0 / 0 for eps = 0); the gradients need r.
  const bool constant_row = scan.lowest == scan.highest;
  if (constant_row && eps_zero) {
    row.kind = kPairRowNan;
    return row;
  }
  const float u = kPairOpError;
  ff var = zero;
  float e1 = 0.0f, ev = 0.0f;
  if (constant_row) {
    row.kind = kPairRowZero;
  } else {
    const ff count{static_cast<float>(dim), 0.0f};
    float dev_mass = 0.0f, sq_mass = 0.0f, abs_dev = 0.0f;
    for (int l = 0; l < kPairLanes; ++l) {
      dev_mass = MP_ADDF(dev_mass, mass[l].dev_mass);
      sq_mass = MP_ADDF(sq_mass, mass[l].sq_mass);
      abs_dev = MP_ADDF(abs_dev, mass[l].abs_dev);
    }
    const ff dev_sum = combine_pair_lanes_mass(dev, dev_mass);
    const ff c = dd_div(dev_sum, count);
    const ff sq_sum = combine_pair_lanes_mass(sq, sq_mass);
    var = dd_div(dd_sub(sq_sum, dd_mul(dev_sum, c)), count);
    if (var.hi < 0.0f)
      var = zero;
    row.correction = c;

    // Bounds of the mean and the variance (x_s units); the float sums of
    // nonnegative terms (at most D + 64 additions each) inflated.
    const float d = static_cast<float>(dim);
    const float k = pair_lanes_depth(dim);
    const float inflate = pair_sum_inflation(dim + 64);
    const float a1 = MP_MULF(MP_DIVF(abs_dev, d), inflate);
    const float m2 =
        MP_MULF(MP_DIVF(abs_float(sq_sum.hi), d), 1.0001220703125f);
    const float dev_part = MP_MULF(MP_DIVF(dev_mass, d), inflate);
    const float sq_part = MP_MULF(MP_DIVF(sq_mass, d), inflate);
    const float abs_c = MP_MULF(abs_float(c.hi), 1.0000002384185791f);
    const float mean_apriori = MP_MULF(MP_ADDF(k, 2.0f), a1);
    const float mean_running = MP_ADDF(MP_MULF(3.0f, a1), dev_part);
    e1 = MP_ADDF(
        MP_MULF(
            MP_ADDF(
                MP_MULF(
                    mean_apriori < mean_running ? mean_apriori : mean_running,
                    u),
                MP_MULF(u, abs_c)),
            kPairLayerNormSlack),
        kPairUnderflowStats);
    const float var_apriori = MP_MULF(MP_ADDF(k, 6.0f), m2);
    const float var_running = MP_ADDF(MP_MULF(7.0f, m2), sq_part);
    ev = MP_ADDF(
        MP_MULF(
            MP_ADDF(
                MP_MULF(
                    var_apriori < var_running ? var_apriori : var_running, u),
                MP_MULF(MP_MULF(3.0f, e1), MP_ADDF(abs_c, e1))),
            kPairLayerNormSlack),
        kPairUnderflowStats);
  }
  row.mean_err = e1;

  // v = var 2^(2(e - g)) + eps 2^-2g with g >= e, eps 2^-2g <= 2 (a constant
  // row: g from eps alone, v = eps 2^-2g in [1/2, 2)).
  const int eps_half = (eps.exponent + 1) >> 1; // ceil(exponent / 2)
  row.g = eps_zero || (eps_half <= row.e && !constant_row) ? row.e : eps_half;
  const int var_shift = 2 * (row.e - row.g);
  const int eps_shift = eps.exponent - 2 * row.g;
  const ff var_g{MP_LDEXPF(var.hi, var_shift), MP_LDEXPF(var.lo, var_shift)};
  const ff eps_g{
      MP_LDEXPF(eps.mantissa.hi, eps_shift),
      MP_LDEXPF(eps.mantissa.lo, eps_shift)};
  const ff v = dd_add(var_g, eps_g);
  // |v - exact v| <= ev 2^(2(e - g)) + 2^-48 eps_g + u |v| + underflow.
  const float ev_total = MP_ADDF(
      MP_ADDF(
          MP_LDEXPF(ev, var_shift),
          MP_MULF(abs_float(eps_g.hi), 3.552713678800501e-15f)),
      MP_ADDF(MP_MULF(u, abs_float(v.hi)), kPairUnderflowStats));
  if (!(v.hi > 0.0f))
    return row;
  const ff r = dd_div(ff{1.0f, 0.0f}, dd_sqrt(v));
  const ff q = dd_mul(dd_mul(r, r), v);
  const ff residual = dd_sub(ff{1.0f, 0.0f}, q);
  const float r2 = MP_MULF(MP_MULF(r.hi, r.hi), 1.0000002384185791f);
  const float rho = MP_MULF(
      MP_ADDF(
          MP_ADDF(
              MP_MULF(abs_float(residual.hi), 1.0000002384185791f),
              MP_MULF(MP_MULF(3.0f, u), abs_float(q.hi))),
          MP_MULF(r2, ev_total)),
      kPairLayerNormSlack);
  row.r = r;
  if (rho <= 0.25f) // false for NaN
    row.inv_rel = MP_MULF(MP_MULF(0.6f, rho), kPairLayerNormSlack);
  return row;
}

// Element x's numerator num = (x_s - shift) - c and z = num r (n = z 2^(e -
// g)), with their bounds:
//   |num - (x_s - mean)| <= e_num = u (|d| + |num|) + e1 + mu
//   |z - n_s| <= e_z = |z| rel + r (1 + rel) e_num + u |z|
// (n_s = n 2^(g - e) exactly); a constant row's are 0 exactly.
struct PairNormalized {
  ff num;
  ff z;
  float e_num;
  float e_z;
};

MP_INLINE PairNormalized
pair_normalized(const MP_THREAD PairLayerNormRow& row, float x) {
  PairNormalized n{ff{0.0f, 0.0f}, ff{0.0f, 0.0f}, 0.0f, 0.0f};
  if (row.kind == kPairRowZero)
    return n;
  const float u = kPairOpError;
  const float x_s = pair_scaled_element(x, row.e);
  const ff d = dd_sub(ff{x_s, 0.0f}, row.shift);
  n.num = dd_sub(d, row.correction);
  n.e_num = MP_ADDF(
      MP_MULF(
          MP_ADDF(
              MP_MULF(u, MP_ADDF(abs_float(d.hi), abs_float(n.num.hi))),
              row.mean_err),
          1.0000002384185791f),
      kPairUnderflowStats);
  n.z = dd_mul(n.num, row.r);
  const float rel = row.inv_rel;
  n.e_z = MP_ADDF(
      MP_ADDF(
          MP_MULF(abs_float(n.z.hi), rel),
          MP_MULF(MP_MULF(abs_float(row.r.hi), MP_ADDF(1.0f, rel)), n.e_num)),
      MP_MULF(u, abs_float(n.z.hi)));
  return n;
}

// One output, y = v 2^shift within err 2^shift, or `value` when it is known
// without rounding (fixed: exact zeros, IEEE's values for non-finite
// operands).
struct PairLayerNormOutput {
  ff v;
  float err;
  int shift;
  bool fixed;
  float value;
};

// The output for element x (w = 1 without weight, b = -0 without bias):
//   num = (x_s - shift) - c, |num - (x_s - mean)| <= e_num = u |d| + e1 +
//   u |num| + mu;
//   z = num r, |z - n_s| <= |z| rel + r (1 + rel) e_num + u |z|  (n = n_s
//   2^(e - g));
//   p = z w_m (w = w_m 2^kw, |w_m| in [1/2, 1)), u |p| more;
//   y 2^-t = p 2^(e - g + kw - t) + b 2^-t, t making both terms < 1 (the
//   larger >= 1/2), u |y| more, and underflow in both scalings.
MP_INLINE PairLayerNormOutput pair_layer_norm_output(
    const MP_THREAD PairLayerNormRow& row,
    float x,
    float w,
    float b) {
  PairLayerNormOutput o{ff{0.0f, 0.0f}, 0.0f, 0, true, 0.0f};
  const float u = kPairOpError;
  if (row.kind == kPairRowNan) {
    o.value = MP_BITS_FLOAT(0x7fc00000u);
    return o;
  }
  const bool finite_wb =
      is_finite_bits(MP_FLOAT_BITS(w)) && is_finite_bits(MP_FLOAT_BITS(b));
  if (row.kind == kPairRowZero) { // n = +0: IEEE's +0 w + b
    o.value = finite_wb ? layer_norm_exact_zero(false, w, b)
                        : MP_ADDF(MP_MULF(0.0f, w), b);
    return o;
  }
  const PairNormalized n = pair_normalized(row, x);
  const ff num = n.num;
  const float e_num = n.e_num;
  const ff z = n.z;
  if (!finite_wb) {
    // IEEE's value: +-inf or NaN, as the float64 computation gives.
    o.value = MP_ADDF(MP_MULF(z.hi, w), b);
    return o;
  }
  if (w == 0.0f) { // n w = +-0 exactly: its sign is num's times w's
    o.value = layer_norm_exact_zero(num.hi < 0.0f, w, b);
    o.fixed = abs_float(num.hi) > MP_MULF(e_num, 1.0000004768371582f);
    o.v = ff{b, 0.0f};
    o.err = MP_BITS_FLOAT(0x7f800000u);
    return o;
  }
  o.fixed = false;
  const float e_z = n.e_z;
  const int kw = magnitude_exponent(MP_FLOAT_BITS(w) & 0x7fffffffu);
  const float w_m = MP_LDEXPF(w, -kw);
  const ff p = dd_mul_f(z, w_m);
  const float e_p = MP_MULF(
      MP_ADDF(MP_MULF(e_z, abs_float(w_m)), MP_MULF(u, abs_float(p.hi))),
      kPairLayerNormSlack);
  const int s = row.e - row.g + kw;
  const unsigned int p_bits = MP_FLOAT_BITS(p.hi) & 0x7fffffffu;
  const unsigned int b_bits = MP_FLOAT_BITS(b) & 0x7fffffffu;
  int t = s + (p_bits == 0u ? -200 : magnitude_exponent(p_bits));
  if (b_bits != 0u && magnitude_exponent(b_bits) > t)
    t = magnitude_exponent(b_bits);
  const ff p_t{MP_LDEXPF(p.hi, s - t), MP_LDEXPF(p.lo, s - t)};
  const float b_t = MP_LDEXPF(b, -t);
  o.v = dd_add(p_t, ff{b_t, 0.0f});
  o.shift = t;
  o.err = MP_ADDF(
      MP_MULF(
          MP_ADDF(MP_LDEXPF(e_p, s - t), MP_MULF(u, abs_float(o.v.hi))),
          kPairLayerNormSlack),
      kPairUnderflowOutput);
  o.value = round_pair_scaled(o.v, t);
  return o;
}

// A row's statistics in one thread, the lanes of the Metal kernel in turn: the
// CPU emulation's, and a model of the SIMD-group's work. x(i) returns element
// i.
template <class Row>
MP_INLINE PairLayerNormRow
pair_layer_norm_row(Row x, MP_INT64 dim, PairLayerNormEps eps) {
  PairRowScan scan = pair_row_scan_init();
  for (MP_INT64 i = 0; i < dim; ++i)
    scan = pair_row_scan_step(scan, x(i));
  const int e = pair_row_exponent(scan);
  ff sum[kPairLanes], dev[kPairLanes], sq[kPairLanes];
  PairDevMass mass[kPairLanes];
  for (int l = 0; l < kPairLanes; ++l) {
    sum[l] = dev[l] = sq[l] = ff{0.0f, 0.0f};
    mass[l] = PairDevMass{0.0f, 0.0f, 0.0f};
  }
  for (MP_INT64 i = 0; i < dim; ++i)
    sum[i % kPairLanes] =
        dd_add(sum[i % kPairLanes], ff{pair_scaled_element(x(i), e), 0.0f});
  const ff shift =
      dd_div(combine_pair_lanes(sum), ff{static_cast<float>(dim), 0.0f});
  for (MP_INT64 i = 0; i < dim; ++i) {
    const int l = static_cast<int>(i % kPairLanes);
    pair_deviation_step(
        dev[l], sq[l], mass[l], pair_scaled_element(x(i), e), shift);
  }
  return pair_layer_norm_finish(scan, shift, dev, sq, mass, dim, eps);
}

// Writes the output (certified, fixed, or the pair's rounding as the exact
// stage's first guess) and returns whether it is decided. err_scale
// multiplies the bound (1 on Metal; tests shrink it).
MP_INLINE bool pair_layer_norm_round(
    PairLayerNormOutput o,
    float err_scale,
    MP_THREAD float* out) {
  if (o.fixed) {
    *out = o.value;
    return true;
  }
  return certified_round_pair(o.v, MP_MULF(o.err, err_scale), o.shift, out);
}

// ------------------------------------------------------------ grad x ----
// grad x = inv_std ((gw - mean gw) - n mean(gw n)), gw = g w (w = 1 without
// weight), in units of powers of two: gw = gw_s 2^E with E the row's largest
// exp(g) + exp(w) over nonzero products (|gw_s| < 1, the largest >= 1/4), n =
// z 2^(e - g) (pair_normalized), inv_std = r 2^-g. The lanes sum
//   m1 = sum gw_s / D,  m2 = sum gw_s z / D   (32 lanes, a balanced tree),
// and each output is
//   t1 = gw_s - m1,  t2 = z m2 (times 2^(2(e - g)) <= 1),
//   t = t1 - t2 2^(2(e - g)) at 2^T (T the larger exponent of the two terms),
//   dx = t r 2^(E + T - g),
// with layer_norm_certify.h's bound (grad_x_errors, grad_x_error) in pairs,
// u = kPairOpError, k = pair_lanes_depth(D), mu = kPairGradUnderflow:
//   e_m1 = ((k + 1) u A + u |m1|) slack + mu       A = sum |gw_s| / D
//   e_m2 = ((B + (k + 1) u P) / D + u |m2|) slack + mu   P = sum |gw_s z|,
//        B = sum (|gw_s| e_z + 2^-148 (|z| + e_z) + 2^-147)  (z's error, gw_s's
//        and the product's underflow)
//   e_t  = (e_m1 + 2^-148 + u |t1| + (|z| e_m2 + (|m2| + e_m2) e_z + u |t2|)
//          2^(2(e - g))) 2^-T + u |t| + 2^-146   (the scalings' underflow)
//   err  = (|t| r rel + r (1 + rel) e_t + u |dx|) slack + 2^-146.
// A row whose products g w are all zero gives +0 (as every exact zero does,
// here and on the CPU). Rows with a non-finite x, g or w give NaN.

// 2^-140: the absolute error, in units of 2^E, that underflow adds to the
// means (gw_s's own underflow, 2^-148 per element, is counted where it
// meets z) and to the bound's own float operations.
constexpr MP_CONSTANT float kPairGradUnderflow = 7.174648137343064e-43f;
// 2^-148, 2^-147, 2^-146.
constexpr MP_CONSTANT float kPairTiny148 = 2.802596928649634e-45f;
constexpr MP_CONSTANT float kPairTiny147 = 5.605193857299268e-45f;
constexpr MP_CONSTANT float kPairTiny146 = 1.1210387714598537e-44f;

// A row's cotangent scan (merge in any order): E, and whether every g and w
// is finite.
constexpr MP_CONSTANT int kPairNoExponent = -1000;

struct PairGradScan {
  int exponent; // E; kPairNoExponent when every product g w is zero
  int finite;
};

MP_INLINE PairGradScan pair_grad_scan_init() {
  return PairGradScan{kPairNoExponent, 1};
}

MP_INLINE PairGradScan pair_grad_scan_step(PairGradScan s, float g, float w) {
  const unsigned int g_bits = MP_FLOAT_BITS(g) & 0x7fffffffu;
  const unsigned int w_bits = MP_FLOAT_BITS(w) & 0x7fffffffu;
  if (!is_finite_bits(g_bits) || !is_finite_bits(w_bits))
    s.finite = 0;
  else if (g_bits != 0u && w_bits != 0u) {
    const int e = magnitude_exponent(g_bits) + magnitude_exponent(w_bits);
    s.exponent = e > s.exponent ? e : s.exponent;
  }
  return s;
}

MP_INLINE PairGradScan pair_grad_scan_merge(PairGradScan a, PairGradScan b) {
  return PairGradScan{
      a.exponent > b.exponent ? a.exponent : b.exponent, a.finite & b.finite};
}

// gw_s = g w 2^-E: g scaled into [1/2, 1) exactly, w by the rest (exact
// unless it underflows, < 2^-150 then), their exact product (residual lost
// below 2^-150 when it underflows): within 2^-148 of g w 2^-E.
MP_INLINE ff pair_scaled_gw(float g, float w, int exponent) {
  const unsigned int g_bits = MP_FLOAT_BITS(g) & 0x7fffffffu;
  if (g_bits == 0u || w == 0.0f)
    return ff{0.0f, 0.0f};
  const int a = magnitude_exponent(g_bits);
  return two_prod(MP_LDEXPF(g, -a), MP_LDEXPF(w, a - exponent));
}

// One lane's sums (lane l: elements l, l + 32, ... in order).
struct PairGradXLane {
  ff gw;
  ff gwz;
  float abs_gw;
  float abs_gwz;
  float gwz_err;
  float gw_mass; // sums of |partial sums| (running bounds)
  float gwz_mass;
};

MP_INLINE PairGradXLane pair_grad_x_lane_init() {
  return PairGradXLane{
      ff{0.0f, 0.0f}, ff{0.0f, 0.0f}, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
}

MP_INLINE void pair_grad_x_step(
    MP_THREAD PairGradXLane& lane,
    const MP_THREAD PairLayerNormRow& row,
    float x,
    ff gw) {
  const PairNormalized n = pair_normalized(row, x);
  const ff p = dd_mul(gw, n.z);
  lane.gw = dd_add(lane.gw, gw);
  lane.gwz = dd_add(lane.gwz, p);
  lane.abs_gw = MP_ADDF(lane.abs_gw, abs_float(gw.hi));
  lane.abs_gwz = MP_ADDF(lane.abs_gwz, abs_float(p.hi));
  lane.gw_mass = MP_ADDF(lane.gw_mass, abs_float(lane.gw.hi));
  lane.gwz_mass = MP_ADDF(lane.gwz_mass, abs_float(lane.gwz.hi));
  lane.gwz_err = MP_ADDF(
      lane.gwz_err,
      MP_ADDF(
          MP_ADDF(
              MP_MULF(abs_float(gw.hi), n.e_z),
              MP_MULF(kPairTiny148, MP_ADDF(abs_float(n.z.hi), n.e_z))),
          kPairTiny147));
}

// A row's grad x state: the means and their bounds.
enum PairGradKind : int { kPairGradCertify = 0, kPairGradZero, kPairGradNan };

struct PairGradX {
  ff m1;
  ff m2;
  float e_m1;
  float e_m2;
  int exponent; // E
  int kind; // PairGradKind
};

MP_INLINE PairGradX pair_grad_x_finish(
    const MP_THREAD PairLayerNormRow& row,
    PairGradScan scan,
    MP_THREAD const PairGradXLane* lanes,
    MP_INT64 dim) {
  PairGradX gx{ff{0.0f, 0.0f}, ff{0.0f, 0.0f}, 0.0f, 0.0f, scan.exponent, 0};
  if (row.kind == kPairRowNan || scan.finite == 0) {
    gx.kind = kPairGradNan;
    return gx;
  }
  if (scan.exponent == kPairNoExponent) {
    gx.kind = kPairGradZero;
    return gx;
  }
  gx.kind = kPairGradCertify;
  ff gw[kPairLanes], gwz[kPairLanes];
  float abs_gw = 0.0f, abs_gwz = 0.0f, gwz_err = 0.0f, gw_mass = 0.0f,
        gwz_mass = 0.0f;
  for (int l = 0; l < kPairLanes; ++l) {
    gw[l] = lanes[l].gw;
    gwz[l] = lanes[l].gwz;
    abs_gw = MP_ADDF(abs_gw, lanes[l].abs_gw);
    abs_gwz = MP_ADDF(abs_gwz, lanes[l].abs_gwz);
    gwz_err = MP_ADDF(gwz_err, lanes[l].gwz_err);
    gw_mass = MP_ADDF(gw_mass, lanes[l].gw_mass);
    gwz_mass = MP_ADDF(gwz_mass, lanes[l].gwz_mass);
  }
  const float u = kPairOpError;
  const ff count{static_cast<float>(dim), 0.0f};
  const float d = static_cast<float>(dim);
  const float k1 = MP_ADDF(pair_lanes_depth(dim), 1.0f);
  gx.m1 = dd_div(combine_pair_lanes_mass(gw, gw_mass), count);
  gx.m2 = dd_div(combine_pair_lanes_mass(gwz, gwz_mass), count);
  // Float sums of nonnegative terms (at most D + 64 additions each),
  // inflated; each sum's (k - 1) u (sum of |terms|) part of the a priori
  // bound replaced by the running u Mass where that is smaller.
  const float inflate = pair_sum_inflation(dim + 64);
  const float a = MP_MULF(abs_gw, inflate);
  const float p = MP_MULF(abs_gwz, inflate);
  const float b = MP_MULF(gwz_err, inflate);
  const float a_apriori = MP_MULF(k1, a);
  const float a_running = MP_ADDF(MP_MULF(2.0f, a), MP_MULF(gw_mass, inflate));
  const float p_apriori = MP_MULF(k1, p);
  const float p_running = MP_ADDF(MP_MULF(2.0f, p), MP_MULF(gwz_mass, inflate));
  gx.e_m1 = MP_ADDF(
      MP_MULF(
          MP_ADDF(
              MP_MULF(
                  MP_DIVF(a_apriori < a_running ? a_apriori : a_running, d), u),
              MP_MULF(u, abs_float(gx.m1.hi))),
          kPairLayerNormSlack),
      kPairGradUnderflow);
  gx.e_m2 = MP_ADDF(
      MP_MULF(
          MP_ADDF(
              MP_DIVF(
                  MP_ADDF(
                      b,
                      MP_MULF(
                          u, p_apriori < p_running ? p_apriori : p_running)),
                  d),
              MP_MULF(u, abs_float(gx.m2.hi))),
          kPairLayerNormSlack),
      kPairGradUnderflow);
  return gx;
}

// Element x's grad x (cotangent g, weight w; w = 1 without) as a pair times
// 2^shift with its bound, or fixed (NaN rows, zero rows).
MP_INLINE PairLayerNormOutput pair_grad_x_output(
    const MP_THREAD PairLayerNormRow& row,
    const MP_THREAD PairGradX& gx,
    float x,
    float g,
    float w) {
  PairLayerNormOutput o{ff{0.0f, 0.0f}, 0.0f, 0, true, 0.0f};
  if (gx.kind == kPairGradNan) {
    o.value = MP_BITS_FLOAT(0x7fc00000u);
    return o;
  }
  if (gx.kind == kPairGradZero)
    return o;
  o.fixed = false;
  const PairNormalized n = pair_normalized(row, x);
  const float u = kPairOpError;
  const ff t1 = dd_sub(pair_scaled_gw(g, w, gx.exponent), gx.m1);
  const ff t2 = dd_mul(n.z, gx.m2);
  const int s2 = 2 * (row.e - row.g);
  const unsigned int t1_bits = MP_FLOAT_BITS(t1.hi) & 0x7fffffffu;
  const unsigned int t2_bits = MP_FLOAT_BITS(t2.hi) & 0x7fffffffu;
  int t = t1_bits == 0u ? kPairNoExponent : magnitude_exponent(t1_bits);
  if (t2_bits != 0u && magnitude_exponent(t2_bits) + s2 > t)
    t = magnitude_exponent(t2_bits) + s2;
  if (t == kPairNoExponent)
    t = 0;
  const ff t1_t{MP_LDEXPF(t1.hi, -t), MP_LDEXPF(t1.lo, -t)};
  const ff t2_t{MP_LDEXPF(t2.hi, s2 - t), MP_LDEXPF(t2.lo, s2 - t)};
  const ff tt = dd_sub(t1_t, t2_t);
  const float e_t1 =
      MP_ADDF(MP_ADDF(gx.e_m1, kPairTiny148), MP_MULF(u, abs_float(t1.hi)));
  const float e_t2 = MP_ADDF(
      MP_ADDF(
          MP_MULF(abs_float(n.z.hi), gx.e_m2),
          MP_MULF(MP_ADDF(abs_float(gx.m2.hi), gx.e_m2), n.e_z)),
      MP_MULF(u, abs_float(t2.hi)));
  const float e_t = MP_ADDF(
      MP_ADDF(
          MP_MULF(
              MP_ADDF(MP_LDEXPF(e_t1, -t), MP_LDEXPF(e_t2, s2 - t)),
              kPairLayerNormSlack),
          MP_MULF(u, abs_float(tt.hi))),
      kPairTiny146);
  o.v = dd_mul(tt, row.r);
  o.shift = gx.exponent + t - row.g;
  const float r = abs_float(row.r.hi), rel = row.inv_rel;
  o.err = MP_ADDF(
      MP_MULF(
          MP_ADDF(
              MP_ADDF(
                  MP_MULF(MP_MULF(abs_float(tt.hi), r), rel),
                  MP_MULF(MP_MULF(r, MP_ADDF(1.0f, rel)), e_t)),
              MP_MULF(u, abs_float(o.v.hi))),
          kPairLayerNormSlack),
      kPairTiny146);
  o.value = round_pair_scaled(o.v, o.shift);
  return o;
}

// A row's grad x state in one thread, the lanes of the Metal kernel in turn:
// the CPU emulation's. x(i), g(i), w(i): element i of the row, its cotangent
// and the weight (1 without).
template <class Row, class Grad, class Weight>
MP_INLINE PairGradX pair_grad_x_row(
    const MP_THREAD PairLayerNormRow& row,
    Row x,
    Grad g,
    Weight w,
    MP_INT64 dim) {
  PairGradScan scan = pair_grad_scan_init();
  for (MP_INT64 i = 0; i < dim; ++i)
    scan = pair_grad_scan_step(scan, g(i), w(i));
  PairGradXLane lanes[kPairLanes];
  for (int l = 0; l < kPairLanes; ++l)
    lanes[l] = pair_grad_x_lane_init();
  if (scan.finite != 0 && scan.exponent != kPairNoExponent)
    for (MP_INT64 i = 0; i < dim; ++i)
      pair_grad_x_step(
          lanes[i % kPairLanes],
          row,
          x(i),
          pair_scaled_gw(g(i), w(i), scan.exponent));
  return pair_grad_x_finish(row, scan, lanes, dim);
}

// ------------------------------------------------------- grad weight ----
// grad weight_j = sum over the rows r of g_rj n_rj, one column at a time,
// rows in order. Row r's term is g n = (z g_m) 2^(a + e_r - g_r) (n = z
// 2^(e_r - g_r) from the row's certified statistics, g = g_m 2^a with g_m in
// [1/2, 1) exactly), so the column is summed at its own scale F, the largest
// a + e_r - g_r over its nonzero terms (a first pass): p = z g_m
// (dd_mul_f) scaled by 2^(a + e_r - g_r - F) <= 1 (|z| <= max(sqrt(D), 3)
// (1 + 2^-10): the sum cannot overflow), added in pairs with addmm's running
// bound (each addition errs by at most u |its result|):
//   |dw_s - dw 2^-F| <= sum_r [(|g_m| e_z + u |p|) 2^(a + e_r - g_r - F) +
//                      2^-146] + u sum_r |dw_r|
// (2^-146 per term: p's and the scaling's underflow and the bound's own). The
// bound's two sums of nonnegative floats are pairs too (each addition within
// 2^-45 of its result), so no row count makes them useless. A column whose
// terms are all zero (g = 0, or a constant row: n = 0) is +0, exactly; one fed
// by a non-finite g or a row with a non-finite x is NaN (the CPU: its float64
// sum's inf or NaN). What does not certify is rounded by the CPU's exact
// stages (exact_weight_grad_output).

// A column's scale: F (kPairNoExponent while every term is zero) and whether
// a non-finite entry feeds it.
struct PairWeightGradScale {
  int exponent;
  int finite;
};

MP_INLINE PairWeightGradScale pair_weight_grad_scale_init() {
  return PairWeightGradScale{kPairNoExponent, 1};
}

MP_INLINE PairWeightGradScale pair_weight_grad_scale_step(
    PairWeightGradScale s,
    const MP_THREAD PairLayerNormRow& row,
    float g) {
  const unsigned int g_bits = MP_FLOAT_BITS(g) & 0x7fffffffu;
  if (row.kind == kPairRowNan || !is_finite_bits(g_bits))
    s.finite = 0;
  else if (g_bits != 0u && row.kind == kPairRowCertify) {
    const int e = magnitude_exponent(g_bits) + row.e - row.g;
    s.exponent = e > s.exponent ? e : s.exponent;
  }
  return s;
}

// The running sum and its bound's two sums (in units of 2^F).
struct PairWeightGradSum {
  ff sum;
  ff err;
  ff mass;
};

MP_INLINE PairWeightGradSum pair_weight_grad_sum_init() {
  const ff zero{0.0f, 0.0f};
  return PairWeightGradSum{zero, zero, zero};
}

MP_INLINE void pair_weight_grad_step(
    MP_THREAD PairWeightGradSum& s,
    const MP_THREAD PairLayerNormRow& row,
    int exponent,
    float x,
    float g) {
  const unsigned int g_bits = MP_FLOAT_BITS(g) & 0x7fffffffu;
  if (g_bits == 0u || row.kind != kPairRowCertify)
    return; // an exact zero term
  const float u = kPairOpError;
  const int a = magnitude_exponent(g_bits);
  const float g_m = MP_LDEXPF(g, -a);
  const PairNormalized n = pair_normalized(row, x);
  const ff p = dd_mul_f(n.z, g_m);
  const int shift = a + row.e - row.g - exponent;
  s.sum = dd_add(s.sum, ff{MP_LDEXPF(p.hi, shift), MP_LDEXPF(p.lo, shift)});
  const float term_err = MP_ADDF(
      MP_LDEXPF(
          MP_ADDF(MP_MULF(abs_float(g_m), n.e_z), MP_MULF(u, abs_float(p.hi))),
          shift),
      kPairTiny146);
  s.err = dd_add(s.err, ff{term_err, 0.0f});
  s.mass = dd_add(s.mass, ff{abs_float(s.sum.hi), 0.0f});
}

// The column's output as a pair times 2^F with its bound, or fixed.
MP_INLINE PairLayerNormOutput pair_weight_grad_finish(
    PairWeightGradScale scale,
    const MP_THREAD PairWeightGradSum& s,
    MP_INT64 rows) {
  PairLayerNormOutput o{ff{0.0f, 0.0f}, 0.0f, 0, true, 0.0f};
  if (scale.finite == 0) {
    o.value = MP_BITS_FLOAT(0x7fc00000u);
    return o;
  }
  if (scale.exponent == kPairNoExponent)
    return o; // +0
  o.fixed = false;
  o.v = s.sum;
  o.shift = scale.exponent;
  // The bound's pair sums: >= (1 - 2^-45)^rows of the real ones.
  const float shrink =
      MP_SUBF(1.0f, MP_MULF(static_cast<float>(rows + 2), kPairOpError));
  o.err = MP_MULF(
      MP_DIVF(
          MP_ADDF(
              MP_MULF(abs_float(s.err.hi), 1.0000002384185791f),
              MP_MULF(kPairOpError, abs_float(s.mass.hi))),
          shrink > 0.5f ? shrink : 0.0f),
      kPairLayerNormSlack);
  o.value = round_pair_scaled(o.v, o.shift);
  return o;
}

// One column, rows in order: row(r) returns row r's certified statistics,
// x(r) and g(r) the column's entries. Two passes: the scale, then the sum.
template <class Stats, class XEntry, class GEntry>
MP_INLINE PairLayerNormOutput
pair_weight_grad_output(Stats row, XEntry x, GEntry g, MP_INT64 rows) {
  PairWeightGradScale scale = pair_weight_grad_scale_init();
  for (MP_INT64 r = 0; r < rows; ++r) {
    const PairLayerNormRow s = row(r);
    scale = pair_weight_grad_scale_step(scale, s, g(r));
  }
  PairWeightGradSum sum = pair_weight_grad_sum_init();
  if (scale.finite != 0 && scale.exponent != kPairNoExponent)
    for (MP_INT64 r = 0; r < rows; ++r) {
      const PairLayerNormRow s = row(r);
      pair_weight_grad_step(sum, s, scale.exponent, x(r), g(r));
    }
  return pair_weight_grad_finish(scale, sum, rows);
}

// grad bias = the column sum of the cotangent: `sum` its pair dot product with
// ones (pair_dot_step(sum, g, 1) over the rows, in any order), certified with
// addmm_pair.h's running bound, else summed exactly (g(r): row r's entry).
template <class Column>
MP_INLINE float pair_bias_grad(PairDot sum, Column g, MP_INT64 rows) {
  float err, out;
  const ff v = addmm_pair_value(sum, rows, 1.0f, false, 0.0f, 0.0f, &err);
  if (certified_round_pair(v, err, 0, &out))
    return out;
  ExactSum s;
  exact_sum_init(s);
  for (MP_INT64 r = 0; r < rows; ++r)
    exact_sum_add_product(s, g(r), 1.0f);
  return exact_sum_round(s);
}

} // namespace mlx_precise
