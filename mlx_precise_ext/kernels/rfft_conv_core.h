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

// Exponent e with |x| < 2^e for a nonzero finite float (ilogb + 1), from
// the bits of |x|.
MP_INLINE int magnitude_exponent(unsigned int abs_bits) {
  unsigned int exponent = abs_bits >> 23;
  if (exponent != 0)
    return static_cast<int>(exponent) - 126;
  return -149 + 32 - MP_CLZ(abs_bits); // subnormal
}

// Output element: the convolution value (already summed over the fold), plus
// the product a * bias, rounded once to float32 (the float32 mode's rows; the
// certified precisions round through kernels/certify.h, certify_pair.h).
template <class T>
MP_INLINE float finish_output(T conv, bool has_bias, float a, float bias) {
  const T tag{};
  if (has_bias)
    conv = r_add(conv, r_prod(tag, a, bias));
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
