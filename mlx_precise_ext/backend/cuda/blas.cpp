#include "backend/cuda/blas.h"

#include <cublasLt.h>

#include <array>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include <mlx/allocator.h>
#include <mlx/backend/cuda/utils.h>

#include "backend/cuda/encoder.h"

namespace mlx_precise::cuda {

namespace {

void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(
        std::string("mlx-precise cuBLASLt: ") + what +
        " failed: " + cublasLtGetStatusString(status));
  }
}

cublasLtHandle_t handle(int device) {
  static std::mutex mutex;
  static std::map<int, cublasLtHandle_t> handles;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = handles.find(device);
  if (it == handles.end()) {
    cublasLtHandle_t h;
    check(cublasLtCreate(&h), "cublasLtCreate");
    it = handles.emplace(device, h).first;
  }
  return it->second;
}

// Descriptors released with their owner (a cached plan lives as long as the
// process).
struct MatmulDesc {
  cublasLtMatmulDesc_t desc = nullptr;
  ~MatmulDesc() {
    if (desc)
      cublasLtMatmulDescDestroy(desc);
  }
};
struct Layout {
  cublasLtMatrixLayout_t desc = nullptr;
  ~Layout() {
    if (desc)
      cublasLtMatrixLayoutDestroy(desc);
  }
};
struct Preference {
  cublasLtMatmulPreference_t desc = nullptr;
  ~Preference() {
    if (desc)
      cublasLtMatmulPreferenceDestroy(desc);
  }
};

// A column-major (rows, cols) view with leading dimension ld, `batches` of
// them batch_stride apart.
void make_layout(
    Layout& l,
    cudaDataType_t type,
    int64_t rows,
    int64_t cols,
    int64_t ld,
    int batches,
    int64_t batch_stride) {
  check(
      cublasLtMatrixLayoutCreate(&l.desc, type, rows, cols, ld),
      "cublasLtMatrixLayoutCreate");
  check(
      cublasLtMatrixLayoutSetAttribute(
          l.desc,
          CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
          &batches,
          sizeof(batches)),
      "cublasLtMatrixLayoutSetAttribute");
  check(
      cublasLtMatrixLayoutSetAttribute(
          l.desc,
          CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
          &batch_stride,
          sizeof(batch_stride)),
      "cublasLtMatrixLayoutSetAttribute");
}

// A product's descriptors and the algorithm cuBLASLt's heuristic picked for
// them: built at the first product of its shape, operand layouts and
// alignments, then only read (cublasLtMatmul does not modify them), so a call
// issues nothing but the captured cublasLtMatmul.
struct Plan {
  MatmulDesc desc;
  Layout first, second, result;
  cublasLtMatmulAlgo_t algo;
  size_t workspace;
};

constexpr uint64_t kMaxWorkspace = 32u << 20; // cuBLAS's advice for Hopper

