// Host side of the GPU pair rfft_conv (CUDA, Metal): the geometry of its
// Convolve form or of its gradients' correlations, and the row numbering of
// the hi parts and of the lo parts.
#pragma once

#include <vector>

#include <mlx/array.h>

#include "backend/common/conv_geometry.h"
#include "backend/common/shapes.h"
#include "backend/gpu/conv_layout.h"
#include "primitives.h"

namespace mlx_precise::gpu {

// in = u_hi, u_lo, k_hi, k_lo [, bias]; outs = hi, lo (the correlations: g
// in u's place, and k or u in k's). lo_ix numbers the rows of u_lo, k_lo and
// the lo output as ix numbers those of u_hi, k_hi, the bias and the hi output
// (one output row per row of u, kernel rows shared).
struct PairConvLaunch {
  ConvGeometry geo;
  RowIndex ix;
  RowIndex lo_ix;
};

inline PairConvLaunch pair_conv_launch(
    ConvVariant variant,
    int64_t period,
    const std::vector<mx::array>& in,
    bool has_bias,
    const std::vector<mx::array>& outs) {
  const mx::array &u_hi = in[0], &u_lo = in[1], &k_hi = in[2], &k_lo = in[3];
  const mx::Shape full = batch_shape(outs[0].shape());
  return PairConvLaunch{
      conv_geometry(
          variant,
          period,
          u_hi.shape().back(),
          k_hi.shape().back(),
          outs[0].shape().back()),
      make_row_index(
          full,
          k_hi.shape(),
          {&u_hi, &k_hi, has_bias ? &in[4] : nullptr, &outs[0]}),
      make_row_index(full, k_hi.shape(), {&u_lo, &k_lo, nullptr, &outs[1]})};
}

} // namespace mlx_precise::gpu
