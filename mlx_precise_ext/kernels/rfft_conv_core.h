// Per-element arithmetic of rfft_conv outside the butterflies: the real-FFT
// split and its inverse, the spectral product in the packed format, and the
// output's fold, bias and single rounding. Shared by every backend so that dd
// results are the same operations in the same order everywhere.
//
// Packed format: a real row x of length N rides z[m] = x[2m] + i x[2m+1]
// (length H = N/2). After the complex FFT, the split turns Z into 2X[f] for
// f = f(p) at each position p (digit-reversed order), except position 0, which
// holds the two real values 2X[0] (re) and 2X[H] (im).
#pragma once

#include "fft_butterflies.h"

namespace mlx_precise {

// 2X[0], 2X[H] from Z[0] = a + i b: X[0] = a + b, X[H] = a - b.
template <class T>
MP_INLINE cpx<T> rfft_split_dc(cpx<T> z) {
  return cpx<T>{
      r_scale(r_add(z.re, z.im), 2.0f), r_scale(r_sub(z.re, z.im), 2.0f)};
}

// 2X[f] = (Z[f] + conj Z[H-f]) + w^f (-i)(Z[f] - conj Z[H-f]), w = exp(-2 pi i
// / N).
template <class T>
MP_INLINE cpx<T> rfft_split(cpx<T> z, cpx<T> z_partner, cpx<T> w) {
  cpx<T> zc{z_partner.re, r_neg(z_partner.im)};
  return c_add(c_add(z, zc), c_mul(w, c_mul_neg_i(c_sub(z, zc))));
}

// Inverse of rfft_split_dc up to the factor 2 carried by the packed spectrum.
template <class T>
MP_INLINE cpx<T> rfft_unsplit_dc(cpx<T> y) {
  return cpx<T>{r_add(y.re, y.im), r_sub(y.re, y.im)};
}

// Z[f] = (Y[f] + conj Y[H-f]) + i conj(w^f) (Y[f] - conj Y[H-f]).
template <class T>
MP_INLINE cpx<T> rfft_unsplit(cpx<T> y, cpx<T> y_partner, cpx<T> w) {
  cpx<T> yc{y_partner.re, r_neg(y_partner.im)};
  return c_add(c_add(y, yc), c_mul_pos_i(c_mul_conj(c_sub(y, yc), w)));
}

// Spectral product at position p of the packed format.
template <class T>
MP_INLINE cpx<T> packed_mul(cpx<T> a, cpx<T> b, bool dc) {
  return dc ? cpx<T>{r_mul(a.re, b.re), r_mul(a.im, b.im)} : c_mul(a, b);
}

// Which entries of the length-N cyclic result x form output t: x[first]
// (+ x[second] when the transform is folded at period n), -1 where absent.
// Entries at or beyond the support of the linear convolution (a_len + b_len -
// 1) are exactly zero in exact arithmetic, so they are not read at all: the
// result there is an exact zero rather than transform noise.
struct GatherIndex {
  long long first;
  long long second;
};

MP_INLINE GatherIndex gather_index(
    long long t,
    long long fft_size,
    long long period,
    bool fold,
    bool out_reversed,
    long long out_origin,
    long long support) {
  long long i = t;
  if (out_reversed) {
    i = out_origin - t;
    if (i < 0) {
      if (period == 0)
        return GatherIndex{-1, -1}; // causal form: no such tap
      i += period;
    }
  }
  long long limit = support < fft_size ? support : fft_size;
  GatherIndex g{i < limit ? i : -1, -1};
  if (fold && i + period < limit)
    g.second = i + period;
  return g;
}

// ------------------------------------------------------ lattice snapping ----
//
// The exact convolution of float32 rows a and b is an integer multiple of
// 2^(qa + qb), where q is the exponent of the lowest set bit over a row. When
// the transform's error is provably below a quarter of that quantum, rounding
// the result to the nearest multiple recovers the exact value: exact zeros
// and small-integer convolutions come out exact. The decision uses only
// integer exponents (max |x| and lowest set bits do not depend on summation
// order), so every backend decides the same way.

// Exponent of the lowest set bit of a nonzero finite float, from its bits.
MP_INLINE int lowest_bit_exponent(unsigned int bits) {
  unsigned int exponent = (bits >> 23) & 0xffu;
  unsigned int mantissa = bits & 0x7fffffu;
  int base = -149;
  if (exponent != 0) {
    mantissa |= 0x800000u;
    base = static_cast<int>(exponent) - 150;
  }
  return base + MP_CTZ(mantissa);
}

// Exponent e with |x| < 2^e for a nonzero finite float (ilogb + 1).
MP_INLINE int magnitude_exponent(unsigned int abs_bits) {
  unsigned int exponent = abs_bits >> 23;
  if (exponent != 0)
    return static_cast<int>(exponent) - 126;
  return -149 + 32 - MP_CLZ(abs_bits); // subnormal
}

// What the largest |x| of a row says: no NaN/Inf, all zero, |x| < 2^max_exp.
// (max of |bits| is the bits of max |x|: a reduction in any order.)
struct RowMagnitude {
  bool finite;
  bool zero;
  int max_exp;
};

MP_INLINE RowMagnitude row_magnitude(unsigned int max_abs_bits) {
  RowMagnitude r{max_abs_bits < 0x7f800000u, max_abs_bits == 0u, -1000};
  if (r.finite && !r.zero)
    r.max_exp = magnitude_exponent(max_abs_bits);
  return r;
}

// ceil(log2(v)) for v >= 1.
MP_INLINE int ceil_log2(long long v) {
  int e = 0;
  while ((1ll << e) < v)
    ++e;
  return e;
}

constexpr MP_CONSTANT int kNoSnap = 100000;

// Step 1 of the snap decision, from magnitudes alone. The FFT path's error
// (Higham's analysis, with room to spare) is at most
//   64 (log2 N + 1) u sqrt(La) Lb max|a| max|b|   per output (u: unit roundoff
// of T), plus one rounding of the exact bias product a*d; `terms` such sums for
// gradients. Snapping is certified when the lattice step 2^q, q = qa + min(qb,
// qd) (the lowest set bits of the rows), is at least 4 times that bound:
// q >= required. Returns required, 0 with *exact_zero set when the output is
// exactly zero (snap to +0), or kNoSnap when nothing can be certified.
MP_INLINE int snap_required(
    RowMagnitude a,
    RowMagnitude b,
    bool has_bias,
    RowMagnitude d,
    long long a_len,
    long long b_len,
    long long fft_size,
    int unit_roundoff_exp,
    int terms,
    MP_THREAD bool* exact_zero) {
  *exact_zero = false;
  if (!a.finite || !b.finite || (has_bias && !d.finite))
    return kNoSnap;
  if (unit_roundoff_exp >= 0)
    return kNoSnap; // float32 mode promises no snapping
  if (a.zero || (b.zero && (!has_bias || d.zero))) {
    // The transform may still carry signed zeros: snap to +0.
    *exact_zero = true;
    return 0;
  }
  int bound_exp = -1000000;
  if (!b.zero) {
    bound_exp = 6 + ceil_log2(ceil_log2(fft_size) + 1) +
        (ceil_log2(a_len) + 1) / 2 + ceil_log2(b_len) + a.max_exp + b.max_exp +
        unit_roundoff_exp;
  }
  if (has_bias && !d.zero) {
    int bias_exp = a.max_exp + d.max_exp + 2 + unit_roundoff_exp;
    bound_exp = bias_exp > bound_exp ? bias_exp : bound_exp;
  }
  return bound_exp + 1 + ceil_log2(terms) + 2;
}

// Lowest-bit floor a row must reach for q >= required to remain possible,
// given the largest lowest-bit exponent its partner could have (max_exp - 1).
MP_INLINE int quantum_floor(int required, RowMagnitude partner) {
  return required - (partner.max_exp - 1);
}

// Step 2: q from the rows' quanta (kNoSnap for an all-zero row), certified or
// not.
MP_INLINE int
snap_decision(int required, int qa, int qb, bool has_bias, int qd) {
  if (required == kNoSnap || qa == kNoSnap)
    return kNoSnap;
  int q = qb;
  if (has_bias && qd < q)
    q = qd;
  if (q == kNoSnap)
    return kNoSnap;
  q += qa;
  return q >= required ? q : kNoSnap;
}

// Nearest multiple of 2^e (the value is within 2^(e-2) of one when certified).
#if MP_HAS_DOUBLE
// (+ 0.0 turns a rounded -0 into the +0 an exact sum of products gives.)
MP_INLINE double r_snap(double v, int e) {
  return MP_LDEXP(MP_RINT(MP_LDEXP(v, -e)) + 0.0, e);
}

// Unit roundoff exponents with margin: double 2^-53, double-word about 2^-48.
MP_INLINE int snap_roundoff_exp(double) {
  return -52;
}
#endif
MP_INLINE int snap_roundoff_exp(ff) {
  return -45;
}
MP_INLINE int snap_roundoff_exp(float) {
  return 0;
}

MP_INLINE ff r_snap(ff v, int e) {
  float hi = MP_LDEXPF(v.hi, -e), lo = MP_LDEXPF(v.lo, -e);
  float r = MP_RINTF(hi);
  if (r == hi)
    return ff{v.hi, MP_LDEXPF(MP_RINTF(lo), e)};
  // hi is not an integer, so |hi| < 2^23 and |lo| < 1/4: the nearest integer
  // is r or its neighbour (hi - r is exact).
  float d = MP_ADDF(MP_SUBF(hi, r), lo);
  if (d > 0.5f)
    r = MP_ADDF(r, 1.0f);
  if (d < -0.5f)
    r = MP_SUBF(r, 1.0f);
  return ff{MP_LDEXPF(r, e), 0.0f};
}

// float32 mode promises float32 arithmetic only: no snapping.
MP_INLINE float r_snap(float v, int) {
  return v;
}

// Output element: the convolution value (already summed over the fold), plus
// the exact product a * bias, snapped to the lattice when certified, rounded
// once to float32.
template <class T>
MP_INLINE float
finish_output(T conv, bool has_bias, float a, float bias, int snap_exp) {
  const T tag{};
  if (has_bias)
    conv = r_add(conv, r_prod(tag, a, bias));
  if (snap_exp != kNoSnap)
    conv = r_snap(conv, snap_exp);
  return r_round(conv);
}

// Output element of pair_rfft_conv: the convolution value plus the products
// of both parts of the pair a with the bias (each exact in T), returned as a
// pair, never rounded to float32 (the CPU's and the GPUs' pair rows).
template <class T>
MP_INLINE ff
finish_pair_output(T conv, bool has_bias, float a_hi, float a_lo, float bias) {
  const T tag{};
  if (has_bias) {
    conv = r_add(conv, r_prod(tag, a_hi, bias));
    conv = r_add(conv, r_prod(tag, a_lo, bias));
  }
  return r_to_pair(conv);
}

} // namespace mlx_precise
