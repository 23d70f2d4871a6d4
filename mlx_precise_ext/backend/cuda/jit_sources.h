// Kernel sources embedded at build time (CMakeLists.txt generates the
// definitions from backend/cuda/*_kernels.cuh, the CUDA-only headers they
// include and kernels/*.h).
#pragma once

namespace mlx_precise::cuda {

struct JitSource {
  const char* name; // the name the sources #include it by
  const char* text;
};

extern const JitSource kJitMainSource; // rfft_conv_kernels.cuh
extern const JitSource kJitStrictSource; // strict_kernels.cuh
extern const JitSource kJitPairSource; // pair_kernels.cuh
extern const JitSource kJitHeaders[];
extern const int kJitHeaderCount;

} // namespace mlx_precise::cuda
