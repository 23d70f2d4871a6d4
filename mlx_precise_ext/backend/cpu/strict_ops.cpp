// eval_cpu for StrictAddmm, StrictLayerNorm and StrictLayerNormVJP.
//
// Extended addmm: the float32 inputs are widened to float64, multiplied by
// the BLAS's dgemm (blas.h; every product is exact in float64, so the only
// error is the summation's, bounded by gamma_K times
// ||a_i|| ||b_j||), and each output whose error interval cannot straddle a
// float32 rounding boundary is that rounding, certified; the rest are
// recomputed exactly (certify_addmm). layer_norm runs the kernels of
// strict_kernels.cpp. "dd" is the same computation as "extended": where
// float64 exists, the correctly rounded result is cheaper than float pairs
// (README, "The dd contract"), and the bits are then those of extended.
#include <algorithm>
#include <memory>
#include <vector>

#include "backend/cpu/array_walk.h"
#include "backend/cpu/blas.h"
#include "backend/cpu/cpu_runtime.h"
#include "backend/cpu/recompute_counts.h"
#include "backend/cpu/strict_job.h"
#include "strict_primitives.h"

namespace mlx_precise {

namespace {

using cpu::aligned_strides;
using cpu::batch_offset;
using cpu::FloatMatrix;
using cpu::row_major;

// A buffer of doubles that is not zero-filled (every element is written by
// the GEMM or the widening before it is read) and is kept, per CPU stream
// thread, from one evaluation to the next: tens of MB of fresh pages per call
// would cost the kernel's page zeroing and faults on every call.
class DoubleBuffer {
 public:
  double* get(int64_t size) {
    if (size > size_) {
      data_.reset(new double[size]);
      size_ = size;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<double[]> data_;
  int64_t size_ = 0;
};

// The float64 copies of a's rows and the product (rows x (K + N) doubles, kept
// per thread between calls) are at most this many doubles (64 MiB): a tall a
// (M2-BERT's 32768 tokens) is multiplied in blocks of rows, so that
// (32768, 768) @ (768, 2304) holds 48 MiB of product instead of 576 MiB. Any
// blocking gives the same bits: every output is certified or recomputed
// exactly.
constexpr int64_t kBlockDoubles = int64_t(1) << 23;

void strict_addmm(
    const std::vector<mx::array>& in,
    mx::array& out,
    float alpha,
    float beta,
    bool has_c) {
  const mx::array& a = in[0];
  const mx::array& b = in[1];
  const mx::Shape& full = out.shape();
  const int rank = static_cast<int>(full.size());
  const mx::Shape batch(full.begin(), full.end() - 2);
  const int64_t M = full[rank - 2], N = full[rank - 1], K = a.shape(-1);
  int64_t batches = 1;
  for (auto d : batch)
    batches *= d;
  if (out.size() == 0)
    return;

  // The matrix dims of a and b are never broadcast; their batch dims may be.
  std::vector<int64_t> a_batch(rank - 2, 0), b_batch(rank - 2, 0);
  for (int d = 0; d < static_cast<int>(a.ndim()) - 2; ++d)
    if (a.shape(d) != 1)
      a_batch[rank - a.ndim() + d] = a.strides()[d];
  for (int d = 0; d < static_cast<int>(b.ndim()) - 2; ++d)
    if (b.shape(d) != 1)
      b_batch[rank - b.ndim() + d] = b.strides()[d];
  const int64_t a_rs = a.strides()[a.ndim() - 2],
                a_cs = a.strides()[a.ndim() - 1];
  const int64_t b_rs = b.strides()[b.ndim() - 2],
                b_cs = b.strides()[b.ndim() - 1];
  std::vector<int64_t> c_strides;
  if (has_c)
    c_strides = aligned_strides(in[2], full);
  const int threads = cpu::num_threads();
  const bool avx2 = cpu::use_avx2();

  const int64_t block_rows = std::min<int64_t>(
      M, std::max<int64_t>(64, kBlockDoubles / std::max<int64_t>(K + N, 1)));
  thread_local DoubleBuffer a_wide, b_wide_t, a_norm, b_norm, product;
  int64_t a_loaded = -1, b_loaded = -1;
  for (int64_t bi = 0; bi < batches; ++bi) {
    const int64_t a_off = batch_offset(bi, batch, a_batch);
    const int64_t b_off = batch_offset(bi, batch, b_batch);
    FloatMatrix c;
    if (has_c) {
      c.data = in[2].data<float>() + batch_offset(bi, batch, c_strides);
      c.row_stride = c_strides[rank - 2];
      c.col_stride = c_strides[rank - 1];
    }
    float* o = out.data<float>() + bi * M * N;
    // Consecutive batches that share a (in one block) or b reuse its
    // converted copy.
    const bool new_a = a_off != a_loaded, new_b = b_off != b_loaded;
    a_loaded = block_rows == M ? a_off : -1;
    b_loaded = b_off;
    // a's rows as (rows, K) and b transposed as (N, K), row-major doubles
    // with row norms.
    const auto widen = [&](const cpu::WidenJob& w) {
      if (avx2)
        cpu::avx2::widen(w, threads);
      else
        cpu::base::widen(w, threads);
    };
    if (new_b)
      widen(
          {b.data<float>() + b_off,
           N,
           K,
           b_cs,
           b_rs,
           b_wide_t.get(N * K),
           b_norm.get(N)});
    for (int64_t row = 0; row < M; row += block_rows) {
      const int64_t rows = std::min(block_rows, M - row);
      if (new_a || rows < M)
        widen(
            {a.data<float>() + a_off + row * a_rs,
             rows,
             K,
             a_rs,
             a_cs,
             a_wide.get(rows * K),
             a_norm.get(rows)});
      double* d = product.get(rows * N);
      if (K > 0) {
        cpu::gemm_f64(
            true, rows, N, K, a_wide.get(0), b_wide_t.get(0), d, threads);
      } else {
        std::fill_n(d, rows * N, 0.0);
      }
      FloatMatrix c_rows = c;
      if (has_c)
        c_rows.data += row * c.row_stride;
      cpu::CertifiedAddmmBlock job{
          rows,
          N,
          K,
          d,
          a_wide.get(0),
          b_wide_t.get(0),
          a_norm.get(0),
          b_norm.get(0),
          c_rows,
          alpha,
          beta,
          o + row * N};
      const int64_t recomputed = avx2 ? cpu::avx2::certify_addmm(job, threads)
                                      : cpu::base::certify_addmm(job, threads);
      cpu::count_recomputed(cpu::CertifiedOp::Addmm, rows * N, recomputed);
    }
  }
}

cpu::LayerNormRows layer_norm_rows(
    const mx::array& x,
    const float* x_data,
    const float* weight,
    const float* bias,
    double eps) {
  const int64_t dim = x.shape(-1);
  return cpu::LayerNormRows{
      static_cast<int64_t>(x.size()) / dim, dim, x_data, weight, bias, eps};
}

} // namespace

void StrictAddmm::eval_cpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  cpu::dispatch(
      stream(),
      inputs,
      out,
      [alpha = alpha_, beta = beta_, has_c = has_c_](
          const std::vector<mx::array>& in, mx::array& o) {
        strict_addmm(in, o, alpha, beta, has_c);
      });
}

void StrictLayerNorm::eval_cpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  cpu::dispatch(
      stream(),
      inputs,
      out,
      [eps = eps_, has_weight = has_weight_, has_bias = has_bias_](
          const std::vector<mx::array>& in, mx::array& o) {
        if (o.size() == 0)
          return;
        std::vector<float> x_copy, w_copy, b_copy;
        const float* x = row_major(in[0], x_copy);
        const float* w = has_weight ? row_major(in[1], w_copy) : nullptr;
        const float* b =
            has_bias ? row_major(in[has_weight ? 2 : 1], b_copy) : nullptr;
        cpu::LayerNormRows job = layer_norm_rows(in[0], x, w, b, eps);
        if (cpu::use_avx2())
          cpu::avx2::layer_norm_forward(
              job, o.data<float>(), cpu::num_threads());
        else
          cpu::base::layer_norm_forward(
              job, o.data<float>(), cpu::num_threads());
      });
}

void StrictLayerNormVJP::eval_cpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  cpu::dispatch_outputs(
      stream(),
      inputs,
      outputs,
      [eps = eps_,
       has_weight = has_weight_,
       want_x = want_x_,
       want_weight = want_weight_,
       want_bias = want_bias_](
          const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
        if (in[0].size() == 0) {
          for (auto& o : outs)
            std::fill_n(o.data<float>(), o.size(), 0.0f);
          return;
        }
        std::vector<float> x_copy, w_copy, g_copy;
        const float* x = row_major(in[0], x_copy);
        const float* w = has_weight ? row_major(in[1], w_copy) : nullptr;
        const float* g = row_major(in.back(), g_copy);
        size_t slot = 0;
        float* grad_x = want_x ? outs[slot++].data<float>() : nullptr;
        float* grad_w = want_weight ? outs[slot++].data<float>() : nullptr;
        float* grad_b = want_bias ? outs[slot++].data<float>() : nullptr;
        cpu::LayerNormRows job = layer_norm_rows(in[0], x, w, nullptr, eps);
        if (cpu::use_avx2())
          cpu::avx2::layer_norm_backward(
              job, g, grad_x, grad_w, grad_b, cpu::num_threads());
        else
          cpu::base::layer_norm_backward(
              job, g, grad_x, grad_w, grad_b, cpu::num_threads());
      });
}

} // namespace mlx_precise
