// The float64 GEMM of the extended addmm: d (M x N) = a (M x K) times b, all
// row-major, b stored as N x K when b_transposed, else as K x N. The one place
// that names the BLAS: this extension calls OpenBLAS from the scipy-openblas32
// wheel (symbols prefixed scipy_, threads set per call); inside MLX it is
// cblas_dgemm of the BLAS MLX links.
#pragma once

#include <cblas.h>

#include <cstdint>

namespace mlx_precise::cpu {

inline void gemm_f64(
    bool b_transposed,
    int64_t M,
    int64_t N,
    int64_t K,
    const double* a,
    const double* b,
    double* d,
    int num_threads) {
  scipy_openblas_set_num_threads(num_threads);
  scipy_cblas_dgemm(
      CblasRowMajor,
      CblasNoTrans,
      b_transposed ? CblasTrans : CblasNoTrans,
      static_cast<blasint>(M),
      static_cast<blasint>(N),
      static_cast<blasint>(K),
      1.0,
      a,
      static_cast<blasint>(K),
      b,
      static_cast<blasint>(b_transposed ? K : N),
      0.0,
      d,
      static_cast<blasint>(N));
}

} // namespace mlx_precise::cpu
