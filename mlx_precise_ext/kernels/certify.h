// Correct rounding for every finite input: the certification arithmetic of the
// extended and dd modes, written once for C++, CUDA and Metal (portability.h).
//
// A fast path (an FFT, a float64 GEMM) returns an approximation v of each
// output together with a rigorous bound err on |v - exact|. When every real in
// [v - err, v + err] rounds to one float32, that float is the correctly
// rounded output (certified_round). Outputs that do not certify are recomputed
// as a dot product of float32 pairs, accumulated exactly (ExactSum) and
// rounded once. Exact zeros, ties, subnormal results and overflow all come out
// of that one rounding (round half to even; +0 for an exact zero).
//
// Interface for a backend (the CPU engine in backend/cpu/ is the reference):
//   1. Next to the transform, per output row: the row norms ||a||_2, ||b||_2
//      (in double), and err = conv_error_bound(fft_size, terms, u) times the
//      sum over the row's terms of ||a|| ||b||, plus kUnderflowError64 per
//      term; twice that where two cyclic entries are folded into one output.
//   2. Per output: v in double (the transform's value plus the bias products,
//      each exact in double), then certified_round(v, err + u |v| per later
//      addition, &out). An output that returns false goes on a list of
//      (row, t); rows with a NaN/Inf input keep the transform's value
//      (nothing to certify).
//   3. A separate pass over that list: the output's products (entries i of
//      the size-n cyclic convolution, for_each_cyclic_range, then the bias
//      products) summed in double by RunningSum and certified with its running
//      error bound (running_round);
//      in the rare case that fails too, summed by ExactSum and rounded
//      (exact_sum_round). ExactSum needs no double: Metal can run it as is.
// Metal has no double: steps 1-2 there are in float pairs (certify_pair.h for
// rfft_conv, addmm_pair.h for addmm; round_pair.h has certified_round_pair).
#pragma once

#include "portability.h"

