// eval_cpu for RFFTConv and BiasGradient: turns arrays (any strides, broadcast
// leading dims) into row descriptions and hands them to the FFT engine on
// MLX's CPU stream.
#include <algorithm>
#include <atomic>
#include <optional>

#include <mlx/backend/common/utils.h>

#include "backend/common/shapes.h"
#include "backend/cpu/conv_job.h"
#include "backend/cpu/cpu_runtime.h"
#include "pair_primitives.h"
#include "pair_vjp_primitives.h"
#include "primitives.h"

namespace mlx_precise {

namespace cpu {
namespace {
std::atomic<bool> certification_enabled{true};
} // namespace

bool rfft_conv_certification_enabled() {
  return certification_enabled.load(std::memory_order_relaxed);
}

void set_rfft_conv_certification(bool enabled) {
  certification_enabled.store(enabled, std::memory_order_relaxed);
}
} // namespace cpu

namespace {

using cpu::ConvGeometry;
using cpu::dispatch;
using cpu::num_threads;
using cpu::RealRow;
using cpu::use_avx2;

// Maps rows of a full batch shape onto the rows of an array whose batch dims
// (all but the last axis) are right-aligned with it and may be 1 (broadcast).
class RowMap {
 public:
  RowMap(
      const mx::Shape& full_batch,
      const mx::Shape& shape,
      const mx::Strides& strides)
      : full_(full_batch) {
    const int rank = static_cast<int>(full_.size());
    const int own = static_cast<int>(shape.size()) - 1;
    elem_stride_ = mx::Strides(rank, 0);
    row_stride_ = mx::Strides(rank, 0);
    int64_t row_step = 1;
    for (int d = own - 1; d >= 0; --d) {
      int fd = rank - own + d;
      if (shape[d] != 1) {
        elem_stride_[fd] = strides[d];
        row_stride_[fd] = row_step;
      }
      row_step *= shape[d];
    }
    time_stride_ = shape.back() == 1 ? 0 : strides.back();
  }
  // Element offset of full row r in the array.
  int64_t offset(int64_t r) const {
    return mx::elem_to_loc(r, full_, elem_stride_);
  }
  // Row number of full row r in the array's own row-major batch numbering.
  int64_t row(int64_t r) const {
    return mx::elem_to_loc(r, full_, row_stride_);
  }
  int64_t time_stride() const {
    return time_stride_;
  }

