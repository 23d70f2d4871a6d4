// The float64 GEMM of the extended addmm: d (M x N) = a (M x K) times b, all
// row-major, b stored as N x K when b_transposed, else as K x N, through the
// BLAS MLX links.
#pragma once

#include <cstdint>

#include "mlx/backend/cpu/lapack.h"

namespace mlx::core::cpu {

inline void gemm_f64(
    bool b_transposed,
    int64_t M,
    int64_t N,
    int64_t K,
    const double* a,
    const double* b,
    double* d,
    int /* num_threads: the BLAS's own */) {
  cblas_dgemm(
      CblasRowMajor,
      CblasNoTrans,
      b_transposed ? CblasTrans : CblasNoTrans,
      M,
      N,
      K,
      1.0,
      a,
      K,
      b,
      b_transposed ? K : N,
      0.0,
      d,
      N);
}

} // namespace mlx::core::cpu
