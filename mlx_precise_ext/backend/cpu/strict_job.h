// The work of one strict addmm / layer_norm evaluation on the CPU, described
// as plain pointers and strides, and the kernels (one build per instruction
// set, chosen at run time like the FFT kernels; see CMakeLists.txt) that do it.
#pragma once

#include <cstdint>

namespace mlx_precise::cpu {

// Element (i, j) is data[i * row_stride + j * col_stride]; stride 0 repeats
// (broadcast). data == nullptr means "absent".
struct FloatMatrix {
  const float* data = nullptr;
  int64_t row_stride = 0;
  int64_t col_stride = 0;
  float at(int64_t i, int64_t j) const {
    return data[i * row_stride + j * col_stride];
  }
};

// A float32 matrix (rows x cols, element (i, j) at data[i * row_stride + j *
// col_stride]) to be widened into row-major doubles with the 2-norm of each
// row.
struct WidenJob {
  const float* data;
  int64_t rows, cols, row_stride, col_stride;
  double* out;
  double* row_norms;
};

// One (M, N) output block of extended addmm: out = alpha * (A @ B) + beta * c.
// product holds fl64(A @ B) from a float64 GEMM of the float32 inputs (exact
// products, any summation order); a_double (M x K) and b_double_t (N x K, B
// transposed) the inputs as row-major doubles, a_norm[i] ~ ||A[i, :]||_2 and
// b_norm[j] ~ ||B[:, j]||_2.
struct CertifiedAddmmBlock {
  int64_t m, n, k;
  const double* product;
  const double* a_double;
  const double* b_double_t;
  const double* a_norm;
  const double* b_norm;
  FloatMatrix c;
  float alpha, beta;
  float* out; // row-major (m, n)
};

// rows x dim layer_norm input, rows contiguous in memory one after another
// (row r starts at x + r * dim); weight / bias may be null.
struct LayerNormRows {
  int64_t rows, dim;
  const float* x;
  const float* weight;
  const float* bias;
  double eps;
};

#define MP_DECLARE_STRICT_KERNELS(isa)                                        \
  namespace isa {                                                             \
  void widen(const WidenJob&, int num_threads);                               \
  int64_t certify_addmm(const CertifiedAddmmBlock&, int num_threads);         \
  void layer_norm_forward(const LayerNormRows&, float* out, int num_threads); \
  void layer_norm_backward(                                                   \
      const LayerNormRows&,                                                   \
      const float* grad,                                                      \
      float* grad_x,                                                          \
      float* grad_weight,                                                     \
      float* grad_bias,                                                       \
      int num_threads);                                                       \
  }

MP_DECLARE_STRICT_KERNELS(base)
MP_DECLARE_STRICT_KERNELS(avx2)

} // namespace mlx_precise::cpu
