// Strided-batched GEMM through cuBLASLt (the libcublasLt that MLX's CUDA
// build links and loads), captured into the stream's graph like MLX's own
// matmuls. Used by the strict addmm: the float64 product of "extended" (then
// certified per output) and the strict float32 product (never TF32).
// blas.cpp is the adapter: the extension's own cuBLASLt handle (libmlx
// exports none of MLX's cuBLASLt classes); inside MLX, MLX's
// CublasMatmulBase.
#pragma once

#include <cstdint>

#include <mlx/backend/cuda/device.h>

namespace mx = mlx::core;

namespace mlx_precise::cuda {

enum class GemmType { Float32, Float64 };

// One operand, per batch a row-major (rows, cols) matrix, or with
// `transposed` its transpose stored row-major (cols, rows); `ld` is the row
// stride of what is stored, `batch_stride` the distance between batches.
struct GemmOperand {
  const void* data;
  bool transposed;
  int64_t ld;
  int64_t batch_stride;
};

// out (batches, m, n), contiguous row-major, = alpha a @ b + beta out, with a
// (m, k) and b (k, n) per batch, every sum and product in `type`, on the
// stream `stream_index` of `device`. The inputs and outputs must already be
// registered with the encoder (set_input_array / set_output_array), as for a
// kernel node.
void gemm(
    mx::cu::CommandEncoder& encoder,
    int device,
    int stream_index,
    GemmType type,
    int m,
    int n,
    int k,
    int batches,
    const GemmOperand& a,
    const GemmOperand& b,
    void* out,
    double alpha,
    double beta);

// Largest power of two (up to 256) dividing the address. cuBLASLt's
// heuristic assumes 256-byte aligned operands unless told otherwise, and an
// algorithm picked on that assumption fails on a view that starts inside its
// allocation.
inline uint32_t gemm_alignment(const void* p) {
  uint32_t a = 256;
  while (a > 4 && reinterpret_cast<uintptr_t>(p) % a != 0)
    a /= 2;
  return a;
}

} // namespace mlx_precise::cuda
