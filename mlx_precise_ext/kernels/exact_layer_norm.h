// The exact last resort of extended layer_norm: a row's outputs that neither
// float64 nor double-word arithmetic certify (layer_norm_certify.h) are rounded
// by exact comparisons with the float32 midpoints. With float32 inputs scaled
// to integers (X = x 2^149, W = w 2^149, B = b 2^149), D the row length and eps
// = E 2^e_eps, everything is an exact integer:
//   S = sum X, N_i = D X_i - S, V0 = D sum X^2 - S^2 >= 0,
//   y_i = w (x_i - mean) / sqrt(var + eps) + b
//       = W N_i 2^-298 / sqrt(V0 2^-298 + D^2 eps) + b,
// and y < m for a midpoint m (= M 2^-150) is, with C = (m - b) 2^150,
// W N / sqrt(V) < C 2^148 (V the denominator's radicand): equal signs decide
// by (W N)^2 against C^2 2^296 V. Bit sizes: W N < 2^(555 + log2 D), the
// shift of (W N)^2 is at most 778 (eps down to 2^-1074), C < 2^280 and V
// < 2^(1330 + 2 log2 D): both sides stay below 2^(1890 + 2 log2 D) < 2^2304.
// Written once against portability.h. Nothing here needs double (eps
// arrives as its integer significand and exponent, ExactEps; the CPU and CUDA
// pass a double through exact_eps) or a lambda (comparisons are functors), so
// that Metal runs every stage too (kernels/layer_norm_pair.h). Rows reach it
// rarely: the limbs live in local memory on a GPU.
#pragma once

#include "certify.h"

