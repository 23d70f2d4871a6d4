// Steps 1-2 of certify.h for the float-pair (ff) transform, where there is no
// double: Metal's extended and dd rfft_conv. Written once against
// portability.h; the Metal kernels and the CPU emulation of them
// (mlx_precise._ext.testing.metal_certified_conv) run this same code.
//
// Each row is scaled by an exact power of two, x_s = x 2^-e with max |x_s| in
// [1/2, 1), before its transform, so that the float-pair arithmetic stays far
// from float's overflow and its underflow only adds absolute errors far below
// the bound (pair_bound_constants). In scaled units an output is
//   y_s = conv(a_s, b_s)[t] + a_s[t] (bias[t] 2^-e_b),   y = y_s 2^(e_a + e_b).
// Step 1: the row norms ||a_s||, ||b_s|| (float sums of squares, rounded up),
// err = kappa ||a_s|| ||b_s|| + absolute, kappa = conv_error_bound(N, 1, u)
// with u = 2^-46 (dd_add <= 3u'^2 + 13u'^3, dd_mul <= 4u'^2 for u' = 2^-24,
// Joldes, Muller, Popescu 2017: every real operation of the transform obeys
// the standard model with u), computed once per launch on the host.
// Step 2: certified_round_pair decides whether every real within err of the
// pair v, times 2^(e_a + e_b), rounds to one float32 (round_pair_scaled
// rounds a pair times a power of two correctly, subnormal results included).
// The outputs that do not certify are recomputed exactly (ExactSum, which
// needs no double either: exact_terms_output).
#pragma once

#include "certify.h"
#include "rfft_conv_rows.h"
#include "round_pair.h"

