// Double-word ("double-double") arithmetic on pairs of float32: value = hi + lo
// with hi = RN(hi + lo) (so |lo| <= ulp(hi)/2). About 48 significant bits.
// Algorithms and bounds from Joldes, Muller, Popescu, "Tight and rigorous error
// bounds for basic building blocks of double-word arithmetic", ACM TOMS 44(2),
// 2017, and Muller, Rideau, ACM TOMS 48(1), 2022 (formal proofs; the 4u^2 bound
// of DWTimesDW3), u = 2^-24:
//   dd_add  AccurateDWPlusDW  (Alg. 6)  relative error <= 3u^2 + 13u^3
//   dd_mul  DWTimesDW3        (Alg. 12) relative error <= 4u^2
//   dd_mul_f DWTimesFP3       (Alg. 9)  relative error <= 2u^2
// The papers prove the bounds for an unbounded exponent range: in float32 they
// hold while no step underflows or overflows, so keep magnitudes far from
// 2^-126 and 2^128 (tests/test_dd_arithmetic.py checks them for hi parts in
// [2^-70, 2^70]). An overflowing result comes out as NaN, not inf (TwoSum
// computes inf - inf), so it never passes silently.
// QD's "sloppy" add is not used: its relative error is unbounded under
// cancellation. Compiled unchanged as C++, CUDA and Metal (see portability.h);
// contraction must be off wherever this header is compiled: a compiler that
// fuses, say, hi = a*b with a later hi + c into one fma breaks the error-free
// transforms, since their correction terms assume every step rounds.
#pragma once

#include "portability.h"

namespace mlx_precise {

struct ff {
  float hi;
  float lo;
};

// Error-free transforms.
// TwoSum (Knuth): s + e == a + b exactly for any a, b such that a + b does not
// overflow, with one exception: b = +-FLT_MAX and a of the other sign, where
// s - a can round up to inf and e comes out NaN (Boldo, Graillat, Muller, "On
// the robustness of the 2Sum and Fast2Sum algorithms", ACM TOMS 44(1), 2017).
// A NaN, never a wrong number; ordering the operands would cost three more
// operations per call for values no double-word computation here comes near.
MP_INLINE ff two_sum(float a, float b) {
  float s = MP_ADDF(a, b);
  float bb = MP_SUBF(s, a);
  float e = MP_ADDF(MP_SUBF(a, MP_SUBF(s, bb)), MP_SUBF(b, bb));
  return ff{s, e};
}

// FastTwoSum (Dekker): exact when exponent(a) >= exponent(b), in particular
// when |a| >= |b| or a == 0.
MP_INLINE ff fast_two_sum(float a, float b) {
  float s = MP_ADDF(a, b);
  float e = MP_SUBF(b, MP_SUBF(s, a));
  return ff{s, e};
}

// TwoProd with an explicit fma: p + e == a * b exactly when a * b does not
// overflow and the error term does not underflow: a = Ma 2^qa, b = Mb 2^qb with
// integer significands, the error is a multiple of 2^(qa + qb), representable
// when qa + qb >= -149, i.e. exponent(a) + exponent(b) >= -103 (a in
// [2^ea, 2^(ea+1)), subnormals counting as -126).
MP_INLINE ff two_prod(float a, float b) {
  float p = MP_MULF(a, b);
  float e = MP_FMAF(a, b, -p);
  return ff{p, e};
}

MP_INLINE ff dd_from_float(float a) {
  return ff{a, 0.0f};
}

MP_INLINE ff dd_neg(ff x) {
  return ff{-x.hi, -x.lo};
}

// AccurateDWPlusDW.
MP_INLINE ff dd_add(ff x, ff y) {
  ff s = two_sum(x.hi, y.hi);
  ff t = two_sum(x.lo, y.lo);
  float c = MP_ADDF(s.lo, t.hi);
  ff v = fast_two_sum(s.hi, c);
  float w = MP_ADDF(t.lo, v.lo);
  return fast_two_sum(v.hi, w);
}

MP_INLINE ff dd_sub(ff x, ff y) {
  return dd_add(x, dd_neg(y));
}

// DWTimesDW3.
MP_INLINE ff dd_mul(ff x, ff y) {
  ff c = two_prod(x.hi, y.hi);
  float tl0 = MP_MULF(x.lo, y.lo);
  float tl1 = MP_FMAF(x.hi, y.lo, tl0);
  float cl2 = MP_FMAF(x.lo, y.hi, tl1);
  float cl3 = MP_ADDF(c.lo, cl2);
  return fast_two_sum(c.hi, cl3);
}

// DWTimesFP3.
MP_INLINE ff dd_mul_f(ff x, float y) {
  ff c = two_prod(x.hi, y);
  float cl3 = MP_FMAF(x.lo, y, c.lo);
  return fast_two_sum(c.hi, cl3);
}

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

// Multiplication by a power of two is exact (barring under/overflow).
MP_INLINE ff dd_scale(ff x, float power_of_two) {
  return ff{MP_MULF(x.hi, power_of_two), MP_MULF(x.lo, power_of_two)};
}

// The one rounding to float32: fl(hi + lo) is the float nearest to hi + lo
// (one IEEE addition, so a single rounding of the exact value).
MP_INLINE float dd_round(ff x) {
  return MP_ADDF(x.hi, x.lo);
}

#if MP_HAS_DOUBLE
// A double as a pair, 48 bits of it: hi = fl(d), then lo = fl(d - hi) (d - hi
// is exact in double). Rounding d - hi to float can land exactly on ulp(hi)/2,
// making hi + lo a tie that ties-to-even rounds away from an odd hi; the final
// FastTwoSum restores hi = RN(hi + lo), which the bounds above assume.
MP_INLINE ff dd_from_double(double d) {
  float hi = static_cast<float>(d);
  float lo = static_cast<float>(d - static_cast<double>(hi));
  return fast_two_sum(hi, lo);
}

MP_INLINE double dd_to_double(ff x) {
  return static_cast<double>(x.hi) + static_cast<double>(x.lo);
}
#endif

// Complex double-word values and the operations the FFT needs.
struct cff {
  ff re;
  ff im;
};

MP_INLINE cff cdd_add(cff a, cff b) {
  return cff{dd_add(a.re, b.re), dd_add(a.im, b.im)};
}

MP_INLINE cff cdd_sub(cff a, cff b) {
  return cff{dd_sub(a.re, b.re), dd_sub(a.im, b.im)};
}

// (a.re + i a.im)(b.re + i b.im), each part a difference/sum of two dd
// products: |error of each part| <= (7u^2 + 14u^3) (|first product| + |second
// product|) (4u^2 from each dd_mul, then 3u^2 + 13u^3 from dd_add on their
// sum).
MP_INLINE cff cdd_mul(cff a, cff b) {
  return cff{
      dd_sub(dd_mul(a.re, b.re), dd_mul(a.im, b.im)),
      dd_add(dd_mul(a.re, b.im), dd_mul(a.im, b.re))};
}

} // namespace mlx_precise