namespace mlx_precise {

// An unsigned integer of up to L 32-bit limbs (little-endian): the forward's
// comparisons need kBigLimbs, grad x's kGradXLimbs (a GPU thread keeps them in
// local memory, so each computation uses the smaller size it needs).
constexpr int kBigLimbs = 72;
constexpr int kGradXLimbs = 168;

using BigWord = unsigned MP_INT64;

template <int L>
struct BigNatural {
  unsigned int limb[L];
  int size; // limbs in use; limb[size - 1] != 0 unless size == 0
};

template <int L>
MP_INLINE void big_trim(MP_THREAD BigNatural<L>& a) {
  while (a.size > 0 && a.limb[a.size - 1] == 0)
    --a.size;
}

// v 2^shift.
template <int L>
MP_INLINE BigNatural<L> big_from(BigWord v, int shift) {
  BigNatural<L> a;
  for (int i = 0; i < L; ++i)
    a.limb[i] = 0u;
  const int word = shift / 32, bit = shift % 32;
  for (int i = 0; i < 2; ++i) { // the 32-bit halves of v, shifted
    const BigWord half = ((v >> (32 * i)) & 0xffffffffu) << bit;
    a.limb[word + i] |= static_cast<unsigned int>(half);
    a.limb[word + i + 1] |= static_cast<unsigned int>(half >> 32);
  }
  a.size = word + 3;
  big_trim(a);
  return a;
}

template <int L>
MP_OUTLINE int big_compare(
    const MP_THREAD BigNatural<L>& a,
    const MP_THREAD BigNatural<L>& b) {
  if (a.size != b.size)
    return a.size < b.size ? -1 : 1;
  for (int i = a.size - 1; i >= 0; --i)
    if (a.limb[i] != b.limb[i])
      return a.limb[i] < b.limb[i] ? -1 : 1;
  return 0;
}

template <int L>
MP_OUTLINE BigNatural<L> big_add(
    const MP_THREAD BigNatural<L>& a,
    const MP_THREAD BigNatural<L>& b) {
  BigNatural<L> r;
  BigWord carry = 0;
  const int n = a.size > b.size ? a.size : b.size;
  for (int i = 0; i < n; ++i) {
    carry += static_cast<BigWord>(i < a.size ? a.limb[i] : 0u) +
        (i < b.size ? b.limb[i] : 0u);
    r.limb[i] = static_cast<unsigned int>(carry);
    carry >>= 32;
  }
  r.limb[n] = static_cast<unsigned int>(carry);
  r.size = n + 1;
  big_trim(r);
  return r;
}

// a - b for a >= b.
template <int L>
MP_OUTLINE BigNatural<L> big_subtract(
    const MP_THREAD BigNatural<L>& a,
    const MP_THREAD BigNatural<L>& b) {
  BigNatural<L> r;
  MP_INT64 borrow = 0;
  for (int i = 0; i < a.size; ++i) {
    const MP_INT64 d = static_cast<MP_INT64>(a.limb[i]) -
        (i < b.size ? b.limb[i] : 0u) - borrow;
    borrow = d < 0;
    r.limb[i] = static_cast<unsigned int>(d + (borrow << 32));
  }
  r.size = a.size;
  big_trim(r);
  return r;
}

template <int L>
MP_OUTLINE BigNatural<L> big_multiply(
    const MP_THREAD BigNatural<L>& a,
    const MP_THREAD BigNatural<L>& b) {
  BigNatural<L> r;
  const int n = a.size + b.size;
  for (int i = 0; i < n; ++i)
    r.limb[i] = 0u;
  for (int i = 0; i < a.size; ++i) {
    BigWord carry = 0;
    for (int j = 0; j < b.size; ++j) {
      carry += static_cast<BigWord>(a.limb[i]) * b.limb[j] + r.limb[i + j];
      r.limb[i + j] = static_cast<unsigned int>(carry);
      carry >>= 32;
    }
    r.limb[i + b.size] = static_cast<unsigned int>(carry);
  }
  r.size = n;
  big_trim(r);
  return r;
}

template <int L>
MP_OUTLINE BigNatural<L> big_shift_left(
    const MP_THREAD BigNatural<L>& a,
    int bits) {
  BigNatural<L> r;
  const int word = bits / 32, bit = bits % 32;
  for (int i = 0; i < a.size + word + 1; ++i)
    r.limb[i] = 0u;
  for (int i = 0; i < a.size; ++i) {
    const BigWord v = static_cast<BigWord>(a.limb[i]) << bit;
    r.limb[i + word] |= static_cast<unsigned int>(v);
    r.limb[i + word + 1] |= static_cast<unsigned int>(v >> 32);
  }
  r.size = a.size + word + 1;
  big_trim(r);
  return r;
}

template <int L>
MP_INLINE bool big_bit(const MP_THREAD BigNatural<L>& a, int bit) {
  return bit / 32 < a.size && ((a.limb[bit / 32] >> (bit % 32)) & 1u) != 0u;
}

template <int L>
MP_INLINE int big_bit_length(const MP_THREAD BigNatural<L>& a) {
  if (a.size == 0)
    return 0;
  int bits = 32 * (a.size - 1);
  for (unsigned int top = a.limb[a.size - 1]; top != 0u; top >>= 1)
    ++bits;
  return bits;
}

// floor(a / b) for b > 0, one quotient bit at a time (rare paths only).
template <int L>
MP_OUTLINE BigNatural<L> big_divide(
    const MP_THREAD BigNatural<L>& a,
    const MP_THREAD BigNatural<L>& b) {
  BigNatural<L> q = big_from<L>(0, 0), r = big_from<L>(0, 0);
  for (int bit = big_bit_length(a) - 1; bit >= 0; --bit) {
    r = big_shift_left(r, 1);
    if (big_bit(a, bit)) {
      r.limb[0] |= 1u;
      if (r.size == 0)
        r.size = 1;
    }
    if (big_compare(r, b) >= 0) {
      r = big_subtract(r, b);
      q.limb[bit / 32] |= 1u << (bit % 32);
      if (q.size <= bit / 32)
        q.size = bit / 32 + 1;
    }
  }
  return q;
}

// floor(sqrt(a)), two bits of a per result bit (rare paths only).
template <int L>
MP_OUTLINE BigNatural<L> big_square_root(const MP_THREAD BigNatural<L>& a) {
  BigNatural<L> rest = a, root = big_from<L>(0, 0);
  for (int bit = (big_bit_length(a) - 1) & ~1; bit >= 0; bit -= 2) {
    // root holds the result's bits above bit / 2, times 2^(bit / 2 + 1).
    const BigNatural<L> trial = big_add(root, big_from<L>(1, bit));
    BigNatural<L> half = root;
    for (int i = 0; i < half.size; ++i) // root / 2
      half.limb[i] = (half.limb[i] >> 1) |
          (i + 1 < half.size ? half.limb[i + 1] << 31 : 0u);
    big_trim(half);
    if (big_compare(rest, trial) >= 0) {
      rest = big_subtract(rest, trial);
      root = big_add(half, big_from<L>(1, bit));
    } else {
      root = half;
    }
  }
  return root;
}

// A signed integer: sign and magnitude.
template <int L>
struct BigInteger {
  BigNatural<L> magnitude;
  bool negative;
};

template <int L>
MP_INLINE int big_sign(const MP_THREAD BigInteger<L>& a) {
  return a.magnitude.size == 0 ? 0 : (a.negative ? -1 : 1);
}

template <int L>
MP_OUTLINE BigInteger<L> big_add(
    const MP_THREAD BigInteger<L>& a,
    const MP_THREAD BigInteger<L>& b) {
  if (a.negative == b.negative)
    return BigInteger<L>{big_add(a.magnitude, b.magnitude), a.negative};
  if (big_compare(a.magnitude, b.magnitude) >= 0)
    return BigInteger<L>{big_subtract(a.magnitude, b.magnitude), a.negative};
  return BigInteger<L>{big_subtract(b.magnitude, a.magnitude), b.negative};
}

template <int L>
MP_INLINE BigInteger<L> big_negate(BigInteger<L> a) {
  a.negative = !a.negative;
  return a;
}

template <int L>
MP_OUTLINE BigInteger<L> big_multiply(
    const MP_THREAD BigInteger<L>& a,
    const MP_THREAD BigInteger<L>& b) {
  return BigInteger<L>{
      big_multiply(a.magnitude, b.magnitude), a.negative != b.negative};
}

// A finite float32 times 2^shift; shift >= 149 makes it an integer.
template <int L>
MP_OUTLINE BigInteger<L> big_from_float(float x, int shift) {
  const FloatParts p = float_parts(x);
  return BigInteger<L>{big_from<L>(p.mantissa, p.exponent + shift), p.negative};
}

// a with W >= L limbs.
template <int W, int L>
MP_OUTLINE BigNatural<W> big_widen(const MP_THREAD BigNatural<L>& a) {
  BigNatural<W> r;
  for (int i = 0; i < W; ++i)
    r.limb[i] = i < a.size ? a.limb[i] : 0u;
  r.size = a.size;
  return r;
}

// A row's exact statistics (the header comment's S, V and the shift of
// (W N)^2 that puts both sides of a comparison on one scale).
template <int L>
struct ExactLayerNormRow {
  BigInteger<L> sum;
  BigNatural<L> radicand;
  int square_shift;
  MP_INT64 dim;
};

// eps = integer 2^exponent exactly, integer < 2^53 (a double's significand
// and exponent; integer = 0 and exponent = -298 for eps = 0). Metal, without
// double, receives it from the host.
struct ExactEps {
  BigWord integer;
  int exponent;
};

// Requires finite x and eps, and V > 0 (eps > 0 or a non-constant row).
// x(i) returns the row's element i.
template <int L, class Row>
MP_INLINE ExactLayerNormRow<L>
exact_layer_norm_row(Row x, MP_INT64 dim, ExactEps eps) {
  BigInteger<L> sum{big_from<L>(0, 0), false};
  BigNatural<L> squares = big_from<L>(0, 0);
  for (MP_INT64 i = 0; i < dim; ++i) {
    const BigInteger<L> v = big_from_float<L>(x(i), 149);
    sum = big_add(sum, v);
    squares = big_add(squares, big_multiply(v.magnitude, v.magnitude));
  }
  const BigNatural<L> d = big_from<L>(static_cast<BigWord>(dim), 0);
  // V0 = D sum X^2 - S^2 at 2^-298.
  const BigNatural<L> v0 = big_subtract(
      big_multiply(d, squares), big_multiply(sum.magnitude, sum.magnitude));
  // V = V0 2^(-298 - ev) + D^2 E 2^(e - ev) at 2^ev, ev = min(-298, e).
  const int ev = eps.exponent < -298 ? eps.exponent : -298;
  const BigNatural<L> d_squared = big_multiply(d, d);
  const BigNatural<L> eps_part = big_from<L>(eps.integer, 0);
  const BigNatural<L> radicand = big_add(
      big_shift_left(v0, -298 - ev),
      big_shift_left(big_multiply(d_squared, eps_part), eps.exponent - ev));
  return ExactLayerNormRow<L>{sum, radicand, -296 - ev, dim};
}

#if MP_HAS_DOUBLE
// eps's exact parts, read from its bits (e >= -1074).
MP_INLINE ExactEps exact_eps(double eps) {
  const BigWord bits = MP_DOUBLE_BITS(eps);
  const int biased = static_cast<int>((bits >> 52) & 0x7ff);
  BigWord integer = bits & ((static_cast<BigWord>(1) << 52) - 1);
  if (biased != 0)
    integer |= static_cast<BigWord>(1) << 52;
  return ExactEps{
      integer, integer == 0 ? -298 : (biased != 0 ? biased - 1075 : -1074)};
}

template <int L, class Row>
MP_INLINE ExactLayerNormRow<L>
exact_layer_norm_row(Row x, MP_INT64 dim, double eps) {
  return exact_layer_norm_row<L>(x, dim, exact_eps(eps));
}
#endif

// Ordinal k of the float32 values in increasing order: k = bits for
// k >= 0, -bits(-value) below; +-0x7f800000 stands for +-2^128, the
// rounding's overflow threshold lying halfway from FLT_MAX to it.
constexpr MP_INT64 kFloatOrdinalTop = 0x7f800000;

MP_INLINE MP_INT64 float_ordinal(float v) {
  const unsigned int bits = MP_FLOAT_BITS(v);
  const MP_INT64 magnitude = bits & 0x7fffffffu;
  return (bits >> 31) != 0u ? -magnitude : magnitude;
}

MP_INLINE float float_from_ordinal(MP_INT64 k) {
  const unsigned int magnitude = static_cast<unsigned int>(k < 0 ? -k : k);
  return MP_BITS_FLOAT(magnitude | (k < 0 ? 0x80000000u : 0u));
}

template <int L>
MP_INLINE BigInteger<L> float_ordinal_scaled(MP_INT64 k) {
  if (k == kFloatOrdinalTop || k == -kFloatOrdinalTop)
    return BigInteger<L>{big_from<L>(1, 128 + 149), k < 0};
  return big_from_float<L>(float_from_ordinal(k), 149);
}

// An output whose product n w is exactly zero (N = 0: x equals the mean, and
// x - mean is +0; or w = +-0), as IEEE arithmetic on exact operands gives it:
// +-0 with the sign of N times w's, then + b (b = -0 stands for no bias: p +
// -0 = p). A nonzero product that b cancels gives +0. Every stage of the
// certification follows this rule, so that backends agree on zeros as well.
MP_INLINE float
layer_norm_exact_zero(bool numerator_negative, float w, float b) {
  const bool negative = numerator_negative != ((MP_FLOAT_BITS(w) >> 31) != 0u);
  return MP_ADDF(negative ? -0.0f : 0.0f, b);
}

// N = D X - S for the row's element x (at 2^-149).
template <int L>
MP_INLINE BigInteger<L> exact_numerator(
    const MP_THREAD ExactLayerNormRow<L>& row,
    float x) {
  return big_add(
      big_multiply(
          BigInteger<L>{big_from<L>(static_cast<BigWord>(row.dim), 0), false},
          big_from_float<L>(x, 149)),
      big_negate(row.sum));
}

// The float32 nearest to a real y (ties to even), from compare(M), the sign
// of y - M 2^-150 for an integer M (the midpoints, and 0), starting from the
// candidate `guess`: two comparisons when it is right, else a bisection over
// the float32 ordinals on the side they point to (<= 32 steps). Past the
// midpoint from FLT_MAX to 2^128 it is +-inf; a zero result takes y's sign,
// +0 for y = 0 exactly.
// (A function, not a lambda: Metal has none.)
template <int L, class Compare>
MP_INLINE bool at_or_below_midpoint(Compare compare, MP_INT64 k) {
  // Whether y lies below the midpoint above ordinal k, or on it with k even
  // (round half to even; 2^128 counts as even).
  if (k >= kFloatOrdinalTop)
    return true;
  const int s = compare(
      big_add(float_ordinal_scaled<L>(k), float_ordinal_scaled<L>(k + 1)));
  return s < 0 || (s == 0 && (k & 1) == 0);
}

template <int L, class Compare>
MP_INLINE float round_by_midpoints(Compare compare, float guess) {
  // The answer is the least k at or below its upper midpoint.
  const MP_INT64 top = kFloatOrdinalTop;
  const MP_INT64 k = guess == guess ? float_ordinal(guess) : 0;
  MP_INT64 lo = -top, hi = top;
  if (at_or_below_midpoint<L>(compare, k)) {
    if (k == -top || !at_or_below_midpoint<L>(compare, k - 1))
      lo = hi = k;
    else
      hi = k - 1;
  } else {
    lo = k + 1;
  }
  while (lo < hi) {
    const MP_INT64 mid = lo + (hi - lo) / 2;
    if (at_or_below_midpoint<L>(compare, mid))
      hi = mid;
    else
      lo = mid + 1;
  }
  if (lo == 0)
    return compare(BigInteger<L>{big_from<L>(0, 0), false}) < 0 ? -0.0f : 0.0f;
  return float_from_ordinal(lo);
}

// Sign of y - m for m = m_scaled 2^-150, y = w N / sqrt(V) + b: with wn = W N
// (its sign wn_sign), lhs = (W N)^2 at the comparison's scale and b_scaled =
// b 2^150, the signs of W N and of c = m - b, then (W N)^2 against c^2 V.
template <int L>
struct OutputMidpointCompare {
  int wn_sign;
  const MP_THREAD BigNatural<L>* lhs;
  const MP_THREAD BigNatural<L>* radicand;
  const MP_THREAD BigInteger<L>* b_scaled;

