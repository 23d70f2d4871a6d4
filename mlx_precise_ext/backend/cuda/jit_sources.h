// Kernel sources embedded at build time (CMakeLists.txt generates the
// definitions from backend/cuda/rfft_conv_kernels.cuh and kernels/*.h).
#pragma once

namespace mlx_precise::cuda {

struct JitSource {
  const char* name;  // the name the sources #include it by
  const char* text;
};

extern const JitSource kJitMainSource;
extern const JitSource kJitHeaders[];
extern const int kJitHeaderCount;

} // namespace mlx_precise::cuda