 private:
  mx::Shape full_;
  mx::Strides elem_stride_, row_stride_;
  int64_t time_stride_;
};

RowMap row_map(const mx::Shape& full, const mx::array& x) {
  return RowMap(full, x.shape(), x.strides());
}

RealRow real_row(const mx::array& x, const RowMap& m, int64_t r) {
  return RealRow{x.data<float>() + m.offset(r), m.time_stride()};
}

// Row r of a pair given as its hi and lo arrays.
RealRow pair_row(
    const mx::array& hi,
    const RowMap& hi_map,
    const mx::array& lo,
    const RowMap& lo_map,
    int64_t r) {
  return RealRow{
      hi.data<float>() + hi_map.offset(r),
      hi_map.time_stride(),
      lo.data<float>() + lo_map.offset(r),
      lo_map.time_stride()};
}

void run_shared(
    Precision p,
    const ConvGeometry& g,
    const cpu::SharedKernelTask& t) {
  if (use_avx2())
    cpu::avx2::run_shared_kernel(p, g, t, num_threads());
  else
    cpu::base::run_shared_kernel(p, g, t, num_threads());
}

void run_reduce(Precision p, const ConvGeometry& g, const cpu::ReduceTask& t) {
  if (use_avx2())
    cpu::avx2::run_reduce(p, g, t, num_threads());
  else
    cpu::base::run_reduce(p, g, t, num_threads());
}

void run_product_sum(Precision p, const cpu::ProductSumTask& t, int64_t len) {
  if (use_avx2())
    cpu::avx2::run_product_sum(p, t, len, num_threads());
  else
    cpu::base::run_product_sum(p, t, len, num_threads());
}

// Output rows are the target's rows; full rows are those of g (or of the
// broadcast output for the forward transform).
void convolve(
    const std::vector<mx::array>& in,
    mx::array& out,
    ConvVariant variant,
    int64_t period,
    Precision precision,
    bool has_bias,
    int conv_terms) {
  const mx::array& a = in[0]; // u (Convolve) or g
  const mx::array& b = in[1]; // k, or u (CorrelateKernel)
  const int64_t L = a.shape().back();
  const bool forward =
      variant == ConvVariant::Convolve || variant == ConvVariant::ConvolveSum;
  const mx::Shape full =
      forward ? batch_shape(out.shape()) : batch_shape(a.shape());
  const int64_t rows = shape_product(full);
  RowMap a_map = row_map(full, a), b_map = row_map(full, b);
  RowMap out_map(full, out.shape(), out.strides());
  float* out_data = out.data<float>();
  const int64_t out_len = out.shape().back();

  if (variant == ConvVariant::ConvolveSum) {
    // in: a_1, b_1, ..., a_n, b_n, c_1, d_1, ..., c_m, d_m (see primitives.h).
    const int64_t Lk = b.shape().back();
    const ConvGeometry g = conv_geometry(variant, period, L, Lk, L);
    const size_t conv_inputs = 2 * static_cast<size_t>(conv_terms);
    std::vector<RowMap> maps;
    for (const auto& x : in)
      maps.push_back(row_map(full, x));
    cpu::ReduceTask task;
    task.targets.resize(rows);
    for (int64_t r = 0; r < rows; ++r) {
      auto& target = task.targets[out_map.row(r)];
      target.out = out_data + out_map.row(r) * out_len;
      for (size_t i = 0; i < conv_inputs; i += 2)
        target.terms.push_back(
            {real_row(in[i], maps[i], r), real_row(in[i + 1], maps[i + 1], r)});
      for (size_t i = conv_inputs; i < in.size(); i += 2)
        target.bias_terms.push_back(
            {real_row(in[i], maps[i], r), real_row(in[i + 1], maps[i + 1], r)});
    }
    run_reduce(precision, g, task);
    return;
  }

  if (variant == ConvVariant::CorrelateKernel) {
    ConvGeometry g = conv_geometry(variant, period, L, L, out_len);
    cpu::ReduceTask task;
    task.targets.resize(shape_product(batch_shape(out.shape())));
    for (int64_t t = 0; t < static_cast<int64_t>(task.targets.size()); ++t)
      task.targets[t].out = out_data + t * out_len;
    for (int64_t r = 0; r < rows; ++r) {
      task.targets[out_map.row(r)].terms.push_back(
          {real_row(a, a_map, r), real_row(b, b_map, r)});
    }
    run_reduce(precision, g, task);
    return;
  }

  // Convolve: y = conv(u, k) (+ u bias). CorrelateInput: grad u (+ g bias).
  ConvGeometry g = conv_geometry(variant, period, L, b.shape().back(), L);
  const mx::Shape k_batch = batch_shape(b.shape());
  RowMap k_rows(full, b.shape(), b.strides());
  std::optional<RowMap> bias_map;
  if (has_bias)
    bias_map.emplace(row_map(full, in[2]));

  // One term per output row unless the target was broadcast (gradients).
  bool one_to_one = shape_product(batch_shape(out.shape())) == rows;
  if (one_to_one) {
    cpu::SharedKernelTask task;
    // Kernel rows in b's own numbering; each spectrum is computed once.
    const int64_t k_count = shape_product(k_batch);
    task.b_rows.resize(k_count);
    RowMap k_self(k_batch, b.shape(), b.strides());
    for (int64_t j = 0; j < k_count; ++j)
      task.b_rows[j] = real_row(b, k_self, j);
    task.rows.resize(rows);
    for (int64_t r = 0; r < rows; ++r) {
      auto& row = task.rows[r];
      row.a = real_row(a, a_map, r);
      row.b_index = k_rows.row(r);
      row.has_bias = has_bias;
      if (has_bias)
        row.bias = real_row(in[2], *bias_map, r);
      row.out = out_data + out_map.row(r) * out_len;
    }
    run_shared(precision, g, task);
    return;
  }
  cpu::ReduceTask task;
  task.targets.resize(shape_product(batch_shape(out.shape())));
  for (int64_t t = 0; t < static_cast<int64_t>(task.targets.size()); ++t)
    task.targets[t].out = out_data + t * out_len;
  for (int64_t r = 0; r < rows; ++r) {
    auto& target = task.targets[out_map.row(r)];
    target.terms.push_back({real_row(a, a_map, r), real_row(b, b_map, r)});
    if (has_bias)
      target.bias_terms.push_back(
          {real_row(a, a_map, r), real_row(in[2], *bias_map, r)});
  }
  run_reduce(precision, g, task);
}

// Rows of pairs through the shared-kernel task, in double, written as
// pairs: in[0..1] is the row transformed per output (u, or g for the
// gradients), in[2..3] the other operand (k, or u for the kernel's gradient),
// whose spectrum is computed once per row of its own, in[4] the bias.
void pair_convolve(
    ConvVariant variant,
    int64_t period,
    bool has_bias,
    const std::vector<mx::array>& in,
    std::vector<mx::array>& outs) {
  const mx::array &a_hi = in[0], &a_lo = in[1], &b_hi = in[2], &b_lo = in[3];
  const mx::Shape full = batch_shape(outs[0].shape());
  const int64_t rows = shape_product(full);
  const int64_t out_len = outs[0].shape().back();
  const ConvGeometry g = conv_geometry(
      variant, period, a_hi.shape().back(), b_hi.shape().back(), out_len);
  cpu::SharedKernelTask task;
  const mx::Shape b_batch = batch_shape(b_hi.shape());
  RowMap b_hi_self = row_map(b_batch, b_hi), b_lo_self = row_map(b_batch, b_lo);
  task.b_rows.resize(shape_product(b_batch));
  for (int64_t j = 0; j < static_cast<int64_t>(task.b_rows.size()); ++j)
    task.b_rows[j] = pair_row(b_hi, b_hi_self, b_lo, b_lo_self, j);
  RowMap b_rows = row_map(full, b_hi);
  RowMap a_hi_map = row_map(full, a_hi), a_lo_map = row_map(full, a_lo);
  std::optional<RowMap> bias_map;
  if (has_bias)
    bias_map.emplace(row_map(full, in[4]));
  task.rows.resize(rows);
  for (int64_t r = 0; r < rows; ++r) {
    auto& row = task.rows[r];
    row.a = pair_row(a_hi, a_hi_map, a_lo, a_lo_map, r);
    row.b_index = b_rows.row(r);
    row.has_bias = has_bias;
    if (has_bias)
      row.bias = real_row(in[4], *bias_map, r);
    row.out = outs[0].data<float>() + r * out_len;
    row.out_lo = outs[1].data<float>() + r * out_len;
  }
  run_shared(Precision::Extended, g, task);
}

} // namespace

void RFFTConv::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  dispatch(
      stream(),
      inputs,
      out,
      [variant = variant_,
       period = period_,
       precision = precision_,
       has_bias = has_bias_,
       conv_terms = conv_terms_](
          const std::vector<mx::array>& in, mx::array& o) {
        convolve(in, o, variant, period, precision, has_bias, conv_terms);
      });
}