  int operator()(BigInteger<L> m_scaled) const {
    const BigInteger<L> c = big_add(m_scaled, big_negate(*b_scaled));
    const int c_sign = big_sign(c);
    if (wn_sign != c_sign)
      return wn_sign > c_sign ? 1 : -1;
    const BigNatural<L> c_squared = big_multiply(c.magnitude, c.magnitude);
    const int cmp = big_compare(*lhs, big_multiply(c_squared, *radicand));
    return wn_sign > 0 ? cmp : -cmp;
  }
};

// The correctly rounded float32 of y = w N / sqrt(V) + b for the row's
// element x (w = 1 when absent, b = -0), starting from the candidate `guess`
// (the last stage's value): sign comparisons, then squares.
template <int L>
MP_INLINE float exact_layer_norm_output(
    const MP_THREAD ExactLayerNormRow<L>& row,
    float x,
    float w,
    float b,
    float guess) {
  const BigInteger<L> n = exact_numerator(row, x);
  const BigInteger<L> wn = big_multiply(big_from_float<L>(w, 149), n);
  const int wn_sign = big_sign(wn);
  if (wn_sign == 0) // y = +-0 + b exactly
    return layer_norm_exact_zero(big_sign(n) < 0, w, b);
  const BigNatural<L> lhs = big_shift_left(
      big_multiply(wn.magnitude, wn.magnitude), row.square_shift);
  const BigInteger<L> b_scaled = big_from_float<L>(b, 150);
  const OutputMidpointCompare<L> compare{
      wn_sign, &lhs, &row.radicand, &b_scaled};
  return round_by_midpoints<L>(compare, guess);
}

// Sign of y - m for m = m_scaled 2^-150 and y = sign sqrt(lhs / factor) at
// m's scale (lhs and factor put on one scale by the caller): the signs, then
// lhs against m^2 factor. grad x's comparisons (lhs = (Q 2^h)^2, factor =
// V^3) and grad weight's single class (lhs = (N 2^h)^2, factor = P^2 V).
template <int L>
struct SquaredMidpointCompare {
  int sign;
  const MP_THREAD BigNatural<L>* lhs;
  const MP_THREAD BigNatural<L>* factor;

