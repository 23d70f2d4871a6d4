// Front-end of rfft_conv, shaped like mlx/fft.h (namespace fft, as there).
#pragma once

#include <optional>
#include <string>

#include <mlx/api.h>
#include <mlx/array.h>
#include <mlx/utils.h>

#include "precision.h"

namespace mlx_precise {
namespace mx = mlx::core;
}

namespace mlx_precise::fft {

// FFT convolution of u (..., L) with k (..., Lk), leading dims broadcast.
// n unset: causal linear convolution y[t] = sum_{j <= t} u[t - j] k[j].
// n set: irfft(rfft(u, n) * rfft(k, n), n)[..., :L] (needs n >= L, n >= Lk).
// bias: adds u * bias before the single rounding. Output (..., L) float32.
MLX_API mx::array rfft_conv(
    const mx::array& u,
    const mx::array& k,
    std::optional<int64_t> n = {},
    const std::optional<mx::array>& bias = {},
    const std::string& precision = "float32",
    mx::StreamOrDevice s = {});

// rfft_conv's checks (dtypes, shapes, n), shared with pair_rfft_conv:
// period is n, or 0 for the causal form; bias comes back shaped to broadcast
// against the output (a 0-d bias as (1,)).
struct ConvArguments {
  int64_t period;
  std::optional<mx::array> bias;
};
ConvArguments check_rfft_conv_arguments(
    const mx::array& u,
    const mx::array& k,
    std::optional<int64_t> n,
    const std::optional<mx::array>& bias,
    mx::StreamOrDevice s);

// Builds the Convolve node from inputs rfft_conv already validated (the
// transforms use it; period 0 means the causal linear form).
mx::array rfft_conv_from_parts(
    const mx::array& u,
    const mx::array& k,
    int64_t period,
    const std::optional<mx::array>& bias,
    Precision precision,
    mx::Stream stream);

} // namespace mlx_precise::fft
