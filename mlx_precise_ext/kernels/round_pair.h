// Certified rounding of a float pair to float32, for the backends without
// double (Metal): the float-pair forms of certify.h's certified_round, shared
// by the certified float-pair rfft_conv (certify_pair.h) and addmm
// (addmm_pair.h).
#pragma once

#include "certify.h"
#include "dd.h"
#include "rfft_conv_core.h"

namespace mlx_precise {

// 1 + 2^-18: covers the few float roundings of a bound's own arithmetic.
constexpr MP_CONSTANT float kPairBoundSlack = 1.000003814697265625f;

MP_INLINE float abs_float(float x) {
  return MP_BITS_FLOAT(MP_FLOAT_BITS(x) & 0x7fffffffu);
}

// The float32 nearest to (x.hi + x.lo) 2^shift, ties to even (x a
// normalised pair, hi = RN(hi + lo)): RN(hi + lo) scaled, unless the result
// is subnormal, where the pair is rounded to the 2^-149 grid directly (a
// scaled RN(hi + lo) would round twice).
MP_INLINE float round_pair_scaled(ff x, int shift) {
  const float f = MP_ADDF(x.hi, x.lo);
  const unsigned int abs_bits = MP_FLOAT_BITS(f) & 0x7fffffffu;
  if (abs_bits == 0u || !is_finite_bits(abs_bits))
    return MP_LDEXPF(f, shift);
  const int e = magnitude_exponent(abs_bits) - 1; // 2^e <= |f| < 2^(e+1)
  if (e + shift >= -126)
    return MP_LDEXPF(f, shift); // normal or overflowing: scaling is exact
  if (e + shift <= -152) // |x 2^shift| < 2^-150: rounds to 0 of x's sign
    return MP_BITS_FLOAT(MP_FLOAT_BITS(f) & 0x80000000u);
  // In units of 2^-149: h = hi 2^k is in [2^-3, 2^23], exact, and r =
  // rint(h) (ties to even) is the answer unless h is half an integer: |frac|
  // < 1/2 is a multiple of ulp(h) >= 2 |lo 2^k|, so lo cannot cross a
  // midpoint. On a midpoint of h, lo's sign decides (lo = 0: r, the even one).
  const float h = MP_LDEXPF(x.hi, 149 + shift);
  float r = MP_RINTF(h);
  const float frac = MP_SUBF(h, r); // exact
  if (frac == 0.5f && x.lo > 0.0f)
    r = MP_ADDF(r, 1.0f);
  if (frac == -0.5f && x.lo < 0.0f)
    r = MP_SUBF(r, 1.0f);
  return MP_LDEXPF(r, -149); // |r| <= 2^23: exact
}

// certified_round for a pair v with |v - x| <= err, x = exact / 2^shift:
// the ends v -+ margin (dd_add, relative error <= 2^-46 exactly even under
// gradual underflow: it only adds) rounded as round_pair_scaled; equal bits
// prove that every real within err of v, times 2^shift, rounds to one float.
// NaN and inf never certify. *out is always written with v's rounding.
MP_INLINE bool
certified_round_pair(ff v, float err, int shift, MP_THREAD float* out) {
  *out = round_pair_scaled(v, shift);
  if (!is_finite_bits(MP_FLOAT_BITS(v.hi)) ||
      !is_finite_bits(MP_FLOAT_BITS(err)))
    return false;
  // 2^-43 |hi| covers the ends' roundings (2^-46 |end|), 2^-147 the
  // underflow of this line's products.
  const float margin = MP_ADDF(
      MP_MULF(
          MP_ADDF(err, MP_MULF(abs_float(v.hi), 1.1368683772161603e-13f)),
          kPairBoundSlack),
      5.605193857299268e-45f);
  const float lo = round_pair_scaled(dd_add(v, ff{-margin, 0.0f}), shift);
  const float hi = round_pair_scaled(dd_add(v, ff{margin, 0.0f}), shift);
  return MP_FLOAT_BITS(lo) == MP_FLOAT_BITS(hi);
}

} // namespace mlx_precise
