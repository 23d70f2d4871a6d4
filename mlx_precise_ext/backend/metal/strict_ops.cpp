// The strict addmm / linear / layer_norm have no Metal kernels yet (the CUDA
// backend has them, backend/cuda/strict_ops.cpp): their extended and dd modes
// raise on a Metal stream instead of moving to the CPU silently ("float32" is
// MLX's own path and runs anywhere).
#include <stdexcept>

#include "strict_primitives.h"

namespace mlx_precise {

namespace {
[[noreturn]] void no_metal_kernels(const char* op) {
  throw std::runtime_error(
      std::string(op) +
      ": the extended and dd modes have no Metal kernels in this version; pass "
      "stream=mx.cpu (precision=\"float32\" follows MLX's own path on any device)");
}
} // namespace

void StrictAddmm::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  no_metal_kernels("addmm / linear (extended, dd)");
}

void StrictLayerNorm::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  no_metal_kernels("layer_norm (extended, dd)");
}

void StrictLayerNormVJP::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  no_metal_kernels("layer_norm gradient (extended, dd)");
}

} // namespace mlx_precise