  int operator()(BigInteger<L> m_scaled) const {
    const int m_sign = big_sign(m_scaled);
    if (sign != m_sign)
      return sign > m_sign ? 1 : -1;
    if (sign == 0)
      return 0;
    const int cmp = big_compare(
        *lhs,
        big_multiply(
            big_multiply(m_scaled.magnitude, m_scaled.magnitude), *factor));
    return sign > 0 ? cmp : -cmp;
  }
};

// ---------------------------------------------------------------- grad x ----
// grad x's exact last resort (layer_norm_certify.h has its float64 stage).
// With GW_j = g_j w_j 2^298 (integers), G = sum GW, A_i = D GW_i - G,
// P = sum GW_j N_j and the forward's radicand V at 2^ev (ev made even by
// doubling V),
//   grad x_i = inv_std ((gw_i - mean gw) - n_i mean(gw n))
//            = Q_i 2^(-ev/2 - 298) / V^(3/2),  Q_i = A_i V - N_i P 2^(-298 -
//            ev),
// so grad x < m = M 2^-150 is Q 2^h < M V sqrt(V), h = -ev/2 - 148 >= 1:
// signs, then (Q 2^h)^2 against M^2 V^3. Q 2^h < 2^(2280 + 3 log2 D) and
// M^2 V^3 < 2^(4550 + 6 log2 D): within kBigLimbs for D < 2^24.
struct ExactGradXRow {
  ExactLayerNormRow<kGradXLimbs>
      row; // S, and V at 2^ev (ev even; square_shift unused)
  BigNatural<kGradXLimbs> cubed; // V^3
  BigInteger<kGradXLimbs> gw_sum; // G
  BigInteger<kGradXLimbs> gwn_sum; // P
  int h;
  int p_shift; // -298 - ev
};

// Fills r from x(j), g(j), w(j): the row's elements, its cotangent and the
// weight (1 without), in place (the struct is large: a GPU thread keeps one).
// Requires finite inputs and V > 0.
template <class Row, class Grad, class Weight>
MP_INLINE void exact_grad_x_row(
    Row x,
    Grad g,
    Weight w,
    MP_INT64 dim,
    ExactEps eps,
    MP_THREAD ExactGradXRow& r) {
  constexpr int L = kGradXLimbs;
  r.row = exact_layer_norm_row<L>(x, dim, eps);
  int ev = -296 - r.row.square_shift;
  if ((ev & 1) != 0) {
    r.row.radicand = big_shift_left(r.row.radicand, 1);
    --ev;
  }
  r.h = -ev / 2 - 148;
  r.p_shift = -298 - ev;
  r.cubed = big_multiply(
      big_multiply(r.row.radicand, r.row.radicand), r.row.radicand);
  r.gw_sum = BigInteger<L>{big_from<L>(0, 0), false};
  r.gwn_sum = BigInteger<L>{big_from<L>(0, 0), false};
  for (MP_INT64 j = 0; j < dim; ++j) {
    const BigInteger<L> gw = big_multiply(
        big_from_float<L>(g(j), 149), big_from_float<L>(w(j), 149));
    r.gw_sum = big_add(r.gw_sum, gw);
    r.gwn_sum =
        big_add(r.gwn_sum, big_multiply(gw, exact_numerator(r.row, x(j))));
  }
}

#if MP_HAS_DOUBLE
template <class Row, class Grad, class Weight>
MP_INLINE void exact_grad_x_row(
    Row x,
    Grad g,
    Weight w,
    MP_INT64 dim,
    double eps,
    ExactGradXRow& r) {
  exact_grad_x_row(x, g, w, dim, exact_eps(eps), r);
}
#endif

// The correctly rounded grad x for the row's element x (cotangent g, weight
// w), from the candidate `guess`; +0 for an exact zero.
MP_INLINE float exact_grad_x_output(
    const MP_THREAD ExactGradXRow& r,
    float x,
    float g,
    float w,
    float guess) {
  constexpr int L = kGradXLimbs;
  const BigInteger<L> gw =
      big_multiply(big_from_float<L>(g, 149), big_from_float<L>(w, 149));
  const BigInteger<L> a = big_add(
      big_multiply(
          BigInteger<L>{big_from<L>(static_cast<BigWord>(r.row.dim), 0), false},
          gw),
      big_negate(r.gw_sum));
  const BigInteger<L> np = big_multiply(exact_numerator(r.row, x), r.gwn_sum);
  const BigInteger<L> q = big_add(
      big_multiply(a, BigInteger<L>{r.row.radicand, false}),
      big_negate(
          BigInteger<L>{big_shift_left(np.magnitude, r.p_shift), np.negative}));
  const BigNatural<L> q_scaled = big_shift_left(q.magnitude, r.h);
  const BigNatural<L> lhs = big_multiply(q_scaled, q_scaled);
  const SquaredMidpointCompare<L> compare{big_sign(q), &lhs, &r.cubed};
  return round_by_midpoints<L>(compare, guess);
}

// ------------------------------------------------------------ grad weight ----
// grad weight's exact last resort (layer_norm_certify.h has stages 1 and 2).
// Row r's normalised input is n_r = N_r 2^(-149 - ev/2) / sqrt(V_r), with
// the forward's N and V at 2^ev, ev the same for every row (it depends on
// eps only; made even by doubling every V). With G_r = g_r 2^149,
//   dw = 2^(-298 - ev/2) sum_k Q_k / sqrt(V_k),  Q_k = sum over the rows
//   with radicand V_k of G_r N_r,
// the rows grouped by equal radicand (rows with the same variance: repeated,
// permuted or shifted rows). With no group left (every Q_k = 0) dw is an
// exact zero: +0, as the IEEE sum of exact terms from +0 gives. With one, dw
// < m = M 2^-150 is Q 2^h < M sqrt(V), h = -148 - ev/2 >= 1: signs, then
// (Q 2^h)^2 against M^2 V (Q < 2^(610) for 2^31 rows, h <= 390: both sides
// below 2^2000). Two or more groups: those whose radicands are rational
// squares of one another share one square root (weight_grad_by_classes:
// decided exactly when one class is left); square roots of different classes
// are linearly independent, so a sum over two or more classes is irrational,
// never a midpoint or zero, and weight_grad_by_enclosures separates it from the
// midpoints. What stays open (the double-word value, within its bound;
// docs/certification.md): columns fed by more than kWeightGradGroups
// variances, or whose class integers outgrow kGradXLimbs, that the bounds do
// not separate.
constexpr int kWeightGradGroups = 4;

struct ExactWeightGradGroup {
  BigNatural<kBigLimbs> radicand;
  BigInteger<kBigLimbs> sum;
};

// Rows of two or more variances: each row's term U_r = G_r N_r 2^h / sqrt(V_r)
// (dw = U 2^-150 summed over the rows) enclosed by integers at 2^-F, A_r =
// floor(|U_r| 2^F) = isqrt(floor((G_r N_r 2^(h + F))^2 / V_r)), so that sum U
// 2^F lies within [sum s_r A_r - (negative terms), sum s_r A_r + (positive
// terms)]; the midpoints outside that interval are decided. F = 1536 resolves
// 2^-1686 of dw, far below the distance eps = 2^-1074 can put between a sum
// and the midpoint it would hit without eps (eps / var >= 2^-1330). Sums on a
// midpoint (reaching here only past weight_grad_by_classes' limits) and sums
// closer than that stay open (false; the double-word value). Most sums lie
// far from every midpoint: weight_grad_by_enclosures tries a few bits first,
// which costs about a tenth (the division and square root run a bit at a time
// over numbers of about 1000 + 2F bits).
// Bit sizes: (G N 2^(h + F))^2 < 2^(2 (610 + 390 + 1536)) < 2^5376 =
// kGradXLimbs.
constexpr int kWeightGradBits = 1536;

// Sign of dw - m for m = m_scaled 2^-150 from the enclosure of dw 2^F:
// [total - below, total + above]; 0 (and *decided = false) when it holds m.
struct WeightGradBoundsCompare {
  const MP_THREAD BigInteger<kGradXLimbs>* total;
  int above;
  int below;
  int fraction_bits; // F
  MP_THREAD bool* decided;

