// CUDA-only device helpers shared by the kernel sources (rfft_conv, strict
// and pair kernels): grid-stride loops and warp sums. The arithmetic every
// backend shares lives in kernels/; this is what only CUDA has (shuffles,
// the grid).
#pragma once

#include "portability.h"

// Grid-stride loop over [0, total), one index per thread at a time.
#define MP_GRID_STRIDE(e, total)                                         \
  for (MP_INT64 e =                                                      \
           blockIdx.x * static_cast<MP_INT64>(blockDim.x) + threadIdx.x; \
       e < (total);                                                      \
       e += static_cast<MP_INT64>(gridDim.x) * blockDim.x)

namespace mlx_precise::gpu {

// Sums v (an int64 or a double) over the warp by a butterfly of shuffles;
// every lane gets the total, the same bits in each (IEEE addition is
// commutative, so both lanes of a shuffle compute the same sums).
template <class V>
__device__ __forceinline__ V warp_sum(V v) {
  for (int offset = 16; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The lanes' running-error sums (certify.h, RunningSum: sum and the sum of
// |partial sums|) combined over the warp, each addition adding |result| to
// the mass: running_round's argument holds for any tree of additions. Every
// lane gets the same pair.
__device__ __forceinline__ void warp_running_sum(double& sum, double& mass) {
  for (int offset = 16; offset > 0; offset /= 2) {
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    mass += __shfl_xor_sync(0xffffffffu, mass, offset);
    mass += fabs(sum);
  }
}

} // namespace mlx_precise::gpu
