// Deterministic FFT twiddle factors, computed by this project (not libm), so
// that every platform gets the same bits. Host-side only: GPU backends upload
// the tables built from these values.
#pragma once

#include <cstdint>

namespace mlx_precise {

// cos and sin of 2*pi*m/N, each as an unevaluated sum hi + lo of two doubles,
// accurate to about 1e-30 absolute. N must be a power of two.
struct TwiddleValue {
  double cos_hi, cos_lo, sin_hi, sin_lo;
};

class TwiddleSource {
 public:
  explicit TwiddleSource(int64_t n);
  TwiddleValue operator()(int64_t m) const;

 private:
  struct Entry {
    double c_hi, c_lo, s_hi, s_lo;
  };
  int64_t n_;
  int64_t low_bits_;
  // Angles are split as m = hi * 2^low_bits_ + lo; cos/sin of each part come
  // from a Taylor series, and their sum from the angle-addition formulas.
  Entry* coarse_;
  Entry* fine_;
  int64_t coarse_size_, fine_size_;
  Entry first_quadrant(int64_t m) const;

 public:
  ~TwiddleSource();
  TwiddleSource(const TwiddleSource&) = delete;
  TwiddleSource& operator=(const TwiddleSource&) = delete;
};

} // namespace mlx_precise
