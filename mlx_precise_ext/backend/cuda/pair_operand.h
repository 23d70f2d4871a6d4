// A pair operand of the CUDA pair kernels, one kernel argument: the hi and lo
// parts, each read as rows of its last axis through its own layout. Shared by
// the host (pair_ops.cpp) and the kernels (pair_kernels.cuh), so both see
// one definition of the argument.
#pragma once

#if defined(__CUDACC_RTC__)
#include "strict_params.h"
#else
#include "kernels/strict_params.h"
#endif

namespace mlx_precise {

struct PairOperand {
  const float* hi;
  RowsLayout hi_l;
  const float* lo;
  RowsLayout lo_l;
};

} // namespace mlx_precise
