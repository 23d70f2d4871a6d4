// The Metal library sources, one string each: the shared kernel headers and a
// kernel file, in include order, compiled by MLX's Metal device at first use.
// The extension's CMake generates them; inside MLX they are MLX's own JIT
// sources (make_jit_source), under the same names.
#pragma once

namespace mlx_precise::metal {

const char* rfft_conv_kernels();
const char* strict_kernels();
const char* pair_kernels();

} // namespace mlx_precise::metal