  int operator()(BigInteger<kBigLimbs> m_scaled) const {
    constexpr int L = kGradXLimbs;
    const BigInteger<L> m{
        big_shift_left(big_widen<L>(m_scaled.magnitude), fraction_bits),
        m_scaled.negative};
    const BigInteger<L> gap = big_add(*total, big_negate(m)); // U 2^F - m 2^F
    const BigInteger<L> lo = big_add(
        gap, BigInteger<L>{big_from<L>(static_cast<BigWord>(below), 0), true});
    const BigInteger<L> hi = big_add(
        gap, BigInteger<L>{big_from<L>(static_cast<BigWord>(above), 0), false});
    if (big_sign(lo) > 0)
      return 1;
    if (big_sign(hi) < 0)
      return -1;
    *decided = false;
    return 0;
  }
};

template <class ExactRow, class XEntry, class GEntry>
MP_INLINE bool weight_grad_by_bounds(
    ExactRow exact_row,
    XEntry x,
    GEntry g,
    MP_INT64 rows,
    int fraction_bits,
    float guess,
    MP_THREAD float* out) {
  constexpr int L = kGradXLimbs;
  BigInteger<L> total{big_from<L>(0, 0), false};
  int above = 0, below = 0; // terms whose floor is below / above them
  for (MP_INT64 r = 0; r < rows; ++r) {
    if (g(r) == 0.0f)
      continue;
    ExactLayerNormRow<kBigLimbs> row;
    exact_row(r, row);
    const BigInteger<kBigLimbs> term = big_multiply(
        big_from_float<kBigLimbs>(g(r), 149), exact_numerator(row, x(r)));
    if (big_sign(term) == 0)
      continue;
    int ev = -296 - row.square_shift;
    BigNatural<L> radicand = big_widen<L>(row.radicand);
    if ((ev & 1) != 0) {
      radicand = big_shift_left(radicand, 1);
      --ev;
    }
    const BigNatural<L> scaled = big_shift_left(
        big_widen<L>(term.magnitude), -148 - ev / 2 + fraction_bits);
    const BigNatural<L> floor_term =
        big_square_root(big_divide(big_multiply(scaled, scaled), radicand));
    total = big_add(total, BigInteger<L>{floor_term, term.negative});
    ++(term.negative ? below : above);
  }
  bool decided = true;
  const WeightGradBoundsCompare compare{
      &total, above, below, fraction_bits, &decided};
  const float rounded = round_by_midpoints<kBigLimbs>(compare, guess);
  if (decided)
    *out = rounded;
  return decided;
}

// weight_grad_by_bounds at F enough to resolve 2^-64 of the guess's magnitude
// (0 for a guess of 1 and a few thousand rows; 2^-149 stands for a zero
// guess) over the rows' floors, then, if that leaves a midpoint inside, at
// kWeightGradBits. Either decides only what is exactly so.
template <class ExactRow, class XEntry, class GEntry>
MP_INLINE bool weight_grad_by_enclosures(
    ExactRow exact_row,
    XEntry x,
    GEntry g,
    MP_INT64 rows,
    float guess,
    MP_THREAD float* out) {
  const FloatParts p = float_parts(guess);
  int top = p.exponent; // |guess| < 2^top (-149 for 0)
  for (unsigned int m = p.mantissa; m != 0u; m >>= 1)
    ++top;
  int rows_bits = 0;
  for (MP_INT64 r = rows; r != 0; r >>= 1)
    ++rows_bits;
  int coarse = rows_bits + 64 - 150 - top; // rows 2^-F <= 2^(top + 150 - 64)
  coarse =
      coarse < 0 ? 0 : (coarse > kWeightGradBits ? kWeightGradBits : coarse);
  return weight_grad_by_bounds(exact_row, x, g, rows, coarse, guess, out) ||
      (coarse < kWeightGradBits &&
       weight_grad_by_bounds(
           exact_row, x, g, rows, kWeightGradBits, guess, out));
}

// Step 3 on the groups of one column (radicand V_k, sum Q_k): groups whose
// radicands are rational squares of one another (V_j V_k a perfect square s^2,
// as rows x and 2x with eps = 0) share one square root, sqrt(V_k) = (s / V_j)
// sqrt(V_j), so they form classes, each worth C / sqrt(V_base) with the
// rational C = sum Q_k V_base / s_k = N / P. By Besicovitch's theorem the
// square roots of different classes are linearly independent over the
// rationals: with two or more classes of C != 0, dw is irrational (never a
// midpoint or zero), left to weight_grad_by_enclosures (false). With none, dw
// is an exact +0; with one, dw < m = M 2^-150 is N 2^h < M P sqrt(V_base):
// signs, then (N 2^h)^2 against M^2 P^2 V_base, ties to even. False too when a
// class's integers outgrow kGradXLimbs (three or more related groups at large
// eps shifts).
MP_INLINE bool weight_grad_by_classes(
    const MP_THREAD ExactWeightGradGroup* groups,
    int used,
    int h,
    float guess,
    MP_THREAD float* out) {
  constexpr int W = kGradXLimbs;
  constexpr int kMaxBits = 32 * W - 64;
  BigInteger<W> numerator[kWeightGradGroups];
  BigNatural<W> denominator[kWeightGradGroups];
  int base[kWeightGradGroups]; // the classes' first groups
  int classes = 0;
  for (int k = 0; k < used; ++k) {
    const BigNatural<W> v = big_widen<W>(groups[k].radicand);
    const BigInteger<W> q{
        big_widen<W>(groups[k].sum.magnitude), groups[k].sum.negative};
    int c = 0;
    BigNatural<W> root;
    for (; c < classes; ++c) {
      const BigNatural<W> vb = big_widen<W>(groups[base[c]].radicand);
      if (big_bit_length(v) + big_bit_length(vb) > kMaxBits)
        return false;
      const BigNatural<W> product = big_multiply(v, vb);
      root = big_square_root(product);
      if (big_compare(big_multiply(root, root), product) == 0)
        break;
    }
    if (c == classes) { // a class of its own: C = Q_k / 1
      base[c] = k;
      numerator[c] = q;
      denominator[c] = big_from<W>(1, 0);
      ++classes;
      continue;
    }
    // N / P + Q V_base / s = (N s + Q V_base P) / (P s).
    const BigNatural<W> vb = big_widen<W>(groups[base[c]].radicand);
    const BigNatural<W> qv = big_multiply(q.magnitude, vb);
    if (big_bit_length(numerator[c].magnitude) + big_bit_length(root) >
            kMaxBits ||
        big_bit_length(qv) + big_bit_length(denominator[c]) > kMaxBits ||
        big_bit_length(denominator[c]) + big_bit_length(root) > kMaxBits)
      return false;
    numerator[c] = big_add(
        BigInteger<W>{
            big_multiply(numerator[c].magnitude, root), numerator[c].negative},
        BigInteger<W>{big_multiply(qv, denominator[c]), q.negative});
    denominator[c] = big_multiply(denominator[c], root);
  }
  int live = -1;
  for (int c = 0; c < classes; ++c) {
    if (big_sign(numerator[c]) == 0)
      continue;
    if (live >= 0) // irrational
      return false;
    live = c;
  }
  if (live < 0) {
    *out = 0.0f;
    return true;
  }
  const BigInteger<W>& n = numerator[live];
  const BigNatural<W> vb = big_widen<W>(groups[base[live]].radicand);
  const BigNatural<W>& p = denominator[live];
  if (2 * (big_bit_length(n.magnitude) + h) > kMaxBits ||
      2 * big_bit_length(p) + big_bit_length(vb) + 600 > kMaxBits)
    return false;
  const BigNatural<W> n_scaled = big_shift_left(n.magnitude, h);
  const BigNatural<W> lhs = big_multiply(n_scaled, n_scaled);
  const BigNatural<W> p_squared_v = big_multiply(big_multiply(p, p), vb);
  const SquaredMidpointCompare<W> compare{big_sign(n), &lhs, &p_squared_v};
  *out = round_by_midpoints<W>(compare, guess);
  return true;
}

// The correctly rounded grad weight of one column from the candidate `guess`,
// or false when undecided. exact_row(r, row) fills row r's exact statistics
// (exact_layer_norm_row<kBigLimbs>), x(r) and g(r) are the column's entries;
// all finite.
template <class ExactRow, class XEntry, class GEntry>
MP_INLINE bool exact_weight_grad_output(
    ExactRow exact_row,
    XEntry x,
    GEntry g,
    MP_INT64 rows,
    float guess,
    MP_THREAD float* out) {
  constexpr int L = kBigLimbs;
  ExactWeightGradGroup groups[kWeightGradGroups];
  int used = 0, h = 0;
  for (MP_INT64 r = 0; r < rows; ++r) {
    if (g(r) == 0.0f)
      continue;
    ExactLayerNormRow<L> row;
    exact_row(r, row);
    if (row.radicand.size == 0) // eps = 0 and a constant row: 0 / 0
      return false;
    const BigInteger<L> term =
        big_multiply(big_from_float<L>(g(r), 149), exact_numerator(row, x(r)));
    if (big_sign(term) == 0)
      continue;
    int ev = -296 - row.square_shift;
    if ((ev & 1) != 0) {
      row.radicand = big_shift_left(row.radicand, 1);
      --ev;
    }
    h = -148 - ev / 2;
    int k = 0;
    while (k < used && big_compare(groups[k].radicand, row.radicand) != 0)
      ++k;
    if (k == kWeightGradGroups)
      return weight_grad_by_enclosures(exact_row, x, g, rows, guess, out);
    if (k == used) {
      groups[k].radicand = row.radicand;
      groups[k].sum = BigInteger<L>{big_from<L>(0, 0), false};
      ++used;
    }
    groups[k].sum = big_add(groups[k].sum, term);
  }
  return weight_grad_by_classes(groups, used, h, guess, out) ||
      weight_grad_by_enclosures(exact_row, x, g, rows, guess, out);
}

} // namespace mlx_precise
