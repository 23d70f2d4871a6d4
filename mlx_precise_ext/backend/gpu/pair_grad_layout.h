// Host side of the GPU PairSum (CUDA, Metal; the testing hook that runs
// Metal's arithmetic on the CPU): the layouts of the dims an output keeps and
// of the dims it sums, over the hi parts and over the lo parts.
#pragma once

#include <cstdint>
#include <stdexcept>

#include <mlx/array.h>

#include "kernels/strict_params.h"

namespace mlx_precise::gpu {

namespace mx = mlx::core;

// Output t of PairSum at row_start(kept_*, t), its terms j at
// row_start(summed_*, j) from there (kernels/pair_grad.h's
// pair_sum_to_output).
struct PairSumLayout {
  RowsLayout kept_hi{};
  RowsLayout kept_lo{};
  RowsLayout summed_hi{};
  RowsLayout summed_lo{};
  int64_t terms = 1;
};

// A pair of `shape` (hi and lo at their strides) summed to out_shape, aligned
// right: dims of 1 and missing leading dims of out_shape are summed.
inline PairSumLayout pair_sum_layout(
    const mx::Shape& shape,
    const mx::Strides& hi_strides,
    const mx::Strides& lo_strides,
    const mx::Shape& out_shape) {
  PairSumLayout l;
  const int offset = static_cast<int>(shape.size() - out_shape.size());
  for (int d = 0; d < static_cast<int>(shape.size()); ++d) {
    const bool keep = d >= offset && out_shape[d - offset] != 1;
    RowsLayout& hi = keep ? l.kept_hi : l.summed_hi;
    RowsLayout& lo = keep ? l.kept_lo : l.summed_lo;
    if (hi.dims == kStrictMaxDims)
      throw std::invalid_argument(
          "pair sum_to: more than 8 kept or 8 summed dims on the GPU; "
          "reshape the operand first");
    if (!keep)
      l.terms *= shape[d];
    hi.shape[hi.dims] = shape[d];
    lo.shape[lo.dims] = shape[d];
    hi.strides[hi.dims++] = hi_strides[d];
    lo.strides[lo.dims++] = lo_strides[d];
  }
  return l;
}

} // namespace mlx_precise::gpu
