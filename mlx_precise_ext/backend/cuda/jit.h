// The CUDA kernels, compiled at run time, and what launching them needs.
// The get_*kernel functions are the compiler adapter (jit.cpp: NVRTC in the
// extension, MLX's cu::JitModule inside MLX); the rest is kernel_support.cpp,
// the same in both.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <string>
#include <vector>

#include "precision.h"

namespace mlx_precise::cuda {

// The kernel `name` ("conv_rows", "kernel_spectra", "reduce_rows" with
// `shared` telling which row storage; "product_sum", "clear_open_bits",
// "recompute_open" without) for precision p (dd: the double kernels),
// compiled for `device` at first use (all kernels of p at once) and cached for
// the life of the process.
CUfunction
get_kernel(int device, Precision p, const std::string& name, bool shared);

// The strict-ops kernel `name_expression` (one of strict_kernel_names(), e.g.
// "mlx_precise::gpu::layer_norm_rows<double>"), compiled for `device` at first
// use (all strict kernels at once) and cached.
CUfunction get_strict_kernel(int device, const std::string& name_expression);

// The pair-ops kernel `name_expression` (one of pair_kernel_names()),
// compiled for `device` at first use (all pair kernels at once) and cached.
CUfunction get_pair_kernel(int device, const std::string& name_expression);

// The name expressions of the rfft_conv kernels of precision p (all of them;
// one module per precision) and of the one named `name`.
std::vector<std::string> conv_kernel_names(Precision p);
std::string conv_kernel_name(Precision p, const std::string& name, bool shared);

// The name expressions of every strict-ops kernel (one module; defined with
// the strict ops, strict_ops.cpp).
std::vector<std::string> strict_kernel_names();

// The name expressions of every pair-ops kernel (one module; defined with the
// pair ops, pair_ops.cpp).
std::vector<std::string> pair_kernel_names();

// Lets launches of `kernel` request all the dynamic shared memory its static
// shared variables leave of the device's opt-in per-block limit.
void allow_dynamic_shared(CUfunction kernel, int device);

// Throws, naming `what`, if a CUDA driver call failed.
void check_driver(CUresult r, const char* what);

struct DeviceInfo {
  int multiprocessors;
  int max_shared_per_block; // opt-in limit for dynamic shared memory
};
const DeviceInfo& device_info(int device);

// Copies bytes to a device allocation that lives as long as the process
// (constant tables, cached by the caller).
CUdeviceptr upload_constant(const void* data, size_t bytes);

// Bytes of dynamic shared memory a launch of `kernel` may request.
int max_dynamic_shared(CUfunction kernel);
// Largest block size the compiled kernel can launch with.
int max_block_threads(CUfunction kernel);

// Blocks of `threads` threads and `shared_bytes` dynamic shared memory that
// fit on the whole device at once.
int resident_blocks(
    int device,
    CUfunction kernel,
    int threads,
    size_t shared_bytes);

} // namespace mlx_precise::cuda
