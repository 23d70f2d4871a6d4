// The elementwise operations of the pair ops (pair_ops.h) on one value in the
// working precision: double on the CPU and CUDA, double-word (float pair)
// arithmetic where there is no double (Metal). Written once against
// portability.h for every backend.
#pragma once

#include "fft_butterflies.h"

namespace mlx_precise {

// The elementwise operations of a pair chain; gelu is torch's exact-erf GELU,
// x/2 (1 + erf(x / sqrt 2)). The *Grad operations are their derivatives times
// a cotangent, op(x, g) = g f'(x) (the vjps, pair_vjp.cpp), binary.
enum class PairOp {
  Add,
  Multiply,
  Gelu,
  Sin,
  Exp,
  Tanh,
  GeluGrad,
  SinGrad,
  TanhGrad
};

#if MP_HAS_DOUBLE
// GELU as x/2 erfc(-x / sqrt 2): the same function as x/2 (1 + erf(x /
// sqrt 2)) without the cancellation of 1 + erf for negative x. The double
// libraries' erfc, sin, exp and tanh are accurate to about an ulp of double.
MP_INLINE double pair_unary_double(PairOp op, double x) {
  switch (op) {
    case PairOp::Gelu:
      return 0.5 * x * erfc(x * -0.70710678118654752440);
    case PairOp::Sin:
      return sin(x);
    case PairOp::Exp:
      return exp(x);
    default:
      return tanh(x);
  }
}

// gelu'(x) = Phi(x) + x phi(x) = erfc(-x / sqrt 2) / 2 + x exp(-x^2 / 2) /
// sqrt(2 pi); tanh'(x) = 1 / cosh(x)^2, from x: 1 - tanh(x)^2 would cancel.
MP_INLINE double pair_binary_double(PairOp op, double x, double y) {
  switch (op) {
    case PairOp::Add:
      return x + y;
    case PairOp::GeluGrad:
      return y *
          (0.5 * erfc(x * -0.70710678118654752440) +
           x * exp(-0.5 * x * x) * 0.39894228040143267794);
    case PairOp::SinGrad:
      return y * cos(x);
    case PairOp::TanhGrad: {
      const double c = cosh(x);
      return y / (c * c);
    }
    default:
      return x * y;
  }
}
#endif

// ------------------------------------------------- double-word functions ----
// exp, sin, tanh and GELU (through erfc) of a float pair, for the backends
// whose pair ops compute in double-word arithmetic (Metal has no double).
// Written with the dd.h operations only, so the same code runs as C++ (where
// tests/test_dd_functions.py checks it against mpmath), CUDA and Metal.
// Relative error about 2^-46 (exp, sin, tanh; tested <= 2^-44) over the
// domains documented at each function, plus the function's own condition
// number times the input's 2^-48 (for erfc(z): about 2 z^2).

// One Horner step: p x + (c_hi + c_lo).
MP_INLINE ff dd_poly_step(ff p, ff x, float c_hi, float c_lo) {
  return dd_add(dd_mul(p, x), ff{c_hi, c_lo});
}

// Horner steps p x + 1/n! for n = 12, 11, ..., 1: the Taylor coefficients
// of exp that dd_exp and dd_expm1_small share (each 1/n! to 48 bits, hi + lo).
MP_INLINE ff dd_exp_taylor_steps(ff p, ff x) {
  p = dd_poly_step(p, x, 2.0876756e-09f, 1.1082839e-16f);
  p = dd_poly_step(p, x, 2.5052108e-08f, 4.417623e-16f);
  p = dd_poly_step(p, x, 2.755732e-07f, -7.575112e-15f);
  p = dd_poly_step(p, x, 2.7557319e-06f, 3.7935712e-14f);
  p = dd_poly_step(p, x, 2.4801588e-05f, -3.406996e-13f);
  p = dd_poly_step(p, x, 0.0001984127f, -2.7255969e-12f);
  p = dd_poly_step(p, x, 0.0013888889f, -3.3631094e-11f);
  p = dd_poly_step(p, x, 0.008333334f, -4.346172e-10f);
  p = dd_poly_step(p, x, 0.041666668f, -1.2417635e-09f);
  p = dd_poly_step(p, x, 0.16666667f, -4.967054e-09f);
  p = dd_poly_step(p, x, 0.5f, 0.0f);
  return dd_poly_step(p, x, 1.0f, 0.0f);
}

// exp(x): x = k ln2 + r, |r| <= ln2/2 (ln2 in three parts: k ln2_1 exact for
// |k| < 2^8), Taylor to degree 13 (truncation < 2^-53), then 2^k exactly.
// Overflow gives +inf, results below 2^-149 give 0; below 2^-102 lo is
// subnormal and the relative error grows.
MP_INLINE ff dd_exp(ff x) {
  if (x.hi > 88.73f) {
    const float huge = 3.0e38f;
    return ff{MP_MULF(huge, huge), 0.0f};
  }
  if (x.hi < -104.0f)
    return ff{0.0f, 0.0f};
  const float k = MP_RINTF(MP_MULF(x.hi, 1.442695f));
  // x.hi - k ln2_1 is exact: k ln2_1 has at most 24 bits and lies within a
  // factor 2 of x.hi when k != 0 (Sterbenz).
  ff r = two_sum(MP_SUBF(x.hi, MP_MULF(k, 0.69314575f)), x.lo);
  r = dd_sub(r, two_prod(k, 1.4286068e-06f));
  r = dd_sub(r, dd_from_float(MP_MULF(k, 5.497923e-14f)));
  ff p = dd_exp_taylor_steps(ff{1.6059044e-10f, -5.3525265e-18f}, r);
  p = dd_poly_step(p, r, 1.0f, 0.0f);
  const int e = static_cast<int>(k);
  return ff{MP_LDEXPF(p.hi, e), MP_LDEXPF(p.lo, e)};
}

// log(x) for any float pair: x = 2^e m with m in [sqrt(1/2), sqrt 2)
// (subnormal hi parts scaled up by 2^24 first, exactly), log m = 2 atanh(s)
// with s = (m - 1) / (m + 1), |s| <= 0.172, Taylor in s^2 to degree 21 in s
// (truncation < 2^-55), plus e ln2 (ln2 in dd_exp's three parts, e ln2_1
// exact). m - 1 is a double-word difference, so the relative error stays
// near 2^-47 next to x = 1 as well. log(0) = -inf, log(+inf) = +inf, NaN for
// x < 0 and NaN.
MP_INLINE ff dd_log(ff x) {
  if (!(x.hi > 0.0f) || x.hi == MP_BITS_FLOAT(0x7f800000u)) {
    if (x.hi == 0.0f)
      return ff{MP_BITS_FLOAT(0xff800000u), 0.0f};
    const float y = x.hi > 0.0f ? x.hi : MP_BITS_FLOAT(0x7fc00000u);
    return ff{y, 0.0f};
  }
  int e = 0;
  ff m = x;
  if (m.hi < 1.17549435e-38f) {
    m = dd_scale(m, 16777216.0f);
    e = -24;
  }
  // The exponent of m.hi, one more where its significand exceeds sqrt 2.
  const unsigned int bits = MP_FLOAT_BITS(m.hi);
  const int k = static_cast<int>(bits >> 23) - 127 +
      ((bits & 0x7fffffu) > 0x3504f3u ? 1 : 0);
  m = ff{MP_LDEXPF(m.hi, -k), MP_LDEXPF(m.lo, -k)};
  e += k;
  const ff one = dd_from_float(1.0f);
  const ff s = dd_div(dd_sub(m, one), dd_add(m, one));
  const ff z = dd_mul(s, s);
  ff p = ff{0.04761905f, -8.869739e-10f};
  p = dd_poly_step(p, z, 0.05263158f, -3.9213582e-10f);
  p = dd_poly_step(p, z, 0.05882353f, -2.1913472e-10f);
  p = dd_poly_step(p, z, 0.06666667f, -3.4769376e-09f);
  p = dd_poly_step(p, z, 0.07692308f, -2.865608e-09f);
  p = dd_poly_step(p, z, 0.09090909f, -2.7093021e-09f);
  p = dd_poly_step(p, z, 0.11111111f, -8.278423e-10f);
  p = dd_poly_step(p, z, 0.14285715f, -6.386212e-09f);
  p = dd_poly_step(p, z, 0.2f, -2.9802323e-09f);
  p = dd_poly_step(p, z, 0.33333334f, -9.934108e-09f);
  p = dd_poly_step(p, z, 1.0f, 0.0f);
  const ff log_m = dd_mul(dd_scale(s, 2.0f), p);
  if (e == 0)
    return log_m;
  const float fe = static_cast<float>(e);
  ff e_ln2 = dd_add(
      dd_from_float(MP_MULF(fe, 0.69314575f)), two_prod(fe, 1.4286068e-06f));
  e_ln2 = dd_add(e_ln2, dd_from_float(MP_MULF(fe, 5.497923e-14f)));
  return dd_add(e_ln2, log_m);
}

// sin(x): x = k pi/2 + r, |r| <= pi/4 (k pi/2 as four exact products, pi/2
// to 96 bits), then sin or cos of r by Taylor (degrees 15 and 16). Tested for
// |x| < 2^16; beyond |x| = 2^22 k is no longer exact and the reduction fails.
// cos(x) is the same with the quadrant advanced by one: sin(r + (k + 1)
// pi/2).
MP_INLINE ff dd_sin_quarter_turns(ff x, int quarter_turns) {
  const float k = MP_RINTF(MP_MULF(x.hi, 0.63661975f));
  const ff p1 = two_prod(k, 1.5707964f);
  // Exact (Sterbenz): p1.hi lies within a factor 2 of x.hi when k != 0.
  ff r = two_sum(MP_SUBF(x.hi, p1.hi), x.lo);
  r = dd_sub(r, dd_from_float(p1.lo));
  r = dd_sub(r, two_prod(k, -4.371139e-08f));
  r = dd_sub(r, two_prod(k, -1.7151245e-15f));
  r = dd_sub(r, dd_from_float(MP_MULF(k, 1.0562999e-23f)));
  const ff r2 = dd_mul(r, r);
  const int quadrant = (static_cast<int>(k) + quarter_turns) & 3;
  if (quadrant & 1) {
    ff p = ff{4.7794773e-14f, 7.625444e-22f};
    p = dd_poly_step(p, r2, -1.1470745e-11f, -2.3722077e-19f);
    p = dd_poly_step(p, r2, 2.0876756e-09f, 1.1082839e-16f);
    p = dd_poly_step(p, r2, -2.755732e-07f, 7.575112e-15f);
    p = dd_poly_step(p, r2, 2.4801588e-05f, -3.406996e-13f);
    p = dd_poly_step(p, r2, -0.0013888889f, 3.3631094e-11f);
    p = dd_poly_step(p, r2, 0.041666668f, -1.2417635e-09f);
    p = dd_poly_step(p, r2, -0.5f, 0.0f);
    p = dd_poly_step(p, r2, 1.0f, 0.0f);
    return quadrant == 1 ? p : dd_neg(p);
  }
  ff p = ff{-7.6471636e-13f, -1.22007105e-20f};
  p = dd_poly_step(p, r2, 1.6059044e-10f, -5.3525265e-18f);
  p = dd_poly_step(p, r2, -2.5052108e-08f, -4.417623e-16f);
  p = dd_poly_step(p, r2, 2.7557319e-06f, 3.7935712e-14f);
  p = dd_poly_step(p, r2, -0.0001984127f, 2.7255969e-12f);
  p = dd_poly_step(p, r2, 0.008333334f, -4.346172e-10f);
  p = dd_poly_step(p, r2, -0.16666667f, 4.967054e-09f);
  p = dd_poly_step(p, r2, 1.0f, 0.0f);
  p = dd_mul(p, r);
  return quadrant == 0 ? p : dd_neg(p);
}

MP_INLINE ff dd_sin(ff x) {
  return dd_sin_quarter_turns(x, 0);
}

MP_INLINE ff dd_cos(ff x) {
  return dd_sin_quarter_turns(x, 1);
}

// exp(y) - 1 for 0 <= y < 0.7: y (1 + y/2 + y^2/6 + ...), Taylor to degree
// 17 (no cancellation).
MP_INLINE ff dd_expm1_small(ff y) {
  ff p = ff{2.8114574e-15f, -1.0462085e-22f};
  p = dd_poly_step(p, y, 4.7794773e-14f, 7.625444e-22f);
  p = dd_poly_step(p, y, 7.6471636e-13f, 1.22007105e-20f);
  p = dd_poly_step(p, y, 1.1470745e-11f, 2.3722077e-19f);
  p = dd_poly_step(p, y, 1.6059044e-10f, -5.3525265e-18f);
  return dd_mul(dd_exp_taylor_steps(p, y), y);
}

// tanh(x) = e / (e + 2) with e = expm1(2|x|) (no cancellation for small x);
// 1 - 2 exp(-2|x|) above |x| = 10.
MP_INLINE ff dd_tanh(ff x) {
  const bool negative = x.hi < 0.0f;
  const ff a = negative ? dd_neg(x) : x;
  ff t;
  if (a.hi > 10.0f) {
    t = dd_sub(dd_from_float(1.0f), dd_scale(dd_exp(dd_scale(a, -2.0f)), 2.0f));
  } else {
    const ff y = dd_scale(a, 2.0f);
    const ff e = y.hi < 0.7f ? dd_expm1_small(y)
                             : dd_sub(dd_exp(y), dd_from_float(1.0f));
    t = dd_div(e, dd_add(e, dd_from_float(2.0f)));
  }
  return negative ? dd_neg(t) : t;
}

// erf(z) for |z| < 0.5: z times the Taylor series in z^2 (degree 23 in z).
MP_INLINE ff dd_erf_small(ff z) {
  const ff z2 = dd_mul(z, z);
  ff p = ff{-1.2290555e-09f, -6.1504874e-18f};
  p = dd_poly_step(p, z2, 1.4807193e-08f, 1.0657415e-17f);
  p = dd_poly_step(p, z2, -1.6365844e-07f, -5.446863e-15f);
  p = dd_poly_step(p, z2, 1.6462114e-06f, -7.905913e-15f);
  p = dd_poly_step(p, z2, -1.492565e-05f, -1.1021866e-13f);
  p = dd_poly_step(p, z2, 0.000120553326f, 3.5487505e-12f);
  p = dd_poly_step(p, z2, -0.0008548327f, -2.8741498e-14f);
  p = dd_poly_step(p, z2, 0.005223978f, -2.1971996e-10f);
  p = dd_poly_step(p, z2, -0.026866172f, 8.6389623e-10f);
  p = dd_poly_step(p, z2, 0.11283792f, -1.39319e-09f);
  p = dd_poly_step(p, z2, -0.37612638f, -1.0257194e-08f);
  p = dd_poly_step(p, z2, 1.1283792f, -5.8635383e-08f);
  return dd_mul(p, z);
}

// erfcx(a) = exp(a^2) erfc(a) for 0.5 <= a < 3: Taylor of degree 17 about
// the nearest of 0.75, 1.25, ..., 2.75 (|a - centre| <= 0.25, truncation
// < 2^-53).
MP_INLINE ff dd_erfcx_mid(ff a) {
  if (a.hi < 1.0f) {
    const ff d = dd_sub(a, dd_from_float(0.75f));
    ff p = ff{-1.2920526e-07f, -5.2306067e-15f};
    p = dd_poly_step(p, d, 4.3445834e-07f, 6.135629e-15f);
    p = dd_poly_step(p, d, -1.4240885e-06f, -2.064017e-14f);
    p = dd_poly_step(p, d, 4.543733e-06f, -2.0699969e-14f);
    p = dd_poly_step(p, d, -1.4088464e-05f, 1.449408e-13f);
    p = dd_poly_step(p, d, 4.237248e-05f, -1.1631001e-12f);
    p = dd_poly_step(p, d, -0.00012335437f, -1.8235385e-12f);
    p = dd_poly_step(p, d, 0.00034675066f, 1.665011e-12f);
    p = dd_poly_step(p, d, -0.00093851204f, -2.5830135e-11f);
    p = dd_poly_step(p, d, 0.0024376374f, -5.9613835e-11f);
    p = dd_poly_step(p, d, -0.0060515325f, 1.6130541e-10f);
    p = dd_poly_step(p, d, 0.014289198f, 2.2264221e-10f);
    p = dd_poly_step(p, d, -0.03189726f, -3.0090466e-10f);
    p = dd_poly_step(p, d, 0.06679054f, -9.6904e-10f);
    p = dd_poly_step(p, d, -0.12983607f, 5.5624536e-09f);
    p = dd_poly_step(p, d, 0.23095813f, -2.38463e-09f);
    p = dd_poly_step(p, d, -0.3679727f, 1.0132153e-08f);
    p = dd_poly_step(p, d, 0.5069376f, 2.7269158e-08f);
    return p;
  } else if (a.hi < 1.5f) {
    const ff d = dd_sub(a, dd_from_float(1.25f));
    ff p = ff{-1.0518129e-08f, 6.699101e-17f};
    p = dd_poly_step(p, d, 3.8468844e-08f, -3.4556046e-16f);
    p = dd_poly_step(p, d, -1.3749015e-07f, 1.131957e-16f);
    p = dd_poly_step(p, d, 4.7961345e-07f, -1.356412e-14f);
    p = dd_poly_step(p, d, -1.6306929e-06f, -4.614473e-14f);
    p = dd_poly_step(p, d, 5.39566e-06f, 7.641891e-14f);
    p = dd_poly_step(p, d, -1.7344079e-05f, -5.091512e-13f);
    p = dd_poly_step(p, d, 5.405406e-05f, -7.240369e-13f);
    p = dd_poly_step(p, d, -0.00016296002f, 6.2901667e-12f);
    p = dd_poly_step(p, d, 0.0004739703f, -4.206935e-12f);
    p = dd_poly_step(p, d, -0.001325783f, 4.0840376e-11f);
    p = dd_poly_step(p, d, 0.00355311f, -3.8774383e-11f);
    p = dd_poly_step(p, d, -0.009081627f, -3.906673e-10f);
    p = dd_poly_step(p, d, 0.022011364f, 3.72011e-10f);
    p = dd_poly_step(p, d, -0.050218273f, -1.441682e-09f);
    p = dd_poly_step(p, d, 0.10679557f, -2.478432e-10f);
    p = dd_poly_step(p, d, -0.20882188f, 1.8725712e-09f);
    p = dd_poly_step(p, d, 0.36782292f, 1.136733e-09f);
    return p;
  } else if (a.hi < 2.0f) {
    const ff d = dd_sub(a, dd_from_float(1.75f));
    ff p = ff{-1.0409739e-09f, -4.765963e-17f};
    p = dd_poly_step(p, d, 4.1343786e-09f, -1.8538657e-16f);
    p = dd_poly_step(p, d, -1.608344e-08f, -1.361915e-16f);
    p = dd_poly_step(p, d, 6.122105e-08f, -3.0211143e-15f);
    p = dd_poly_step(p, d, -2.2776264e-07f, 2.4891569e-15f);
    p = dd_poly_step(p, d, 8.2713194e-07f, 1.3576026e-14f);
    p = dd_poly_step(p, d, -2.927938e-06f, 4.2159466e-14f);
    p = dd_poly_step(p, d, 1.0086684e-05f, -3.333834e-13f);
    p = dd_poly_step(p, d, -3.3755354e-05f, -1.4584387e-12f);
    p = dd_poly_step(p, d, 0.00010950529f, 1.7948453e-12f);
    p = dd_poly_step(p, d, -0.00034353335f, -4.246985e-12f);
    p = dd_poly_step(p, d, 0.0010392045f, -1.4492225e-11f);
    p = dd_poly_step(p, d, -0.0030209746f, -7.681455e-11f);
    p = dd_poly_step(p, d, 0.008404319f, 3.2741122e-11f);
    p = dd_poly_step(p, d, -0.022259995f, 9.9912634e-11f);
    p = dd_poly_step(p, d, 0.05576363f, 1.7532803e-09f);
    p = dd_poly_step(p, d, -0.13097635f, 3.6008865e-09f);
    p = dd_poly_step(p, d, 0.28497222f, 1.407818e-08f);
    return p;
  } else if (a.hi < 2.5f) {
    const ff d = dd_sub(a, dd_from_float(2.25f));
    ff p = ff{-1.2291534e-10f, -5.631972e-18f};
    p = dd_poly_step(p, d, 5.2904114e-10f, 4.4214115e-18f);
    p = dd_poly_step(p, d, -2.235123e-09f, -8.5575514e-17f);
    p = dd_poly_step(p, d, 9.261356e-09f, -4.963956e-17f);
    p = dd_poly_step(p, d, -3.7601474e-08f, -1.9706044e-16f);
    p = dd_poly_step(p, d, 1.4943281e-07f, 1.872266e-15f);
    p = dd_poly_step(p, d, -5.806334e-07f, 8.717363e-15f);
    p = dd_poly_step(p, d, 2.203022e-06f, 6.2673804e-14f);
    p = dd_poly_step(p, d, -8.150283e-06f, -1.7833569e-13f);
    p = dd_poly_step(p, d, 2.9353247e-05f, 7.1462427e-13f);
    p = dd_poly_step(p, d, -0.00010272108f, 7.728162e-13f);
    p = dd_poly_step(p, d, 0.00034853542f, -2.5183182e-12f);
    p = dd_poly_step(p, d, -0.0011437285f, 1.564703e-11f);
    p = dd_poly_step(p, d, 0.0036189954f, -7.1864605e-11f);
    p = dd_poly_step(p, d, -0.011002061f, 2.0081294e-10f);
    p = dd_poly_step(p, d, 0.03199263f, -1.7597115e-09f);
    p = dd_poly_step(p, d, -0.0884865f, -2.724349e-09f);
    p = dd_poly_step(p, d, 0.23108725f, 6.232719e-09f);
    return p;
  }
  const ff d = dd_sub(a, dd_from_float(2.75f));
  ff p = ff{-1.7014872e-11f, -8.401908e-19f};
  p = dd_poly_step(p, d, 7.9176776e-11f, -1.0420608e-19f);
  p = dd_poly_step(p, d, -3.6236256e-10f, 1.8185622e-18f);
  p = dd_poly_step(p, d, 1.6299112e-09f, 2.8859776e-17f);
  p = dd_poly_step(p, d, -7.199975e-09f, -2.1838083e-16f);
  p = dd_poly_step(p, d, 3.120931e-08f, -6.407242e-16f);
  p = dd_poly_step(p, d, -1.3262544e-07f, 4.3393193e-15f);
  p = dd_poly_step(p, d, 5.519758e-07f, 1.9749664e-14f);
  p = dd_poly_step(p, d, -2.2473735e-06f, 2.6398099e-14f);
  p = dd_poly_step(p, d, 8.9401565e-06f, -4.285938e-13f);
  p = dd_poly_step(p, d, -3.469861e-05f, -6.3525183e-13f);
  p = dd_poly_step(p, d, 0.0001311818f, -4.5149062e-12f);
  p = dd_poly_step(p, d, -0.0004821951f, 1.0976634e-12f);
  p = dd_poly_step(p, d, 0.0017195819f, -9.287335e-12f);
  p = dd_poly_step(p, d, -0.005934338f, 1.883554e-10f);
  p = dd_poly_step(p, d, 0.019758593f, -3.0372138e-10f);
  p = dd_poly_step(p, d, -0.06323764f, -2.7921698e-10f);
  p = dd_poly_step(p, d, 0.19366209f, 4.1894155e-09f);
  return p;
}

// erfcx(a) for a >= 3: the continued fraction
// 1/sqrt(pi) / (a + (1/2)/(a + 1/(a + (3/2)/(a + ...)))), 40 terms,
// evaluated from the tail (converged below 2^-60 at a = 3).
MP_INLINE ff dd_erfcx_large(ff a) {
  ff t = dd_from_float(0.0f);
  for (int n = 40; n >= 1; --n)
    t = dd_div(
        dd_from_float(MP_MULF(0.5f, static_cast<float>(n))), dd_add(a, t));
  return dd_div(ff{0.5641896f, -2.9317691e-08f}, dd_add(a, t));
}

// erfc(z): 1 - erf for |z| < 0.5, exp(-z^2) erfcx(z) above (relative error
// about 2 z^2 2^-48 from the rounding of z^2), 2 - erfc(-z) below -0.5.
MP_INLINE ff dd_erfc(ff z) {
  const ff a = z.hi < 0.0f ? dd_neg(z) : z;
  ff c;
  if (a.hi < 0.5f) {
    c = dd_sub(dd_from_float(1.0f), dd_erf_small(a));
  } else {
    const ff scale = dd_exp(dd_neg(dd_mul(a, a)));
    c = dd_mul(scale, a.hi < 3.0f ? dd_erfcx_mid(a) : dd_erfcx_large(a));
  }
  return z.hi < 0.0f ? dd_sub(dd_from_float(2.0f), c) : c;
}

// torch's exact GELU, x/2 erfc(-x / sqrt 2).
MP_INLINE ff dd_gelu(ff x) {
  const ff z = dd_mul(x, ff{-0.70710677f, -1.21016175e-08f});
  return dd_scale(dd_mul(x, dd_erfc(z)), 0.5f);
}

MP_INLINE ff pair_unary_dd(PairOp op, ff x) {
  switch (op) {
    case PairOp::Gelu:
      return dd_gelu(x);
    case PairOp::Sin:
      return dd_sin(x);
    case PairOp::Exp:
      return dd_exp(x);
    default:
      return dd_tanh(x);
  }
}

// gelu'(x) = erfc(-x / sqrt 2) / 2 + x exp(-x^2 / 2) / sqrt(2 pi): error as
// dd_gelu's, relative to the two terms (gelu' changes sign near x = -0.75).
MP_INLINE ff dd_gelu_derivative(ff x) {
  const ff z = dd_mul(x, ff{-0.70710677f, -1.21016175e-08f});
  const ff density = dd_mul(
      dd_exp(dd_scale(dd_mul(x, x), -0.5f)), ff{0.3989423f, -1.133517e-08f});
  return dd_add(dd_scale(dd_erfc(z), 0.5f), dd_mul(x, density));
}

// tanh'(x) = 1 / cosh(x)^2 = 4 e / (1 + e)^2 with e = exp(-2 |x|): no
// cancellation anywhere (1 - tanh^2 would cancel for large |x|).
MP_INLINE ff dd_tanh_derivative(ff x) {
  const ff e = dd_exp(dd_scale(x.hi < 0.0f ? x : dd_neg(x), 2.0f));
  const ff one_plus_e = dd_add(dd_from_float(1.0f), e);
  return dd_div(dd_scale(e, 4.0f), dd_mul(one_plus_e, one_plus_e));
}

// The binary pair ops in double-word arithmetic; the *Grad ops are y f'(x).
MP_INLINE ff pair_binary_dd(PairOp op, ff x, ff y) {
  switch (op) {
    case PairOp::Add:
      return dd_add(x, y);
    case PairOp::GeluGrad:
      return dd_mul(y, dd_gelu_derivative(x));
    case PairOp::SinGrad:
      return dd_mul(y, dd_cos(x));
    case PairOp::TanhGrad:
      return dd_mul(y, dd_tanh_derivative(x));
    default:
      return dd_mul(x, y);
  }
}

// ---------------------------------------------- one element, any precision
// ---- The elementwise ops in the working precision: double (CPU, CUDA) or
// double-word (Metal).
#if MP_HAS_DOUBLE
MP_INLINE double pair_unary_value(PairOp op, double x) {
  return pair_unary_double(op, x);
}
MP_INLINE double pair_binary_value(PairOp op, double x, double y) {
  return pair_binary_double(op, x, y);
}
#endif
MP_INLINE ff pair_unary_value(PairOp op, ff x) {
  return pair_unary_dd(op, x);
}
MP_INLINE ff pair_binary_value(PairOp op, ff x, ff y) {
  return pair_binary_dd(op, x, y);
}

// One element of PairElementwise in the working precision T, the same code on
// every backend: x (and y when binary) read as pairs, the op, the result as a
// pair.
template <class T>
MP_INLINE ff pair_element(
    PairOp op,
    bool binary,
    float x_hi,
    float x_lo,
    float y_hi,
    float y_lo) {
  const T tag{};
  const T x = r_from_pair(tag, x_hi, x_lo);
  return r_to_pair(
      binary ? pair_binary_value(op, x, r_from_pair(tag, y_hi, y_lo))
             : pair_unary_value(op, x));
}

} // namespace mlx_precise
