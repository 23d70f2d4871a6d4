// The cuBLASLt adapter of blas.h inside MLX: the strict addmm's products run
// through MLX's CublasMatmulBase (its cuBLASLt handle, its workspace limit,
// its workspace from the encoder). CublasGemm is not used: it picks TF32 for
// float32 when MLX_ENABLE_TF32 is set and passes alpha and beta as float,
// while "float32" here is never TF32 and "extended" scales in double.
#include "mlx/backend/cuda/precise/blas.h"

#include "mlx/backend/cuda/cublas_utils.h"

namespace mlx::core::cuda {

namespace {

class StrictGemm : public CublasMatmulBase {
 public:
  StrictGemm(
      cu::Device& device,
      GemmType type,
      int m,
      int n,
      int k,
      int batches,
      const GemmOperand& a,
      const GemmOperand& b,
      const void* out) {
    const bool f64 = type == GemmType::Float64;
    const cudaDataType_t data = f64 ? CUDA_R_64F : CUDA_R_32F;
    init_base(
        device,
        data,
        f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F,
        data,
        data,
        a.transposed,
        m,
        k,
        a.ld,
        b.transposed,
        k,
        n,
        b.ld,
        batches,
        a.batch_stride,
        b.batch_stride);
    // The shared preference leaves cuBLASLt assuming 256-byte aligned
    // operands, which a view of an array need not be: this product states
    // its operands' alignment in a preference of its own (cuBLASLt's first
    // operand is b, its second a).
    uint64_t workspace = 0;
    size_t written = 0;
    CHECK_CUBLAS_ERROR(cublasLtMatmulPreferenceGetAttribute(
        pref_,
        CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
        &workspace,
        sizeof(workspace),
        &written));
    CHECK_CUBLAS_ERROR(cublasLtMatmulPreferenceCreate(&aligned_pref_));
    pref_ = aligned_pref_;
    set_preference(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, workspace);
    set_preference(
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, gemm_alignment(b.data));
    set_preference(
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, gemm_alignment(a.data));
    set_preference(
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, gemm_alignment(out));
    set_preference(
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, gemm_alignment(out));
  }

  ~StrictGemm() override {
    CHECK_CUBLAS_ERROR(cublasLtMatmulPreferenceDestroy(aligned_pref_));
  }

  // out = alpha a @ b + beta out, alpha and beta in the compute type.
  template <typename T>
  void run(
      cu::CommandEncoder& encoder,
      const void* a,
      const void* b,
      void* out,
      T alpha,
      T beta) {
    execute_matmul(encoder, out, a, b, nullptr, &alpha, &beta);
  }

 private:
  template <typename T>
  void set_preference(cublasLtMatmulPreferenceAttributes_t attribute, T value) {
    CHECK_CUBLAS_ERROR(cublasLtMatmulPreferenceSetAttribute(
        aligned_pref_, attribute, &value, sizeof(value)));
  }

  cublasLtMatmulPreference_t aligned_pref_{nullptr};
};

} // namespace

// MLX allocates each product's workspace from the encoder, so the stream
// index the extension keys its shared workspace by is not needed here.
void gemm(
    cu::CommandEncoder& encoder,
    int,
    int,
    GemmType type,
    int m,
    int n,
    int k,
    int batches,
    const GemmOperand& a,
    const GemmOperand& b,
    void* out,
    double alpha,
    double beta) {
  StrictGemm product(encoder.device(), type, m, n, k, batches, a, b, out);
  if (type == GemmType::Float64) {
    product.run(encoder, a.data, b.data, out, alpha, beta);
  } else {
    product.run(
        encoder,
        a.data,
        b.data,
        out,
        static_cast<float>(alpha),
        static_cast<float>(beta));
  }
}

} // namespace mlx::core::cuda
