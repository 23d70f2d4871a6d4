// Run-time compilation of the CUDA kernels (NVRTC) from the sources
// embedded at build time, and the device-side copies of the FFT tables.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <string>

#include "precision.h"

namespace mlx_precise::cuda {

// The kernel `name` ("conv_rows", "kernel_spectra", "reduce_rows" with
// `shared` telling which row storage; "product_sum" without) for precision p,
// compiled for `device` at first use (all kernels of p at once) and cached for
// the life of the process.
CUfunction
get_kernel(int device, Precision p, const std::string& name, bool shared);

// The strict-ops kernel `name_expression` (one of jit.cpp's
// kStrictKernelNames, e.g. "mlx_precise::gpu::layer_norm_rows<double>"),
// compiled for `device` at first use (all strict kernels at once) and cached.
CUfunction get_strict_kernel(int device, const std::string& name_expression);

// The pair-ops kernel `name_expression` (one of jit.cpp's kPairKernelNames),
// compiled for `device` at first use (all pair kernels at once) and cached.
CUfunction get_pair_kernel(int device, const std::string& name_expression);

struct DeviceInfo {
  int multiprocessors;
  int max_shared_per_block; // opt-in limit for dynamic shared memory
};
const DeviceInfo& device_info(int device);

// Copies bytes to a device allocation that lives as long as the process
// (constant tables, cached by the caller).
CUdeviceptr upload_constant(const void* data, size_t bytes);

// Largest block size the compiled kernel can launch with.
// Bytes of dynamic shared memory a launch of `kernel` may request.
int max_dynamic_shared(CUfunction kernel);
int max_block_threads(CUfunction kernel);

// Blocks of `threads` threads and `shared_bytes` dynamic shared memory that
// fit on the whole device at once.
int resident_blocks(
    int device,
    CUfunction kernel,
    int threads,
    size_t shared_bytes);

} // namespace mlx_precise::cuda