// The descriptors of out = a @ b (row-major) as cuBLASLt's column-major
// out^T = b^T a^T, and the heuristic's algorithm for them and the operands'
// alignments.
void make_plan(
    Plan& plan,
    cublasLtHandle_t lt,
    bool f64,
    int m,
    int n,
    int k,
    int batches,
    const GemmOperand& a,
    const GemmOperand& b,
    const std::array<uint32_t, 3>& aligned) {
  const cudaDataType_t data = f64 ? CUDA_R_64F : CUDA_R_32F;
  // CUBLAS_COMPUTE_32F is plain float32 arithmetic: TF32 is a separate
  // compute type (CUBLAS_COMPUTE_32F_FAST_TF32), never chosen here.
  const cublasComputeType_t compute =
      f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
  check(
      cublasLtMatmulDescCreate(&plan.desc.desc, compute, data),
      "cublasLtMatmulDescCreate");
  const cublasOperation_t op_first = b.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = a.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
  check(
      cublasLtMatmulDescSetAttribute(
          plan.desc.desc,
          CUBLASLT_MATMUL_DESC_TRANSA,
          &op_first,
          sizeof(op_first)),
      "cublasLtMatmulDescSetAttribute");
  check(
      cublasLtMatmulDescSetAttribute(
          plan.desc.desc,
          CUBLASLT_MATMUL_DESC_TRANSB,
          &op_second,
          sizeof(op_second)),
      "cublasLtMatmulDescSetAttribute");

  // b stored (k, n) is column-major (n, k) = b^T; stored transposed it is
  // column-major (k, n) = b, taken with op T. Likewise for a.
  if (b.transposed)
    make_layout(plan.first, data, k, n, b.ld, batches, b.batch_stride);
  else
    make_layout(plan.first, data, n, k, b.ld, batches, b.batch_stride);
  if (a.transposed)
    make_layout(plan.second, data, m, k, a.ld, batches, a.batch_stride);
  else
    make_layout(plan.second, data, k, m, a.ld, batches, a.batch_stride);
  make_layout(plan.result, data, n, m, n, batches, static_cast<int64_t>(m) * n);

  Preference pref;
  check(
      cublasLtMatmulPreferenceCreate(&pref.desc),
      "cublasLtMatmulPreferenceCreate");
  auto set = [&](cublasLtMatmulPreferenceAttributes_t attr,
                 const void* value,
                 size_t size) {
    check(
        cublasLtMatmulPreferenceSetAttribute(pref.desc, attr, value, size),
        "cublasLtMatmulPreferenceSetAttribute");
  };
  set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
      &kMaxWorkspace,
      sizeof(kMaxWorkspace));
  set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
      &aligned[1],
      sizeof(uint32_t));
  set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      &aligned[0],
      sizeof(uint32_t));
  set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
      &aligned[2],
      sizeof(uint32_t));
  set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
      &aligned[2],
      sizeof(uint32_t));
  cublasLtMatmulHeuristicResult_t found{};
  int count = 0;
  check(
      cublasLtMatmulAlgoGetHeuristic(
          lt,
          plan.desc.desc,
          plan.first.desc,
          plan.second.desc,
          plan.result.desc,
          plan.result.desc,
          pref.desc,
          1,
          &found,
          &count),
      "cublasLtMatmulAlgoGetHeuristic");
  if (count == 0) {
    throw std::runtime_error(
        "mlx-precise cuBLASLt: no algorithm for this product");
  }
  plan.algo = found.algo;
  plan.workspace = found.workspaceSize;
}

} // namespace

// Row-major out = a @ b is column-major out^T = b^T a^T: cuBLASLt's first
// operand is b, its second a, each read in the orientation it is stored in.
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
    double beta) {
  const bool f64 = type == GemmType::Float64;
  const cublasLtHandle_t lt = handle(device);
  const std::array<uint32_t, 3> aligned{
      gemm_alignment(a.data), gemm_alignment(b.data), gemm_alignment(out)};
  const std::array<int64_t, 15> key{
      f64,
      m,
      n,
      k,
      batches,
      a.transposed,
      a.ld,
      a.batch_stride,
      b.transposed,
      b.ld,
      b.batch_stride,
      aligned[0],
      aligned[1],
      aligned[2],
      device};
  static std::mutex mutex;
  // Never destroyed: cuBLASLt may be unloaded before static destructors run.
  static auto* plans = new std::map<std::array<int64_t, 15>, Plan>();
  const Plan* plan = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = plans->find(key);
    if (it == plans->end()) {
      it = plans->try_emplace(key).first;
      try {
        make_plan(it->second, lt, f64, m, n, k, batches, a, b, aligned);
      } catch (...) {
        plans->erase(it);
        throw;
      }
    }
    plan = &it->second;
  }

  void* workspace = nullptr;
  if (plan->workspace > 0) {
    // One per stream, shared by every product on it (stream_buffer).
    mx::array& buffer = stream_buffer(
        encoder,
        device,
        stream_index,
        StreamBuffer::GemmWorkspace,
        kMaxWorkspace);
    encoder.set_output_array(buffer);
    workspace = mx::gpu_ptr<void>(buffer);
  }
  const float alpha32 = static_cast<float>(alpha);
  const float beta32 = static_cast<float>(beta);
  const void* alpha_ptr = f64 ? static_cast<const void*>(&alpha)
                              : static_cast<const void*>(&alpha32);
  const void* beta_ptr =
      f64 ? static_cast<const void*>(&beta) : static_cast<const void*>(&beta32);
  auto capture = encoder.capture_context();
  check(
      cublasLtMatmul(
          lt,
          plan->desc.desc,
          alpha_ptr,
          b.data,
          plan->first.desc,
          a.data,
          plan->second.desc,
          beta_ptr,
          out,
          plan->result.desc,
          out,
          plan->result.desc,
          &plan->algo,
          workspace,
          plan->workspace,
          encoder.stream()),
      "cublasLtMatmul");
}

} // namespace mlx_precise::cuda