namespace mlx_precise {

// ----------------------------------------------------------- ExactSum ----
// A sum of products of float32 values held exactly, as a fixed-point number
// of kExactLimbs 32-bit digits (limb i weighs 2^(32 i + kExactBase + scale)).
// A float32 is M 2^q with an integer M < 2^24 and q in [-149, 104], so a
// product is an integer below 2^48 times 2^q, q in [-298, 208]; sums of up to
// 2^31 of them stay below 2^287. Limbs are int64 so that additions need no
// carry propagation: each adds less than 2^33 in magnitude, and the carries
// are propagated every kExactCarryEvery additions. exact_sum_scale multiplies
// by a float (addmm's alpha); beta*c is then added at its place relative to
// the scale: the bits in use then span [-402, 822] - kExactBase (see there).
enum : int { kExactLimbs = 28, kExactBase = -416, kExactCarryEvery = 1 << 29 };

using ExactWord = unsigned MP_INT64;

struct ExactSum {
  MP_INT64 limb[kExactLimbs];
  int scale;
  int pending;
  // The IEEE sum of the terms with an Inf or NaN factor (0 when none): such a
  // term decides the result, as it would in any float summation.
  float special;
};

MP_INLINE void exact_sum_init(MP_THREAD ExactSum& s) {
  for (int i = 0; i < kExactLimbs; ++i)
    s.limb[i] = 0;
  s.scale = 0;
  s.pending = 0;
  s.special = 0.0f;
}

// Leaves every limb but the last in [0, 2^32); the last carries the sign.
MP_INLINE void exact_sum_carry(MP_THREAD ExactSum& s) {
  for (int i = 0; i + 1 < kExactLimbs; ++i) {
    const MP_INT64 carry = s.limb[i] >> 32; // floor(limb / 2^32)
    s.limb[i] &= static_cast<MP_INT64>(0xffffffffu);
    s.limb[i + 1] += carry;
  }
  s.pending = 0;
}

// x = (negative ? -1 : 1) * mantissa * 2^exponent, mantissa < 2^24.
struct FloatParts {
  unsigned int mantissa;
  int exponent;
  bool negative;
};

MP_INLINE bool is_finite_bits(unsigned int bits) {
  return (bits & 0x7f800000u) != 0x7f800000u;
}

MP_INLINE FloatParts float_parts(float x) {
  const unsigned int bits = MP_FLOAT_BITS(x);
  const unsigned int biased = (bits >> 23) & 0xffu;
  unsigned int mantissa = bits & 0x7fffffu;
  if (biased != 0u)
    mantissa |= 0x800000u;
  return FloatParts{
      mantissa,
      static_cast<int>(biased != 0u ? biased : 1u) - 150,
      (bits >> 31) != 0u};
}

// s += (negative ? -m : m) * 2^exponent for m < 2^48.
MP_INLINE void exact_sum_add_integer(
    MP_THREAD ExactSum& s,
    ExactWord m,
    int exponent,
    bool negative) {
  const int pos = exponent - kExactBase - s.scale;
  const int i = pos >> 5, shift = pos & 31;
  const ExactWord mask = 0xffffffffu;
  const ExactWord low = (m & mask) << shift; // < 2^63
  const ExactWord high = (m >> 32) << shift; // < 2^47
  MP_INT64 d0 = static_cast<MP_INT64>(low & mask);
  MP_INT64 d1 = static_cast<MP_INT64>((low >> 32) + (high & mask));
  MP_INT64 d2 = static_cast<MP_INT64>(high >> 32);
  if (negative) {
    d0 = -d0;
    d1 = -d1;
    d2 = -d2;
  }
  s.limb[i] += d0;
  s.limb[i + 1] += d1;
  s.limb[i + 2] += d2;
  if (++s.pending == kExactCarryEvery)
    exact_sum_carry(s);
}

// s += a * b, exactly.
MP_INLINE void exact_sum_add_product(MP_THREAD ExactSum& s, float a, float b) {
  if (!is_finite_bits(MP_FLOAT_BITS(a)) || !is_finite_bits(MP_FLOAT_BITS(b))) {
    s.special = MP_ADDF(s.special, MP_MULF(a, b));
    return;
  }
  const FloatParts pa = float_parts(a), pb = float_parts(b);
  if (pa.mantissa == 0u || pb.mantissa == 0u)
    return;
  exact_sum_add_integer(
      s,
      static_cast<ExactWord>(pa.mantissa) * pb.mantissa,
      pa.exponent + pb.exponent,
      pa.negative != pb.negative);
}

// Sign of the exact (finite) part: -1, 0 or 1.
MP_INLINE int exact_sum_sign(MP_THREAD ExactSum& s) {
  exact_sum_carry(s);
  if (s.limb[kExactLimbs - 1] != 0)
    return s.limb[kExactLimbs - 1] < 0 ? -1 : 1;
  for (int i = 0; i < kExactLimbs; ++i)
    if (s.limb[i] != 0)
      return 1;
  return 0;
}

// s *= f, exactly: every digit times f's 24-bit integer, the power of two
// kept in s.scale. An infinite or NaN f scales as IEEE multiplication would.
MP_INLINE void exact_sum_scale(MP_THREAD ExactSum& s, float f) {
  s.special = MP_MULF(s.special, f);
  if (!is_finite_bits(MP_FLOAT_BITS(f))) {
    const float sign = static_cast<float>(exact_sum_sign(s));
    s.special = MP_ADDF(s.special, MP_MULF(f, sign)); // inf * 0 is NaN
    return;
  }
  const FloatParts p = float_parts(f);
  exact_sum_carry(s);
  for (int i = 0; i < kExactLimbs; ++i) {
    const MP_INT64 v = s.limb[i] * static_cast<MP_INT64>(p.mantissa);
    s.limb[i] = p.negative ? -v : v;
  }
  if (p.mantissa != 0u)
    s.scale += p.exponent;
  exact_sum_carry(s);
}

// The float32 nearest to s (ties to even; +0 for an exact zero; +-inf beyond
// the float range, as IEEE rounding gives).
MP_INLINE float exact_sum_round(MP_THREAD ExactSum& s) {
  if (s.special != 0.0f || s.special != s.special)
    return s.special;
  exact_sum_carry(s);
  const bool negative = s.limb[kExactLimbs - 1] < 0;
  if (negative) {
    for (int i = 0; i < kExactLimbs; ++i)
      s.limb[i] = -s.limb[i];
    exact_sum_carry(s);
  }
  int h = kExactLimbs - 1;
  while (h >= 0 && s.limb[h] == 0)
    --h;
  if (h < 0)
    return 0.0f;
  // A 64-bit window of the two leading digits (at least 33 significant bits),
  // the digits below it only as a sticky bit.
  const ExactWord window = (static_cast<ExactWord>(s.limb[h]) << 32) |
      static_cast<ExactWord>(h > 0 ? s.limb[h - 1] : 0);
  bool sticky = false;
  for (int i = 0; i + 1 < h; ++i)
    sticky = sticky || s.limb[i] != 0;
  const int window_lsb = 32 * (h - 1) + kExactBase + s.scale;
  const int top = 63 - MP_CLZ(static_cast<unsigned int>(s.limb[h]));
  const int e = top + window_lsb; // 2^e <= |s| < 2^(e+1)
  const float inf = MP_LDEXPF(1.0f, 128);
  if (e >= 128)
    return negative ? -inf : inf;
  const int lsb = e - 23 > -149 ? e - 23 : -149; // the float's last place
  const int drop = lsb - window_lsb;
  ExactWord mantissa = 0;
  if (drop <= 0) {
    mantissa = window << (-drop); // exact: at most 24 bits
  } else if (drop <= 64) {
    const ExactWord one = 1;
    mantissa = drop == 64 ? 0 : window >> drop;
    const ExactWord rest = drop == 64 ? window : window & ((one << drop) - 1);
    const ExactWord half = one << (drop - 1);
    if (rest > half || (rest == half && (sticky || (mantissa & 1) != 0)))
      ++mantissa;
  } // else |s| < 2^(lsb - 1): rounds to zero
  // mantissa <= 2^24 is a float; the power of two is exact (2^128 is inf).
  const float r = MP_LDEXPF(static_cast<float>(mantissa), lsb);
  return negative ? -r : r;
}

// Entry i of the size-n cyclic convolution of A (A[m] nonzero only for
// m < a_len) and b (b_len <= n taps), x[i] = sum_j A[(i - j) mod n] b[j], as
// at most two ranges of products A[m0 - k] b[j0 + k], k < count: calls
// range(m0, j0, count) for each nonempty one.
template <class Range>
MP_INLINE void for_each_cyclic_range(
    MP_INT64 a_len,
    MP_INT64 b_len,
    MP_INT64 n,
    MP_INT64 i,
    Range range) {
  // j <= i: m = i - j, needs m < a_len.
  const MP_INT64 j0 = i - a_len + 1 > 0 ? i - a_len + 1 : 0;
  const MP_INT64 j_end = i < b_len - 1 ? i : b_len - 1;
  if (j_end >= j0)
    range(i - j0, j0, j_end - j0 + 1);
  // j > i wraps: m = i - j + n, needs m < a_len.
  const MP_INT64 j_wrap = i + n - a_len + 1;
  const MP_INT64 j1 = j_wrap > i + 1 ? j_wrap : i + 1;
  if (j1 < b_len)
    range(i - j1 + n, j1, b_len - j1);
}

// s += sum_{k < count} a(m0 - k) b(j0 + k).
template <class RowA, class RowB>
MP_INLINE void exact_sum_add_range(
    MP_THREAD ExactSum& s,
    RowA a,
    RowB b,
    MP_INT64 m0,
    MP_INT64 j0,
    MP_INT64 count) {
  for (MP_INT64 k = 0; k < count; ++k)
    exact_sum_add_product(s, a(m0 - k), b(j0 + k));
}

#if MP_HAS_DOUBLE

constexpr double kUnitRoundoff64 = 1.1102230246251565e-16; // 2^-53

// gamma_n = n u / (1 - n u) (Higham, Accuracy and Stability of Numerical
// Algorithms, 2nd ed., Lemma 3.1).
MP_INLINE double gamma_n(double n, double u) {
  return n * u / (1.0 - n * u);
}

// gamma_n for double: a sum of n terms of one sign, and an inner product with
// exact products in any order, is off by at most gamma_n sum |terms|.
MP_INLINE double gamma_bound(MP_INT64 n) {
  return gamma_n(static_cast<double>(n), kUnitRoundoff64);
}

// kappa with |x_computed[i] - x[i]| <= kappa ||a||_2 ||b||_2 for every entry
// of the size-N cyclic convolution x computed by rfft_conv's engine (real
// transforms of half length H = N/2 on fft_plan.cpp's stages, packed spectral
// product, inverse), every operation an IEEE rounding with unit roundoff u
// (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed.; full
// derivation in docs/certification.md):
//   - a complex addition errs by at most u |result|; a complex product by
//     c |x y| (complex_product_error), so one with a computed twiddle
//     (|w^ - w| <= u) by tau |x|, tau = u + c (1 + u). Every path through a
//     twiddled radix-4
//     stage passes one twiddle product and two additions, so each output
//     errs by at most eta_4 |S| |x|, 1 + eta_4 = (1 + u)^2 (1 + tau); a
//     unit-twiddle radix-4 stage (1 + u)^2, the radix-2 stage 1 + u;
//   - forward, norm-wise: the additions' errors are relative to their
//     results and every level is sqrt 2 times a unitary map, so a stage's
//     error is eta ||S x|| as well, and ||Z^ - Z|| <= eps ||Z||, 1 + eps =
//     the product of the stages' factors (the induction of Thm 24.2). The
//     split has norm 2 except on the DC entry (2 sqrt 2), whose path has
//     additions only (unit twiddles): |Z^_0 - Z_0| <= e_dc ||Z||, e_dc =
//     gamma_(log2 H), so it maps the error to 2 sqrt(eps^2 + e_dc^2) ||Z||.
//     Its rounding (its sums s and differences d of Z^ with ||s||^2 +
//     ||d||^2 <= 4 ||Z^||^2) adds sigma ||Z^||, sigma = 2 sqrt(2) u + 2 (1 +
//     u) sqrt(u^2 + (u + tau (1 + u))^2): the packed spectra are off by
//     delta sqrt(H) ||a||, delta = 2 sqrt(eps^2 + e_dc^2) + sigma (1 + eps),
//     and their norms are <= (2 sqrt 2 + delta) sqrt(H) ||a||;
//   - product: ||P^ - P||_1 <= rho H ||a|| ||b||, rho = delta (2 sqrt 2 +
//     delta) + 2 sqrt 2 delta + c (2 sqrt 2 + delta)^2;
//   - the exact inverse maps a packed product entry to an output with weight
//     <= 1/(2N) (it stands for two conjugate entries of the full spectrum,
//     each of weight 1/N, times the packing's factor 4): rho / 4;
//   - inverse rounding, componentwise (Higham's Lemma 3.8 induction): the
//     unsplit (a path of two additions and a twiddle product) and the
//     inverse stages (the forward's factors) give 1 + e_inv = (1 + eta_4)
//     (1 + eps); every path from a packed entry to an output has weight <= 4
//     (unsplit) x 1 (butterflies) x 1/(4N), so it adds e_inv ||P^||_1 / N
//     <= e_inv weight, weight = (2 sqrt 2 + delta)^2 (1 + c) / 2.
// An output summing `terms` spectral products before one inverse transform
// (gradients over broadcast rows) adds gamma_terms weight per term; the bound
// is then kappa times the sum over the terms of ||a|| ||b||. Times 1 + 2^-10
// for the rounding of the norms and of these formulas (products of 1 + e
// factors are computed as their excess e, in double).
// The constants of that derivation for a size-N transform.
struct TransformErrors {
  double forward; // eps: the complex transform's norm-wise error (step 2)
  double twiddle_product; // tau: a product with a computed twiddle
  double delta; // the packed spectra's error, per unit of sqrt(H) ||row||
  double product; // c: one packed product's rounding
  double inverse; // e_inv: the inverse's rounding per unit ||P^||_1 / N
  double terms; // gamma_terms: accumulating the terms' spectral products
};

// c with |fl(x y) - x y| <= c |x y| for complex x, y multiplied by the naive
// formula without FMA (the CPU compiles with -ffp-contract=off, CUDA with
// --fmad=false): sqrt(5) u for IEEE binary64 rounding to nearest, the double
// engines (Brent, Percival and Zimmermann, Math. Comp. 76, 2007); sqrt(2)
// gamma_2 (Higham, Lemma 3.5) for arithmetic known only to obey the standard
// model with unit roundoff u, as the float pairs of certify_pair.h.
MP_INLINE double complex_product_error(double u) {
  return u == kUnitRoundoff64 ? 2.2360679774997898 * u
                              : 1.4142135623730951 * gamma_n(2.0, u);
}

// (1 + a)(1 + b) - 1 for small a, b >= 0, without forming 1 + a.
MP_INLINE double compose_errors(double a, double b) {
  return a + b + a * b;
}

MP_INLINE TransformErrors
transform_errors(MP_INT64 fft_size, MP_INT64 terms, double u) {
  int log2_half = 0;
  while ((static_cast<MP_INT64>(2) << log2_half) < fft_size)
    ++log2_half;
  // fft_plan.cpp's stages: log2_half / 2 radix-4 stages, the last of them
  // with unit twiddles unless a radix-2 stage (unit twiddles) follows.
  const int radix4 = log2_half / 2;
  const bool radix2 = (log2_half & 1) != 0;
  const int twiddled = radix2 || radix4 == 0 ? radix4 : radix4 - 1;
  const double sqrt2 = 1.4142135623730951;
  const double product = complex_product_error(u);
  const double tau = u + product * (1.0 + u);
  const double two_additions = compose_errors(u, u);
  const double radix4_stage = compose_errors(two_additions, tau);
  double eps = 0.0;
  for (int s = 0; s < twiddled; ++s)
    eps = compose_errors(eps, radix4_stage);
  if (twiddled < radix4)
    eps = compose_errors(eps, two_additions);
  if (radix2)
    eps = compose_errors(eps, u);
  const double difference = u + tau * (1.0 + u);
  const double split =
      2.0 * sqrt2 * u + 2.0 * (1.0 + u) * sqrt(u * u + difference * difference);
  const double dc = fmin(gamma_n(static_cast<double>(log2_half), u), eps);
  TransformErrors e;
  e.forward = eps;
  e.twiddle_product = tau;
  e.delta = 2.0 * sqrt(eps * eps + dc * dc) + split * (1.0 + eps);
  e.product = product;
  e.inverse = compose_errors(eps, radix4_stage);
  e.terms = gamma_n(static_cast<double>(terms), u);
  return e;
}

MP_INLINE double conv_error_bound(MP_INT64 fft_size, MP_INT64 terms, double u) {
  const TransformErrors e = transform_errors(fft_size, terms, u);
  const double sqrt2 = 1.4142135623730951;
  const double spectrum = 2.0 * sqrt2 + e.delta;
  const double rho = e.delta * spectrum + 2.0 * sqrt2 * e.delta +
      e.product * spectrum * spectrum;
  const double weight = 0.5 * spectrum * spectrum * (1.0 + e.product);
  const double kappa = 0.25 * rho + e.inverse * weight + e.terms * weight;
  return kappa * (1.0 + 1.0 / 1024.0);
}

// kappa_g with |g^[i] - g[i]| <= kappa_g ||a||_2 ||b||_2 for every entry of
// the negacyclic convolution g = a * b mod z^(N/2) + 1 of real rows of at
// most N/2 entries, computed by the split rows (rfft_conv_rows.h, "split
// rows"; docs/certification.md, "Split rows"): the right-angle transform, a
// complex transform of M = N/4 points (the stages of a real size-N/2
// transform) of the twisted row w^j (a[j] - i a[j + M]), w = exp(-2 pi i /
// N). The twist is a product with a computed twiddle (tau |z|), so the
// computed spectrum is off by delta_g sqrt(M) ||a||, 1 + delta_g = (1 + tau)
// (1 + eps), against the exact spectrum's norm sqrt(M) ||a|| (the twist is
// unitary, the transform sqrt(M) times a unitary map); the product then errs
// by rho_g M ||a|| ||b|| in 1-norm, rho_g = delta_g s + delta_g + c s^2, s = 1
// + delta_g; the exact inverse maps an entry with weight 1/M, and the
// inverse's rounding (the stages, then the untwisting product) adds e M^-1
// ||P^||_1 <= e s^2 (1 + c), 1 + e = (1 + eps)(1 + tau), componentwise as
// step 5 of conv_error_bound.
// The right-angle transform's bound from the transform's errors e and the
// twist's and untwist's relative errors (the steps of negacyclic_error_bound).
MP_INLINE double right_angle_error_bound(
    MP_THREAD const TransformErrors& e,
    double twist,
    double untwist) {
  const double delta = compose_errors(twist, e.forward);
  const double spectrum = 1.0 + delta;
  const double rho = delta * spectrum + delta + e.product * spectrum * spectrum;
  const double weight = spectrum * spectrum * (1.0 + e.product);
  const double inverse = compose_errors(e.forward, untwist);
  return (rho + inverse * weight + e.terms * weight) * (1.0 + 1.0 / 1024.0);
}

MP_INLINE double
negacyclic_error_bound(MP_INT64 fft_size, MP_INT64 terms, double u) {
  const TransformErrors e = transform_errors(fft_size / 2, terms, u);
  return right_angle_error_bound(e, e.twiddle_product, e.twiddle_product);
}

// kappa_g of the deep split rows (rfft_conv_rows.h, "deep split rows";
// docs/certification.md, "Deep split rows"): the negacyclic half of a size-N
// convolution as two pieces of P = N/8 points (the stages of a real size-N/4
// transform), x_k[j] = th_k^j p[j] + th_k^(j+P) q[j]. That map is sqrt 2
// times a unitary one on (p, q), whose norm is ||a||; its two products err by
// tau |p|, tau |q| and the sum by u |x^_k|, so ||x^ - x|| <= delta_t sqrt 2
// ||a||, delta_t = sqrt 2 tau + u (1 + sqrt 2 tau), against ||X|| = sqrt(M)
// ||a|| over both pieces' spectra, as for the single twist. The untwist r[j] =
// conj th_1^j y_1 + conj th_5^j y_5 (two products, a sum) adds (1 + tau)(1 + u)
// on every path of weight 1/M.
MP_INLINE double
deep_negacyclic_error_bound(MP_INT64 fft_size, MP_INT64 terms, double u) {
  const TransformErrors e = transform_errors(fft_size / 4, terms, u);
  const double sqrt2 = 1.4142135623730951;
  const double tau = e.twiddle_product;
  return right_angle_error_bound(
      e, sqrt2 * tau + u * (1.0 + sqrt2 * tau), compose_errors(tau, u));
}

// The split rows' bound on an entry x = (c + g) / 2 of the size-N cyclic
// convolution, computed as fl(c^/2 + g^/2) (the halves exact: power-of-two
// spectrum scales): from the bounds on c^ (conv_error_bound or
// measured_term_error at size N/2) and on g^ (negacyclic_error_bound),
// plus the addition's rounding, u |c^/2 + g^/2| <= u (|x| + their half-sum),
// |x| <= norm_products (Cauchy-Schwarz).
MP_INLINE double split_entry_error(
    double cyclic_error,
    double negacyclic_error,
    double norm_products) {
  const double halves = 0.5 * (cyclic_error + negacyclic_error);
  return (halves * (1.0 + kUnitRoundoff64) + kUnitRoundoff64 * norm_products) *
      (1.0 + 1.0 / 1024.0);
}

// One term's share of the bound with its spectra measured (the same
// derivation, docs/certification.md, "Measured spectra"): norm_a, norm_b =
// ||a||_2, ||b||_2 and spectrum_a, spectrum_b = the 2-norms of the computed
// packed spectra A^, B^ over sqrt(H), where conv_error_bound assumes the
// largest, (2 sqrt 2 + delta) ||row||; random rows measure about 2 ||row||.
// With ||A|| <= min(||A^|| + delta sqrt(H) ||a||, 2 sqrt(2 H) ||a||):
//   ||P^ - P||_1 <= ||A^ - A|| ||B^|| + ||A|| ||B^ - B|| + c ||A^|| ||B^||,
//   and ||P^||_1 <= (1 + c) ||A^|| ||B^|| (c = complex_product_error).
MP_INLINE double measured_term_error(
    MP_THREAD const TransformErrors& e,
    double norm_a,
    double norm_b,
    double spectrum_a,
    double spectrum_b) {
  const double sqrt2 = 1.4142135623730951;
  const double exact_a = fmin(
      spectrum_a + e.delta * norm_a, 2.0 * sqrt2 * norm_a); // ||A|| / sqrt H
  const double rho = e.delta * norm_a * spectrum_b +
      exact_a * e.delta * norm_b + e.product * spectrum_a * spectrum_b;
  const double weight = 0.5 * spectrum_a * spectrum_b * (1.0 + e.product);
  const double bound = 0.25 * rho + e.inverse * weight + e.terms * weight;
  return bound * (1.0 + 1.0 / 1024.0);
}

// measured_term_error's spectrum of a real row bounded from the row alone
// (GPUs, which do not keep the computed spectra): the engine's exact packed
// spectrum is 2X, the split of the half-length transform Z of the packed row
// z[m] = x[2m] + i x[2m+1]. Its entries f and H - f have
// |2X_f|^2 + |2X_(H-f)|^2 = 4 (|Z_f|^2 + |Z_(H-f)|^2) (the parallelogram law:
// they are A -+ i w^f B and their conjugate partner, A, B = Z_f +- conj
// Z_(H-f)), |2X_(H/2)| = 2 |Z_(H/2)|, and the DC/Nyquist entry has
// |2X_0|^2 = 8 |Z_0|^2; with Parseval, ||Z||^2 = H ||x||^2, so
// ||2X||^2 = 4 H ||x||^2 + 4 |Z_0|^2 exactly, Z_0 = even_sum + i odd_sum (the
// sums of the row's entries at even and odd positions as loaded). The
// computed spectrum is within delta sqrt(H) ||x|| of it (step 2). The sums,
// in double, are each off by at most gamma_len sum |x| <= gamma_len sqrt(len)
// ||x||. Never above the a priori (2 sqrt 2 + delta) ||x||.
MP_INLINE double spectrum_from_row(
    MP_THREAD const TransformErrors& e,
    MP_INT64 h,
    MP_INT64 len,
    double norm,
    double even_sum,
    double odd_sum) {
  const double slack = gamma_bound(len) * sqrt(static_cast<double>(len)) * norm;
  const double even = fabs(even_sum) + slack, odd = fabs(odd_sum) + slack;
  const double exact = 2.0 *
      sqrt(norm * norm + (even * even + odd * odd) / static_cast<double>(h));
  return fmin(exact, 2.0 * 1.4142135623730951 * norm) + e.delta * norm;
}

// Absolute error bound for float64 underflow inside a transform: inputs and
// products of float32 values stay above 2^-600, so nothing there reaches
// double's subnormal range except exact cancellation residues; 1e-300 per
// output covers any such rounding many times over.
constexpr double kUnderflowError64 = 1e-300;

// v approximates an exact real x with |v - x| <= err. When every real within
// err of v rounds to the same float32, that float is round(x): it is written
// to *out and true returned. v - err and v + err are widened by 4u|v| to
// cover their own rounding in double; conversion to float32 is a correct
// rounding and rounding is monotone, so equal ends prove the whole interval.
// The ends are compared as bits: an interval around zero whose ends round to
// -0 and +0 is not certified (the exact sum decides the sign). NaN and inf
// never certify (an infinite v says nothing about x).
// *out is always written with float32(v), the answer when certified.
MP_INLINE bool certified_round(double v, double err, MP_THREAD float* out) {
  const double margin = err + 4.0 * kUnitRoundoff64 * fabs(v);
  const float lo = static_cast<float>(v - margin);
  const float hi = static_cast<float>(v + margin);
  *out = static_cast<float>(v);
  // (& rather than &&: no branch, so that loops over outputs vectorise)
  return (MP_FLOAT_BITS(lo) == MP_FLOAT_BITS(hi)) & (fabs(v) < 1e300);
}

// A sum of products of floats in double (each product exact) with a running
// error bound (Higham, Accuracy and Stability, section 3.3): every addition
// s_i = fl(s_(i-1) + p_i) errs by at most u |s_i|, so |s - exact| <= u sum
// |s_i|. For sums of mixed signs that is about sqrt(n) times tighter than
// gamma_n sum |p_i|, enough to decide almost every output the transform could
// not. kDotLanes independent lanes, so that the loop vectorises: on a CPU 16,
// four AVX2 registers per accumulator, so that the 4-cycle latency of each
// addition is hidden (8 lanes ran half as fast); a GPU keeps 8 to save
// registers. The lane count changes no result bit: it only decides which
// stage certifies an output.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
enum : int { kDotLanes = 8 };
#else
enum : int { kDotLanes = 16 };
#endif

// sum + x y for float32 x, y: the product is exact in double, so a fused
// multiply-add rounds exactly as the addition alone; used where the CPU has
// one (elsewhere std::fma would be a library call).
MP_INLINE double add_exact_product(double sum, float x, float y) {
#if defined(__FMA__) && !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
  return std::fma(static_cast<double>(x), static_cast<double>(y), sum);
#else
  return sum + static_cast<double>(x) * static_cast<double>(y);
#endif
}

struct RunningSum {
  double sum[kDotLanes];
  double mass[kDotLanes]; // sum of |partial sums|
};

MP_INLINE void running_init(MP_THREAD RunningSum& r) {
  for (int l = 0; l < kDotLanes; ++l)
    r.sum[l] = r.mass[l] = 0.0;
}

// r += sum_{k < count} a(m0 - k) b(j0 + k). A backend may overload it for
// its own row types (correctly_rounded_sum finds the overload by
// argument-dependent lookup), as the CPU does for rows converted to double.
template <class RowA, class RowB>
MP_INLINE void running_add_range(
    MP_THREAD RunningSum& r,
    RowA a,
    RowB b,
    MP_INT64 m0,
    MP_INT64 j0,
    MP_INT64 count) {
  double sum[kDotLanes], mass[kDotLanes];
  for (int l = 0; l < kDotLanes; ++l) {
    sum[l] = r.sum[l];
    mass[l] = r.mass[l];
  }
  MP_INT64 k = 0;
  for (; k + kDotLanes <= count; k += kDotLanes) {
    for (int l = 0; l < kDotLanes; ++l) {
      sum[l] = add_exact_product(sum[l], a(m0 - k - l), b(j0 + k + l));
      mass[l] += fabs(sum[l]);
    }
  }
  for (int l = 0; k < count; ++k, ++l) {
    sum[l] = add_exact_product(sum[l], a(m0 - k), b(j0 + k));
    mass[l] += fabs(sum[l]);
  }
  for (int l = 0; l < kDotLanes; ++l) {
    r.sum[l] = sum[l];
    r.mass[l] = mass[l];
  }
}

// certified_round of the running sum (false when it cannot decide). The mass
// is itself a rounded sum of up to 2^40 terms: 1 + 2^-10 covers that.
MP_INLINE bool running_round(
    MP_THREAD const RunningSum& r,
    MP_THREAD float* out) {
  double v = r.sum[0], mass = r.mass[0];
  for (int l = 1; l < kDotLanes; ++l) {
    v += r.sum[l];
    mass += r.mass[l] + fabs(v);
  }
  return certified_round(v, kUnitRoundoff64 * (1.0 + 1.0 / 1024.0) * mass, out);
}

// The second stage, for the outputs the running sum cannot decide (results
// far below the sum of |partial sums|): compensated summation (Neumaier) in
// kDotLanes lanes. Lane l's exact sum is hi[l] + sum e_i over its TwoSum
// errors e_i, and lo[l] = fl(sum e_i) is off by at most gamma_n sum |e_i|.
struct CompensatedSum {
  double hi[kDotLanes];
  double lo[kDotLanes];
  double mass[kDotLanes]; // sum of |e_i|
  MP_INT64 count;
};

MP_INLINE void compensated_init(MP_THREAD CompensatedSum& c) {
  for (int l = 0; l < kDotLanes; ++l)
    c.hi[l] = c.lo[l] = c.mass[l] = 0.0;
  c.count = 0;
}

MP_INLINE void compensated_add(
    MP_THREAD double& hi,
    MP_THREAD double& lo,
    MP_THREAD double& mass,
    double p) {
  const double s = hi + p;
  const double pp = s - hi;
  const double e = (hi - (s - pp)) + (p - pp);
  hi = s;
  lo += e;
  mass += fabs(e);
}

// c += sum_{k < count} a(m0 - k) b(j0 + k).
template <class RowA, class RowB>
MP_INLINE void compensated_add_range(
    MP_THREAD CompensatedSum& c,
    RowA a,
    RowB b,
    MP_INT64 m0,
    MP_INT64 j0,
    MP_INT64 count) {
  MP_INT64 k = 0;
  for (; k + kDotLanes <= count; k += kDotLanes)
    for (int l = 0; l < kDotLanes; ++l)
      compensated_add(
          c.hi[l],
          c.lo[l],
          c.mass[l],
          static_cast<double>(a(m0 - k - l)) *
              static_cast<double>(b(j0 + k + l)));
  for (int l = 0; k < count; ++k, ++l)
    compensated_add(
        c.hi[l],
        c.lo[l],
        c.mass[l],
        static_cast<double>(a(m0 - k)) * static_cast<double>(b(j0 + k)));
  c.count += count;
}

// certified_round of the compensated sum: the lanes' leading parts summed
// with compensation once more, the low parts added; every error is bounded by
// gamma_(n + 2 lanes) times the total mass plus |lo|.
MP_INLINE bool compensated_round(
    MP_THREAD CompensatedSum& c,
    MP_THREAD float* out) {
  for (int l = 1; l < kDotLanes; ++l) {
    compensated_add(c.hi[0], c.lo[0], c.mass[0], c.hi[l]);
    c.lo[0] += c.lo[l];
    c.mass[0] += c.mass[l] + fabs(c.lo[l]);
  }
  const double v = c.hi[0] + c.lo[0];
  const double err =
      gamma_bound(c.count + 2 * kDotLanes) * (c.mass[0] + fabs(c.lo[0])) +
      2.0 * kUnitRoundoff64 * fabs(v);
  return certified_round(v, err, out);
}

// What certifying the outputs of one row needs: the bound on the transform's
// error, the relative error of the steps after it (the fold's addition, the
// bias additions), and whether every input is finite (a row with NaN/Inf
// keeps the transform's value: nothing to certify, and recomputing each of its
// outputs exactly would cost O(L Lk)).
struct RowCertificate {
  double conv_err;
  double rel;
  bool finite;
};

// Step 1 for a row of a size-fft_size convolution: transform_error bounds
// the error of each cyclic entry, summed over the row's `terms`
// (conv_error_bound times norm_products, or measured_term_error);
// norm_products is the sum over the terms of ||a|| ||b||; `fold` when two
// cyclic entries are added into one output; bias_terms exact products added
// after the transform.
MP_INLINE RowCertificate certificate_from_bound(
    double transform_error,
    bool fold,
    double norm_products,
    MP_INT64 terms,
    MP_INT64 bias_terms) {
  const double copies = fold ? 2.0 : 1.0;
  RowCertificate c;
  // Zero rows (norm_products 0: every term has a zero operand) convolve to
  // exactly +-0, with nothing to bound: no output of theirs is left open,
  // where otherwise each would be recomputed from its O(L) zero products.
  c.conv_err = norm_products == 0.0 ? 0.0
                                    : copies *
          (transform_error + static_cast<double>(terms) * kUnderflowError64);
  c.rel = (1.0 + 1.0 / 64.0) * kUnitRoundoff64 *
      static_cast<double>((fold ? 1 : 0) + bias_terms);
  c.finite = fabs(norm_products) <= 1.7976931348623157e308; // not inf, not NaN
  return c;
}

// certificate_from_bound with conv_error_bound's a priori bound.
MP_INLINE RowCertificate row_certificate(
    MP_INT64 fft_size,
    bool fold,
    double norm_products,
    MP_INT64 terms,
    MP_INT64 bias_terms) {
  return certificate_from_bound(
      conv_error_bound(fft_size, terms, kUnitRoundoff64) * norm_products,
      fold,
      norm_products,
      terms,
      bias_terms);
}

// An output's value as certified_round takes it: an exact zero sum is +0,
// while the transform's arithmetic on zeros may give -0 (+0 has the same
// bits as the sum's correct rounding; every other value is unchanged).
MP_INLINE double zero_as_positive(double value) {
  return value + 0.0;
}

// Step 3: the correctly rounded sum of the product ranges that
// for_each_range(range) enumerates, range(a, b, m0, j0, count) standing for
// a(m0 - k) b(j0 + k), k < count: first summed in double (certified with its
// running error bound), then with compensation (certified likewise: decides
// all but results far below 2^-50 of the sum's mass), else exactly.
template <class ForEachRange>
MP_INLINE float correctly_rounded_sum(ForEachRange for_each_range) {
  RunningSum r;
  running_init(r);
  for_each_range([&](auto a, auto b, MP_INT64 m0, MP_INT64 j0, MP_INT64 count) {
    running_add_range(r, a, b, m0, j0, count);
  });
  float out;
  if (running_round(r, &out))
    return out;
  CompensatedSum c;
  compensated_init(c);
  for_each_range([&](auto a, auto b, MP_INT64 m0, MP_INT64 j0, MP_INT64 count) {
    compensated_add_range(c, a, b, m0, j0, count);
  });
  if (compensated_round(c, &out))
    return out;
  ExactSum s;
  exact_sum_init(s);
  for_each_range([&](auto a, auto b, MP_INT64 m0, MP_INT64 j0, MP_INT64 count) {
    exact_sum_add_range(s, a, b, m0, j0, count);
  });
  return exact_sum_round(s);
}

#endif // MP_HAS_DOUBLE

} // namespace mlx_precise
