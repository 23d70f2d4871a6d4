// Transform size and output indexing of one rfft_conv evaluation, shared by
// every backend so that all of them compute the same cyclic convolution.
#pragma once

#include <cstdint>

namespace mlx_precise {

enum class ConvVariant; // primitives.h; this header is also compiled without
                        // MLX's headers (the CPU kernel objects)

// Which entries of the size-N cyclic convolution x of the a and b rows form
// the output: out[t] = x[i] (+ x[i + period] when fold), where
// i = t, or (origin - t) mod period when out_reversed.
struct ConvGeometry {
  int64_t fft_size; // N, a power of two
  int64_t period; // n of the circular form; 0 for the causal linear form
  bool fold; // N != n: x is the linear convolution, folded at n
  int64_t a_len;
  bool a_reversed; // a is read back to front (correlations)
  int64_t b_len; // taps of b that can reach the output
  int64_t out_len;
  bool out_reversed;
  int64_t out_origin;
};

// a: the row that is transformed per output (u, or g for the gradients) of
// length a_len; b: the kernel (k, or u for the kernel gradient).
//   Convolve        y = conv(u, k)
//   CorrelateInput  grad u[s] = entry L-1-s of conv(reverse(g), k)
//   CorrelateKernel grad k[j] = sum_t g[t] u[t - j] = entry L-1-j of
//   conv(reverse(g), u)
ConvGeometry conv_geometry(
    ConvVariant variant,
    int64_t period,
    int64_t a_len,
    int64_t b_len,
    int64_t out_len);

// 1/(4N): the forward split doubles each spectrum and the inverse split
// doubles again; the unnormalised inverse multiplies by N/2 (exact scaling).
float spectrum_scale(int64_t fft_size);

} // namespace mlx_precise
