// The strict addmm / linear / layer_norm have no GPU kernels yet, in any build:
// their extended and dd modes raise on a GPU stream instead of moving to the
// CPU silently ("float32" is MLX's own path and runs anywhere).
#include <stdexcept>

#include "strict_primitives.h"

namespace mlx_precise {

namespace {
[[noreturn]] void cpu_only(const char* op) {
  throw std::runtime_error(
      std::string(op) +
      ": the extended and dd modes run on the CPU only in this version; pass "
      "stream=mx.cpu (precision=\"float32\" follows MLX's own path on any device)");
}
} // namespace

void StrictAddmm::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  cpu_only("addmm / linear (extended, dd)");
}

void StrictLayerNorm::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  cpu_only("layer_norm (extended, dd)");
}

void StrictLayerNormVJP::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  cpu_only("layer_norm gradient (extended, dd)");
}

} // namespace mlx_precise
