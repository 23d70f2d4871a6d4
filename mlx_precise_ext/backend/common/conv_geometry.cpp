#include "backend/common/conv_geometry.h"

#include <algorithm>
#include <cmath>

#include "primitives.h"

namespace mlx_precise {

namespace {

int64_t next_pow2(int64_t v) {
  int64_t p = 2;
  while (p < v)
    p <<= 1;
  return p;
}

// Output indices i of the period-n (or linear) convolution lie in
// [i_min, i_max]; taps of b beyond i_max cannot reach them.
ConvGeometry make_geometry(
    int64_t a_len,
    int64_t b_len,
    int64_t period,
    int64_t out_len,
    bool reversed,
    int64_t i_min,
    int64_t i_max) {
  ConvGeometry g{};
  g.period = period;
  g.a_len = a_len;
  g.a_reversed = reversed;
  g.out_len = out_len;
  g.out_reversed = reversed;
  g.out_origin = a_len - 1;
  if (period > 0) {
    g.b_len = b_len;
    bool pow2 = (period & (period - 1)) == 0;
    if (pow2 && period >= 2) {
      g.fft_size = period;
      g.fold = false;
    } else {
      g.fft_size = next_pow2(a_len + b_len - 1);
      g.fold = true;
    }
  } else {
    g.b_len = std::min(b_len, i_max + 1);
    g.fft_size = next_pow2(std::max(a_len + g.b_len - 1 - i_min, i_max + 1));
    g.fold = false;
  }
  return g;
}

} // namespace

ConvGeometry conv_geometry(
    ConvVariant variant,
    int64_t period,
    int64_t a_len,
    int64_t b_len,
    int64_t out_len) {
  if (variant == ConvVariant::CorrelateKernel) {
    const int64_t j_max =
        period > 0 ? out_len - 1 : std::min(out_len, a_len) - 1;
    return make_geometry(
        a_len, b_len, period, out_len, true, a_len - 1 - j_max, a_len - 1);
  }
  return make_geometry(
      a_len,
      b_len,
      period,
      out_len,
      variant == ConvVariant::CorrelateInput,
      0,
      a_len - 1);
}

float spectrum_scale(int64_t fft_size) {
  return std::ldexp(
      1.0f, -2 - static_cast<int>(std::ilogb(static_cast<float>(fft_size))));
}

} // namespace mlx_precise