namespace mlx_precise {

// The exponent e with max |x| 2^-e in [1/2, 1) from the bits of max |x|; 0
// for a zero row (nothing to scale) and for a row with NaN/Inf (never
// certified).
MP_INLINE int pair_scale_exponent(unsigned int max_abs_bits) {
  if (max_abs_bits == 0u || !is_finite_bits(max_abs_bits))
    return 0;
  return magnitude_exponent(max_abs_bits);
}

// This thread's part of max |bits| over row[0..len) (the bits of max |x|: a
// reduction in any order; NaN's bits are above every finite value's).
MP_INLINE unsigned int max_abs_bits_part(
    const MP_DEVICE float* row,
    MP_INT64 stride,
    MP_INT64 len,
    int tid,
    int nthreads) {
  unsigned int bits = 0u;
  for (MP_INT64 i = tid; i < len; i += nthreads) {
    const unsigned int b = MP_FLOAT_BITS(row[i * stride]) & 0x7fffffffu;
    bits = b > bits ? b : bits;
  }
  return bits;
}

// This thread's part of sum (x 2^-e)^2 over row[0..len), in float.
MP_INLINE float scaled_square_sum_part(
    const MP_DEVICE float* row,
    MP_INT64 stride,
    MP_INT64 len,
    int exponent,
    int tid,
    int nthreads) {
  float sum = 0.0f;
  for (MP_INT64 i = tid; i < len; i += nthreads) {
    const float x = MP_LDEXPF(row[i * stride], -exponent);
    sum = MP_ADDF(sum, MP_MULF(x, x));
  }
  return sum;
}

// An upper bound on ||x_s||_2 from the computed sum of its squares: each
// square and addition rounds (|x_s| < 1: an underflowing square loses less
// than 2^-150, far inside the slack since ||x_s||^2 >= 1/4 for a nonzero
// row), at most `roundings` of them on any path of the sum (the terms of one
// thread, then the group's tree), so sum <= computed / (1 - gamma); the
// square root and the products here round once more each, which 1 + 2^-20
// covers.
MP_INLINE float pair_norm_bound(float square_sum, MP_INT64 roundings) {
  const float nu = MP_MULF(static_cast<float>(roundings), 5.9604645e-08f);
  const float inflate = MP_DIVF(1.0f, MP_SUBF(1.0f, MP_MULF(2.0f, nu)));
  return MP_MULF(
      MP_SQRTF(MP_MULF(square_sum, inflate)), 1.00000095367431640625f);
}

// The roundings on a path of a group's sum of squares of a row of len
// elements over nthreads threads: a square and ceil(len / nthreads)
// additions per thread, then at most 31 in a SIMD group's sum (any order) and
// 32 adding the SIMD groups' sums.
MP_INLINE MP_INT64 pair_norm_roundings(MP_INT64 len, int nthreads) {
  return (len + nthreads - 1) / nthreads + 1 + 63;
}

// The real row x[0..len) times 2^-exponent, packed and zero-padded to the
// complex length h as load_real_row packs it (back to front when reversed).
// Scaling a float by a power of two is exact unless the result falls below
// float's normal range; such an element is far below the row's maximum and
// its loss is in the bound's absolute term.
template <class T, class Ptr>
MP_INLINE void load_scaled_row(
    Ptr re,
    Ptr im,
    const MP_DEVICE float* row,
    MP_INT64 stride,
    MP_INT64 len,
    bool reversed,
    int exponent,
    int h,
    int tid,
    int nthreads) {
  const T tag{};
  const DeviceRow x{row, stride, len, reversed};
  for (int m = tid; m < h; m += nthreads) {
    const MP_INT64 i0 = 2 * static_cast<MP_INT64>(m), i1 = i0 + 1;
    re[m] = i0 < len ? r_from_float(tag, MP_LDEXPF(x(i0), -exponent)) : T{};
    im[m] = i1 < len ? r_from_float(tag, MP_LDEXPF(x(i1), -exponent)) : T{};
  }
}

// What step 1 gives a row of a float-pair launch: the scale of its a row and
// of its kernel row, the bound (scaled units) and the relative error of the
// additions after the transform.
struct PairCertificate {
  float conv_err;
  float rel;
  int a_exponent;
  int b_exponent;
  bool finite;
};

// A row's scale: the exponent of pair_scale_exponent and the bound on the
// norm of the scaled row (pair_norm_bound); max_abs_bits tells whether the
// row is finite.
struct PairRowScale {
  float norm;
  int exponent;
  unsigned int max_abs_bits;
};

// u = 2^-46 of the float-pair operations (dd.h).
constexpr MP_CONSTANT float kPairUnitRoundoff = 1.4210854715202004e-14f;

// Step 1 for an output row: kappa and absolute from pair_bound_constants;
// `fold` when two cyclic entries are added into one output.
MP_INLINE PairCertificate pair_certificate(
    float kappa,
    float absolute,
    PairRowScale a,
    PairRowScale b,
    bool fold,
    bool has_bias) {
  PairCertificate c;
  const float norms = MP_MULF(a.norm, b.norm);
  const float copies = fold ? 2.0f : 1.0f;
  // Zero rows convolve to exactly +-0: nothing to bound (certify.h).
  c.conv_err = norms == 0.0f
      ? 0.0f
      : MP_MULF(
            MP_MULF(copies, MP_ADDF(MP_MULF(kappa, norms), absolute)),
            kPairBoundSlack);
  c.rel = MP_MULF(
      MP_MULF(1.015625f, kPairUnitRoundoff),
      static_cast<float>((fold ? 1 : 0) + (has_bias ? 1 : 0)));
  c.a_exponent = a.exponent;
  c.b_exponent = b.exponent;
  c.finite = is_finite_bits(a.max_abs_bits) && is_finite_bits(b.max_abs_bits);
  return c;
}

// Step 2 for output t of a row: conv = the transform's value (scaled units,
// fold included), plus the bias product a[t] bias[t] in scaled units (exact
// as a pair unless it underflows: then off by < 2^-148, in the bound).
// Writes the float to *out; false when the output must be recomputed. A row
// with NaN/Inf keeps v's rounding.
MP_INLINE bool certify_pair_output(
    MP_THREAD const PairCertificate& c,
    ff conv,
    bool has_bias,
    float a_t,
    float bias_t,
    MP_THREAD float* out) {
  ff v = conv;
  float magnitude = abs_float(conv.hi);
  float err = c.conv_err;
  if (has_bias) {
    const ff p = two_prod(
        MP_LDEXPF(a_t, -c.a_exponent), MP_LDEXPF(bias_t, -c.b_exponent));
    v = dd_add(v, p);
    magnitude = MP_ADDF(magnitude, abs_float(p.hi));
    if (a_t != 0.0f && bias_t != 0.0f)
      err = MP_ADDF(err, 1.1210387714598537e-44f); // 2^-146
  }
  // An exact zero sum is +0 (certify.h, zero_as_positive).
  v = ff{MP_ADDF(v.hi, 0.0f), MP_ADDF(v.lo, 0.0f)};
  err = MP_ADDF(err, MP_MULF(MP_MULF(c.rel, magnitude), 1.0009765625f));
  const bool done =
      certified_round_pair(v, err, c.a_exponent + c.b_exponent, out);
  return done || !c.finite;
}

// ------------------------------------------------------ recomputation ----
// Step 3 without double (exact_terms_output below): the products of a cyclic
// range added to an ExactSum (functors, not lambdas: Metal has none).
struct ExactRangeAdder {
  MP_THREAD ExactSum* sum;
  DeviceRow a;
  DeviceRow b;
  MP_INLINE void operator()(MP_INT64 m0, MP_INT64 j0, MP_INT64 count) const {
    exact_sum_add_range(*sum, a, b, m0, j0, count);
  }
};

// kappa and the absolute term of step 1 for a launch (pair_bound_constants).
struct PairBoundConstants {
  float kappa;
  float absolute;
};

// ---------------------------------------------------- rows of terms ----
// Output rows that sum terms before one inverse transform (gradients summed
// over broadcast rows, the fused jvp): y = sum_i conv(a_i, b_i)[t] + sum_j
// c_j[t] d_j[t]. Terms lists them: conv_count(), conv_rows(i, a, b),
// bias_count(), bias_rows(j, c, d) (OperandRow). Group is the thread's view
// of its group: row_scale(data, stride, len) (the group's PairRowScale of a
// row, the same in every thread; every thread must call it) and
// mark_open(e). All terms share one scale 2^E, E the largest e_a + e_b (e_c
// + e_d) of a nonzero term: a_i is scaled by 2^-e_a and b_i by 2^-(E - e_a),
// so every scaled factor stays below 1 and the spectral products add up in
// the same units.

// E of a row's terms (0 when every term is zero), and whether every
// convolved row is finite.
template <class Terms, class Group>
MP_INLINE int terms_exponent(
    MP_THREAD const Terms& terms,
    MP_CONSTANT const ConvShape& g,
    MP_THREAD Group& group,
    MP_THREAD bool* finite) {
  int e = -100000;
  *finite = true;
  for (int i = 0; i < terms.conv_count(); ++i) {
    OperandRow a, b;
    terms.conv_rows(i, a, b);
    const PairRowScale sa = group.row_scale(a.data, a.stride, g.a_len);
    const PairRowScale sb = group.row_scale(b.data, b.stride, g.b_len);
    *finite = *finite && is_finite_bits(sa.max_abs_bits) &&
        is_finite_bits(sb.max_abs_bits);
    if (sa.max_abs_bits != 0u && sb.max_abs_bits != 0u &&
        sa.exponent + sb.exponent > e)
      e = sa.exponent + sb.exponent;
  }
  for (int j = 0; j < terms.bias_count(); ++j) {
    OperandRow c, d;
    terms.bias_rows(j, c, d);
    const PairRowScale sc = group.row_scale(c.data, c.stride, g.out_len);
    const PairRowScale sd = group.row_scale(d.data, d.stride, g.out_len);
    if (sc.max_abs_bits != 0u && sd.max_abs_bits != 0u &&
        sc.exponent + sd.exponent > e)
      e = sc.exponent + sd.exponent;
  }
  return e == -100000 ? 0 : e;
}

// Output t's bias products c_j[t] d_j[t] in units of 2^E: exact as pairs
// (TwoProd) and scaled, added to v; their magnitudes to *magnitude. A
// product whose TwoProd residual underflows (< 2^-150) or whose scaling
// underflows (< 2^-150 in units of 2^E) is covered by 2^(-146 - min(E, 0))
// each (inf below E = -274: then nothing certifies); one that overflows
// gives inf, which never certifies.
template <class Terms>
MP_INLINE ff add_bias_products(
    MP_THREAD const Terms& terms,
    ff v,
    MP_INT64 t,
    int exponent,
    MP_THREAD float* magnitude,
    MP_THREAD float* err) {
  const float each = MP_LDEXPF(1.0f, -146 - (exponent < 0 ? exponent : 0));
  for (int j = 0; j < terms.bias_count(); ++j) {
    OperandRow c, d;
    terms.bias_rows(j, c, d);
    const ff p = two_prod(c.data[t * c.stride], d.data[t * d.stride]);
    const ff scaled{MP_LDEXPF(p.hi, -exponent), MP_LDEXPF(p.lo, -exponent)};
    v = dd_add(v, scaled);
    *magnitude = MP_ADDF(*magnitude, abs_float(scaled.hi));
    *err = MP_ADDF(*err, each);
  }
  return v;
}

// Output t of a row of terms as an exact sum of its float32 products,
// rounded once.
template <class Terms>
MP_INLINE float exact_terms_output(
    MP_THREAD const Terms& terms,
    MP_CONSTANT const ConvShape& g,
    MP_INT64 t) {
  ExactSum s;
  exact_sum_init(s);
  const GatherIndex idx = output_entries(g, t);
  for (int i = 0; i < terms.conv_count(); ++i) {
    OperandRow a, b;
    terms.conv_rows(i, a, b);
    const ExactRangeAdder add{
        &s,
        DeviceRow{a.data, a.stride, g.a_len, g.a_reversed != 0},
        DeviceRow{b.data, b.stride, g.b_len, false}};
    if (idx.first >= 0)
      for_each_cyclic_range(g.a_len, g.b_len, g.fft_size, idx.first, add);
    if (idx.second >= 0)
      for_each_cyclic_range(g.a_len, g.b_len, g.fft_size, idx.second, add);
  }
  for (int j = 0; j < terms.bias_count(); ++j) {
    OperandRow c, d;
    terms.bias_rows(j, c, d);
    exact_sum_add_product(s, c.data[t * c.stride], d.data[t * d.stride]);
  }
  return exact_sum_round(s);
}

// The Terms of a row of one convolution and at most one bias product:
// conv(a, b)[t] (+ a[t] bias[t]).
struct OneTerm {
  OperandRow a;
  OperandRow b;
  OperandRow bias;
  bool has_bias;
  MP_INLINE int conv_count() const {
    return 1;
  }
  MP_INLINE void conv_rows(
      int,
      MP_THREAD OperandRow& a_row,
      MP_THREAD OperandRow& b_row) const {
    a_row = a;
    b_row = b;
  }
  MP_INLINE int bias_count() const {
    return has_bias ? 1 : 0;
  }
  MP_INLINE void
  bias_rows(int, MP_THREAD OperandRow& c, MP_THREAD OperandRow& d) const {
    c = a;
    d = bias;
  }
};

// One certified row of terms: the terms' scaled spectral products summed in
// acc (a slot of num_pairs pairs of the group's own), inverted in (a_re,
// a_im), each output certified (kappa and absolute for `terms` terms:
// pair_bound_constants) and written to out_row[t], or marked open as entry
// first + t. Every thread of the group must call it.
template <class T, class Terms, class Group, class Ptr>
MP_INLINE void certified_terms_row(
    Ptr a_re,
    Ptr a_im,
    Ptr b_re,
    Ptr b_im,
    MP_THREAD const Terms& terms,
    MP_CONSTANT const ConvShape& g,
    MP_CONSTANT const FFTShape& fs,
    const MP_DEVICE cpx<T>* tw,
    const MP_DEVICE cpx<T>* split_tw,
    const MP_DEVICE IndexPair* pairs,
    MP_DEVICE cpx<T>* acc,
    PairBoundConstants bound,
    MP_DEVICE float* out_row,
    MP_INT64 first,
    MP_THREAD Group& group,
    int tid,
    int nthreads) {
  const int h = fs.n_half;
  bool finite = true;
  const int exponent = terms_exponent(terms, g, group, &finite);
  float norms = 0.0f;
  for (int i = 0; i < terms.conv_count(); ++i) {
    OperandRow a, b;
    terms.conv_rows(i, a, b);
    const PairRowScale sa = group.row_scale(a.data, a.stride, g.a_len);
    const PairRowScale sb = group.row_scale(b.data, b.stride, g.b_len);
    // A term with a zero factor adds exact zeros: b keeps its own scale.
    const bool zero = sa.max_abs_bits == 0u || sb.max_abs_bits == 0u;
    const int b_exponent = zero ? sb.exponent : exponent - sa.exponent;
    // ||b 2^-b_exponent|| = ||b 2^-e_b|| 2^(e_b - b_exponent), e_b <= it.
    norms = MP_ADDF(
        norms, MP_MULF(sa.norm, MP_LDEXPF(sb.norm, sb.exponent - b_exponent)));
    load_scaled_row<T>(
        a_re,
        a_im,
        a.data,
        a.stride,
        g.a_len,
        g.a_reversed != 0,
        sa.exponent,
        h,
        tid,
        nthreads);
    load_scaled_row<T>(
        b_re,
        b_im,
        b.data,
        b.stride,
        g.b_len,
        false,
        b_exponent,
        h,
        tid,
        nthreads);
    MP_BARRIER();
    fft_rows<false, T>(a_re, a_im, fs, tw, tid, nthreads);
    fft_rows<false, T>(b_re, b_im, fs, tw, tid, nthreads);
    accumulate_product<T>(
        a_re,
        a_im,
        b_re,
        b_im,
        pairs,
        split_tw,
        acc,
        i == 0,
        fs.num_pairs,
        tid,
        nthreads);
    MP_BARRIER();
  }
  unsplit_accumulated<T>(
      a_re,
      a_im,
      pairs,
      split_tw,
      acc,
      g.spectrum_scale,
      fs.num_pairs,
      tid,
      nthreads);
  MP_BARRIER();
  fft_rows<true, T>(a_re, a_im, fs, tw, tid, nthreads);
  // The norms' sum rounds once per term: 1 + terms 2^-23 covers it.
  const float count = static_cast<float>(terms.conv_count());
  const float conv_err = norms == 0.0f
      ? 0.0f
      : MP_MULF(
            MP_MULF(
                g.fold != 0 ? 2.0f : 1.0f,
                MP_ADDF(
                    MP_MULF(
                        MP_MULF(bound.kappa, norms),
                        MP_ADDF(1.0f, MP_MULF(count, 1.1920929e-07f))),
                    MP_MULF(count, bound.absolute))),
            kPairBoundSlack);
  const float rel = MP_MULF(
      MP_MULF(1.015625f, kPairUnitRoundoff),
      static_cast<float>((g.fold != 0 ? 1 : 0) + terms.bias_count()));
  for (MP_INT64 t = tid; t < g.out_len; t += nthreads) {
    const ff conv = gather_output<T>(a_re, a_im, g, t);
    float magnitude = abs_float(conv.hi), err = conv_err;
    ff v = add_bias_products(terms, conv, t, exponent, &magnitude, &err);
    v = ff{MP_ADDF(v.hi, 0.0f), MP_ADDF(v.lo, 0.0f)}; // an exact zero is +0
    err = MP_ADDF(err, MP_MULF(MP_MULF(rel, magnitude), 1.0009765625f));
    float y;
    if (!certified_round_pair(v, err, exponent, &y) && finite)
      group.mark_open(first + t);
    out_row[t] = y;
  }
  MP_BARRIER();
}

#if MP_HAS_DOUBLE
// Host side of step 1, in double: kappa = conv_error_bound(N, terms, 1.3 u),
// u = 2^-46, and the absolute term of one term, in scaled units, both rounded
// up into floats. conv_error_bound counts a complex product's error as
// sqrt(5) u (Brent, Percival, Zimmermann 2007), which holds for correctly
// rounded binary floating point, not for the float-pair operations, which
// only obey the standard model |error| <= u |result|: there a product errs
// by <= sqrt(2) gamma_2(u) < 2.83 u (Higham, Lemma 3.5) <= sqrt(5) (1.3 u),
// and every other use of u in the bound grows with it. The absolute term
// covers (1) inputs scaled below float's normal
// range, each off by < 2^-150 and met by factors < 1 in at most a_len + b_len
// products of an output; (2) underflow inside the transform: a multiplication
// or fma that underflows adds < 2^-150 to its dd operation (additions are exact
// under gradual underflow), counted as 2^-140 per dd operation, of which the
// two forward transforms, the product and the inverse have fewer than
// 64 N (log2 N + 4); an error anywhere reaches an output with weight < 8N
// (the rest of a forward transform <= H = N/2 in the max norm, the split
// <= 4, the other factor's spectrum < 2 max(a_len, b_len) / N... bounded by
// 1 and 2N for the scaled rows, the unsplit 4 and the inverse butterflies
// 1). Against the relative part (>= 2^-39 for nonzero rows, whose scaled
// norms are >= 1/2) both are negligible: they exist for rigour.
MP_INLINE PairBoundConstants pair_bound_constants(
    MP_INT64 fft_size,
    MP_INT64 terms,
    MP_INT64 a_len,
    MP_INT64 b_len) {
  const double n = static_cast<double>(fft_size);
  int log2n = 0;
  while (std::ldexp(1.0, log2n) < n)
    ++log2n;
  const double absolute =
      std::ldexp(1.0, -140) * 64.0 * n * (log2n + 4.0) * 8.0 * n +
      std::ldexp(1.0, -150) * static_cast<double>(a_len + b_len);
  const double kappa = conv_error_bound(
      fft_size, terms, 1.3 * static_cast<double>(kPairUnitRoundoff));
  return PairBoundConstants{
      static_cast<float>(kappa * (1.0 + 1.0 / 1024.0)),
      static_cast<float>(absolute * 2.0)};
}
#endif

} // namespace mlx_precise
