// The compiler adapter of jit.h inside MLX: the kernels are compiled by MLX's
// own JIT (cu::JitModule, cached on disk like MLX's kernels) from the sources
// CMake embeds with MLX's device headers. The modules are named "precise_*",
// which jit_module.cpp compiles without contraction (--fmad=false).
#include "mlx/backend/cuda/precise/jit.h"

#include <string>
#include <tuple>

#include "mlx/backend/cuda/device.h"
#include "mlx/backend/cuda/jit_module.h"

#include "cuda_jit_sources.h"

namespace mlx::core::cuda {

CUfunction
get_kernel(int device, Precision p, const std::string& name, bool shared) {
  cu::JitModule& module = cu::get_jit_module(
      cu::device(device),
      std::string("precise_rfft_conv_") + precision_name(p),
      [p]() {
        return std::make_tuple(
            false,
            std::string(jit_source_rfft_conv_kernels),
            conv_kernel_names(p));
      });
  // Launches may use the device's whole opt-in shared memory.
  return module.get_kernel(
      conv_kernel_name(p, name, shared),
      [device](CUfunction kernel) { allow_dynamic_shared(kernel, device); });
}

} // namespace mlx::core::cuda