// Inputs g, k, u [, bias]: grad u as the CorrelateInput node computes it,
// grad k as the CorrelateKernel node.
void RFFTConvGradients::eval_cpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  cpu::dispatch_outputs(
      stream(),
      inputs,
      outputs,
      [period = period_, precision = precision_, has_bias = has_bias_](
          const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
        convolve(
            RFFTConvGradients::input_gradient_inputs(in, has_bias),
            outs[0],
            ConvVariant::CorrelateInput,
            period,
            precision,
            has_bias,
            1);
        convolve(
            {in[0], in[2]},
            outs[1],
            ConvVariant::CorrelateKernel,
            period,
            precision,
            false,
            1);
      });
}

// Inputs u_hi, u_lo, k_hi, k_lo [, bias].
void PairRFFTConv::eval_cpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  cpu::dispatch_outputs(
      stream(),
      inputs,
      outputs,
      [period = period_, has_bias = has_bias_](
          const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
        pair_convolve(ConvVariant::Convolve, period, has_bias, in, outs);
      });
}

void PairRFFTCorrelate::eval_cpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  cpu::dispatch_outputs(
      stream(),
      inputs,
      outputs,
      [variant = variant_, period = period_, has_bias = has_bias_](
          const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
        pair_convolve(variant, period, has_bias, in, outs);
      });
}

// inputs g, u; out has the bias's shape (right-aligned to g's).
void BiasGradient::eval_cpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  dispatch(
      stream(),
      inputs,
      out,
      [precision = precision_](const std::vector<mx::array>& in, mx::array& o) {
        const mx::array& g = in[0];
        const mx::array& u = in[1];
        const mx::Shape full = batch_shape(g.shape());
        RowMap g_map = row_map(full, g), u_map = row_map(full, u);
        RowMap out_map(full, o.shape(), o.strides());
        const int64_t len = g.shape().back();
        const bool sum_time = o.shape().back() == 1;
        cpu::ProductSumTask task;
        task.targets.resize(shape_product(batch_shape(o.shape())));
        for (int64_t t = 0; t < static_cast<int64_t>(task.targets.size());
             ++t) {
          task.targets[t].out = o.data<float>() + t * o.shape().back();
          task.targets[t].sum_over_time = sum_time;
        }
        for (int64_t r = 0; r < shape_product(full); ++r) {
          auto& target = task.targets[out_map.row(r)];
          target.a.push_back(real_row(g, g_map, r));
          target.b.push_back(real_row(u, u_map, r));
        }
        run_product_sum(precision, task, len);
      });
}

} // namespace mlx_precise
