// Host-side plan of the real FFT used by rfft_conv: the stage structure, the
// twiddle factors and the digit-reversal bookkeeping. Every backend (CPU, CUDA,
// Metal) builds its tables from this one plan, so all run the same operations
// with the same constants.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "dd.h"
#include "twiddles.h"

namespace mlx_precise {

struct FFTStage {
  int64_t block; // M: the stage works on independent blocks of M points
  int64_t quarter; // M / radix: distance between a butterfly's points
  int radix; // 4, or 2 for the last stage when log2(H) is odd
  int64_t tw_offset;
};

// Real transform of length N (a power of two, >= 2) through a complex FFT of
// length H = N/2 (see rfft_conv_core.h for the split step).
struct RealFFTPlan {
  int64_t n_real;
  int64_t n_half;
  std::vector<FFTStage>
      stages; // decimation in frequency: block size decreasing
  // Radix-4 twiddles w^(j s), w^(2 j s), w^(3 j s), w = exp(-2 pi i / H), s = H
  // / M.
  std::vector<TwiddleValue> stage_twiddles[3];
  std::vector<int64_t> frequency; // frequency held at each output position
  std::vector<int64_t> partner; // position holding frequency (H - f) mod H
  std::vector<TwiddleValue>
      split_twiddles; // exp(-2 pi i f(p) / N) per position p
};

// Cached, thread-safe.
std::shared_ptr<const RealFFTPlan> real_fft_plan(int64_t n_real);

// A twiddle component (hi + lo doubles, ~1e-30 accurate) in the working
// precision: float rounds hi, double is hi, ff keeps 48 bits.
template <class T>
T twiddle_component(double hi, double lo);

template <>
inline float twiddle_component<float>(double hi, double) {
  return static_cast<float>(hi);
}
template <>
inline double twiddle_component<double>(double hi, double) {
  return hi;
}
template <>
inline ff twiddle_component<ff>(double hi, double lo) {
  // Rounding twice can leave hi + lo on a tie that rounds away from hi: the
  // final FastTwoSum restores a valid double-word (|lo| <= ulp(hi)/2).
  float h = static_cast<float>(hi);
  float l = static_cast<float>((hi - static_cast<double>(h)) + lo);
  return fast_two_sum(h, l);
}

// Forward twiddle w^m = cos - i sin as (re, im) in the working precision.
template <class T>
void forward_twiddle(const TwiddleValue& v, T& re, T& im) {
  re = twiddle_component<T>(v.cos_hi, v.cos_lo);
  im = twiddle_component<T>(-v.sin_hi, -v.sin_lo);
}

} // namespace mlx_precise
