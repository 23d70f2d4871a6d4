// Certified addmm in float pairs, for the backends without double (Metal's
// extended and dd addmm / linear). Written once against portability.h: the
// Metal kernels (strict_kernels.metal) and their CPU emulation
// (mlx_precise._ext.testing.metal_certified_addmm) run this same code.
//
// An output alpha sum_k a_k b_k [+ beta c] is the dd dot product of
// strict_arith.h (dd_dot_step for k = 0, 1, ..., K-1) with one more float per
// step: the running sum M of |hi| of the partial sums. Its error bound
// (docs/certification.md has the proof sketch), u = 2^-24:
//   - two_prod(a, b) is exact unless its residual underflows: < 2^-150;
//   - dd_add (AccurateDWPlusDW, Joldes, Muller, Popescu, ACM TOMS 44(2), 2017,
//     Alg. 6) errs by <= (3u^2 + 13u^3) |x + y| <= 2^-46 |s.hi| of its result
//     s; its operations are all additions, exact when their result is
//     subnormal, so the bound holds under gradual underflow too;
//   so |acc - sum_k a_k b_k| <= 2^-46 sum_k |s_k.hi| + K 2^-150, and the float
//   sum M of the |s_k.hi| is >= their real sum (1 - u)^K >= (1 - K u) of it;
//   - alpha acc in dd_mul_f (DWTimesFP3, Alg. 9: <= 2u^2 = 2^-47 relative),
//     which also scales acc's absolute underflow term by |alpha| (a product
//     of 2^-160 times an alpha of 2^34 lost 2^-16 of the output when it was
//     not: the fuzz of issue 15 found it), beta c exact in two_prod, their
//     dd_add (2^-46 |v.hi|), and underflow in those (< 2^-150 per rounding, a
//     handful of them, not scaled).
// certified_round_pair (round_pair.h) then decides the float32; an output
// whose ends round apart (heavy cancellation, ties, subnormal results within
// the absolute term), or that overflowed the pair range (inf or NaN: TwoSum
// turns overflow into NaN), is marked open and recomputed exactly by
// exact_addmm_entry (ExactSum, no double).
#pragma once

#include "round_pair.h"
#include "strict_arith.h"

namespace mlx_precise {

// The dd dot product of one output and the float sum of |hi| of its partial
// sums.
struct PairDot {
  ff acc;
  float mass;
};

MP_INLINE PairDot pair_dot_init() {
  return PairDot{ff{0.0f, 0.0f}, 0.0f};
}

// dd_dot_step, and |hi| of the new partial sum added to the mass.
MP_INLINE PairDot pair_dot_step(PairDot d, float a, float b) {
  const ff acc = dd_dot_step(d.acc, a, b);
  return PairDot{acc, MP_ADDF(d.mass, abs_float(acc.hi))};
}

// 2^-46: the relative error of dd_add (3u^2 + 13u^3 over 1 - it, times
// |s| <= |s.hi| (1 + u)), which also covers dd_mul_f's 2u^2.
constexpr MP_CONSTANT float kPairStepError = 1.4210854715202004e-14f;
// 2^-149: each of the K products errs by less than 2^-150 when it underflows
// (times |alpha| once scaled, with 4 more for the underflow of dot_err's own
// products before their factor |alpha|); 1024 2^-149 more covers the final
// operations and the underflow of the bound's remaining products.
constexpr MP_CONSTANT float kPairUnderflowUnit = 1.401298464324817e-45f;

// The pair v = alpha acc [+ beta c] (beta c exact: two_prod), and in *err a
// bound on |v - exact| (inf when none holds: K >= 2^22 or a non-finite partial
// result).
MP_INLINE ff addmm_pair_value(
    PairDot d,
    MP_INT64 k,
    float alpha,
    bool has_c,
    float beta,
    float c,
    MP_THREAD float* err) {
  const ff scaled = dd_mul_f(d.acc, alpha);
  const ff v = has_c ? dd_add(scaled, two_prod(beta, c)) : scaled;
  // The float sum of K nonnegative terms is >= (1 - u)^K >= 1 - K u of the
  // real one; 1 - 2 K u in float (K < 2^22) stays below 1 - K u.
  const float kf = static_cast<float>(k);
  const float shrink = MP_SUBF(1.0f, MP_MULF(kf, 1.1920928955078125e-07f));
  const float inflate =
      shrink > 0.5f ? MP_DIVF(1.0f, shrink) : MP_BITS_FLOAT(0x7f800000u);
  const float dot_err = MP_MULF(
      MP_MULF(MP_MULF(d.mass, inflate), kPairStepError), abs_float(alpha));
  const float final_err =
      MP_MULF(MP_ADDF(abs_float(scaled.hi), abs_float(v.hi)), kPairStepError);
  const float dot_underflow =
      MP_MULF(MP_MULF(MP_ADDF(kf, 4.0f), abs_float(alpha)), kPairUnderflowUnit);
  *err = MP_ADDF(
      MP_MULF(
          MP_ADDF(MP_ADDF(dot_err, final_err), dot_underflow), kPairBoundSlack),
      MP_MULF(1024.0f, kPairUnderflowUnit));
  return v;
}

} // namespace mlx_precise
