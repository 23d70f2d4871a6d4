// The FFT's arithmetic, written once for every precision and every backend:
// real operations overloaded for float (precision="float32"), double
// ("extended" on CPU and CUDA) and ff (double-word, "dd"), the complex
// operations built on them, and the radix-4 / radix-2 butterflies.
//
// The transform is an in-place decimation-in-frequency FFT (natural order in,
// digit-reversed order out) and its exact inverse, a decimation-in-time FFT
// with conjugate twiddles (digit-reversed in, natural out). A convolution
// multiplies spectra in the digit-reversed order and never permutes.
#pragma once

#include "dd.h"

namespace mlx_precise {

// Real arithmetic, overloaded per precision.
MP_INLINE float r_add(float a, float b) {
  return MP_ADDF(a, b);
}
MP_INLINE float r_sub(float a, float b) {
  return MP_SUBF(a, b);
}
MP_INLINE float r_mul(float a, float b) {
  return MP_MULF(a, b);
}
MP_INLINE float r_neg(float a) {
  return -a;
}
MP_INLINE float r_scale(float a, float power_of_two) {
  return MP_MULF(a, power_of_two);
}
MP_INLINE float r_round(float a) {
  return a;
}
// u * d for the fused bias term: in float32 mode one rounded product.
MP_INLINE float r_prod(float tag, float a, float b) {
  return MP_MULF(a, b);
}

#if MP_HAS_DOUBLE
MP_INLINE double r_add(double a, double b) {
  return a + b;
}
MP_INLINE double r_sub(double a, double b) {
  return a - b;
}
MP_INLINE double r_mul(double a, double b) {
  return a * b;
}
MP_INLINE double r_neg(double a) {
  return -a;
}
MP_INLINE double r_scale(double a, float power_of_two) {
  return a * static_cast<double>(power_of_two);
}
MP_INLINE double r_from_float(double tag, float a) {
  return static_cast<double>(a);
}
MP_INLINE float r_round(double a) {
  return static_cast<float>(a);
}
// The product of two floats is exact in double.
MP_INLINE double r_prod(double tag, float a, float b) {
  return static_cast<double>(a) * static_cast<double>(b);
}
#endif

MP_INLINE ff r_add(ff a, ff b) {
  return dd_add(a, b);
}
MP_INLINE ff r_sub(ff a, ff b) {
  return dd_sub(a, b);
}
MP_INLINE ff r_mul(ff a, ff b) {
  return dd_mul(a, b);
}
MP_INLINE ff r_neg(ff a) {
  return dd_neg(a);
}
MP_INLINE ff r_scale(ff a, float power_of_two) {
  return dd_scale(a, power_of_two);
}
MP_INLINE ff r_from_float(ff tag, float a) {
  return dd_from_float(a);
}
MP_INLINE float r_round(ff a) {
  return dd_round(a);
}
// The product of two floats is exact as a pair (TwoProd).
MP_INLINE ff r_prod(ff tag, float a, float b) {
  return two_prod(a, b);
}

MP_INLINE float r_from_float(float tag, float a) {
  return a;
}

// Values carried between ops as float32 pairs (hi, lo), hi = RN(hi + lo)
// (pair_ops.h): read into the working precision, and written back without
// rounding to float32. Only the extended precisions carry pairs.
#if MP_HAS_DOUBLE
MP_INLINE double r_from_pair(double tag, float hi, float lo) {
  return dd_to_double(ff{hi, lo});
}
MP_INLINE ff r_to_pair(double v) {
  return dd_from_double(v);
}
#endif
MP_INLINE ff r_from_pair(ff tag, float hi, float lo) {
  return two_sum(hi, lo);
}
MP_INLINE ff r_to_pair(ff v) {
  return v;
}

// On CUDA aligned to its size, so that a twiddle, a spectrum value or a
// point is one 8- or 16-byte access; size and layout stay those of the host's
// tables.
template <class T>
struct MP_ALIGNED(2 * sizeof(T)) cpx {
  T re;
  T im;
};

template <class T>
MP_INLINE cpx<T> c_add(cpx<T> a, cpx<T> b) {
  return cpx<T>{r_add(a.re, b.re), r_add(a.im, b.im)};
}

template <class T>
MP_INLINE cpx<T> c_sub(cpx<T> a, cpx<T> b) {
  return cpx<T>{r_sub(a.re, b.re), r_sub(a.im, b.im)};
}

template <class T>
MP_INLINE cpx<T> c_mul(cpx<T> a, cpx<T> b) {
  return cpx<T>{
      r_sub(r_mul(a.re, b.re), r_mul(a.im, b.im)),
      r_add(r_mul(a.re, b.im), r_mul(a.im, b.re))};
}

// a * conj(b)
template <class T>
MP_INLINE cpx<T> c_mul_conj(cpx<T> a, cpx<T> b) {
  return cpx<T>{
      r_add(r_mul(a.re, b.re), r_mul(a.im, b.im)),
      r_sub(r_mul(a.im, b.re), r_mul(a.re, b.im))};
}

// Multiplication by -i and +i are exact.
template <class T>
MP_INLINE cpx<T> c_mul_neg_i(cpx<T> a) {
  return cpx<T>{a.im, r_neg(a.re)};
}

template <class T>
MP_INLINE cpx<T> c_mul_pos_i(cpx<T> a) {
  return cpx<T>{r_neg(a.im), a.re};
}

template <class T>
MP_INLINE cpx<T> c_scale(cpx<T> a, float power_of_two) {
  return cpx<T>{r_scale(a.re, power_of_two), r_scale(a.im, power_of_two)};
}

// Radix-4 decimation-in-frequency butterfly: a 4-point DFT of x0..x3
// (stride q apart in the block), then the twiddles w1..w3 = w^j, w^2j, w^3j.
template <class T>
MP_INLINE void dif4(
    MP_THREAD cpx<T>& x0,
    MP_THREAD cpx<T>& x1,
    MP_THREAD cpx<T>& x2,
    MP_THREAD cpx<T>& x3,
    cpx<T> w1,
    cpx<T> w2,
    cpx<T> w3) {
  cpx<T> a0 = c_add(x0, x2);
  cpx<T> a1 = c_sub(x0, x2);
  cpx<T> a2 = c_add(x1, x3);
  cpx<T> a3 = c_mul_neg_i(c_sub(x1, x3));
  x0 = c_add(a0, a2);
  x1 = c_mul(c_add(a1, a3), w1);
  x2 = c_mul(c_sub(a0, a2), w2);
  x3 = c_mul(c_sub(a1, a3), w3);
}

// The same with all twiddles equal to one (the last radix-4 stage).
template <class T>
MP_INLINE void dif4_unit(
    MP_THREAD cpx<T>& x0,
    MP_THREAD cpx<T>& x1,
    MP_THREAD cpx<T>& x2,
    MP_THREAD cpx<T>& x3) {
  cpx<T> a0 = c_add(x0, x2);
  cpx<T> a1 = c_sub(x0, x2);
  cpx<T> a2 = c_add(x1, x3);
  cpx<T> a3 = c_mul_neg_i(c_sub(x1, x3));
  x0 = c_add(a0, a2);
  x1 = c_add(a1, a3);
  x2 = c_sub(a0, a2);
  x3 = c_sub(a1, a3);
}

// Inverse of dif4 times 4: undo the twiddles (conjugates), then a 4-point
// inverse DFT. Applying the stages in reverse order inverts the whole DIF
// transform, digit reversal included, up to the factor N.
template <class T>
MP_INLINE void dit4_inverse(
    MP_THREAD cpx<T>& x0,
    MP_THREAD cpx<T>& x1,
    MP_THREAD cpx<T>& x2,
    MP_THREAD cpx<T>& x3,
    cpx<T> w1,
    cpx<T> w2,
    cpx<T> w3) {
  cpx<T> b1 = c_mul_conj(x1, w1);
  cpx<T> b2 = c_mul_conj(x2, w2);
  cpx<T> b3 = c_mul_conj(x3, w3);
  cpx<T> a0 = c_add(x0, b2);
  cpx<T> a1 = c_sub(x0, b2);
  cpx<T> a2 = c_add(b1, b3);
  cpx<T> a3 = c_mul_pos_i(c_sub(b1, b3));
  x0 = c_add(a0, a2);
  x1 = c_add(a1, a3);
  x2 = c_sub(a0, a2);
  x3 = c_sub(a1, a3);
}

template <class T>
MP_INLINE void dit4_inverse_unit(
    MP_THREAD cpx<T>& x0,
    MP_THREAD cpx<T>& x1,
    MP_THREAD cpx<T>& x2,
    MP_THREAD cpx<T>& x3) {
  cpx<T> a0 = c_add(x0, x2);
  cpx<T> a1 = c_sub(x0, x2);
  cpx<T> a2 = c_add(x1, x3);
  cpx<T> a3 = c_mul_pos_i(c_sub(x1, x3));
  x0 = c_add(a0, a2);
  x1 = c_add(a1, a3);
  x2 = c_sub(a0, a2);
  x3 = c_sub(a1, a3);
}

// Radix-2 stage of block size 2 (its own inverse up to the factor 2).
template <class T>
MP_INLINE void butterfly2(MP_THREAD cpx<T>& x0, MP_THREAD cpx<T>& x1) {
  cpx<T> s = c_add(x0, x1);
  x1 = c_sub(x0, x1);
  x0 = s;
}

} // namespace mlx_precise
