// eval_cpu for PairElementwise, PairAddmm and PairLayerNorm, and for the
// gradients' PairSum, PairRows, PairLayerNormVJP and PairCrossEntropy: each
// pair is read as the double hi + lo, the op runs in double, and the result
// is written back as a pair (dd_from_double), never rounded to float32.
// (PairRFFTConv and PairRFFTCorrelate run the FFT engine:
// backend/cpu/rfft_conv.cpp.)
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include "backend/common/shapes.h"
#include "backend/cpu/array_walk.h"
#include "backend/cpu/blas.h"
#include "backend/cpu/cpu_runtime.h"
#include "kernels/pair_grad.h"
#include "kernels/pair_math.h"
#include "pair_primitives.h"
#include "pair_vjp_primitives.h"

namespace mlx_precise {

namespace {

double widen(float hi, float lo) {
  return dd_to_double(ff{hi, lo});
}

void store(double v, float* hi, float* lo, int64_t i) {
  const ff pair = dd_from_double(v);
  hi[i] = pair.hi;
  lo[i] = pair.lo;
}

// Inputs already have the output's shape (broadcast views): the output is
// walked row by row (last axis), each input at its own strides.
void elementwise(
    PairOp op,
    const std::vector<mx::array>& in,
    std::vector<mx::array>& out) {
  const mx::Shape& shape = out[0].shape();
  const int64_t size = out[0].size();
  if (size == 0)
    return;
  const int rank = static_cast<int>(shape.size());
  const int64_t inner = rank ? shape.back() : 1;
  const mx::Shape outer_shape(shape.begin(), shape.end() - (rank ? 1 : 0));
  std::vector<std::vector<int64_t>> strides;
  std::vector<int64_t> inner_stride;
  for (const auto& x : in) {
    strides.push_back(cpu::aligned_strides(x, shape));
    inner_stride.push_back(rank ? strides.back().back() : 0);
  }
  float* hi = out[0].data<float>();
  float* lo = out[1].data<float>();
  const bool binary = in.size() == 4;
  constexpr int64_t kRowsPerTask = 64;
  const int64_t rows = size / inner;
  cpu::parallel_for(
      (rows + kRowsPerTask - 1) / kRowsPerTask,
      cpu::num_threads(),
      [&](int64_t task) {
        const int64_t last = std::min(rows, (task + 1) * kRowsPerTask);
        for (int64_t r = task * kRowsPerTask; r < last; ++r) {
          const float* p[4];
          for (size_t j = 0; j < in.size(); ++j)
            p[j] = in[j].data<float>() +
                cpu::batch_offset(r, outer_shape, strides[j]);
          for (int64_t t = 0; t < inner; ++t) {
            const ff v = pair_element<double>(
                op,
                binary,
                p[0][t * inner_stride[0]],
                p[1][t * inner_stride[1]],
                binary ? p[2][t * inner_stride[2]] : 0.0f,
                binary ? p[3][t * inner_stride[3]] : 0.0f);
            hi[r * inner + t] = v.hi;
            lo[r * inner + t] = v.lo;
          }
        }
      });
}

// A buffer of doubles kept per thread from one evaluation to the next (see
// the DoubleBuffer of strict_ops.cpp: fresh pages cost more than the copy).
double* scratch(std::vector<double>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size)
    buffer.resize(size);
  return buffer.data();
}

// a @ b + c per batch: a and b as hi + lo widened to row-major doubles, one
// float64 GEMM, c added in double, the result as pairs.
void addmm(
    const std::vector<mx::array>& in,
    std::vector<mx::array>& out,
    bool has_c) {
  const mx::array &a_hi = in[0], &a_lo = in[1], &b = in[2], &b_lo = in[3];
  const mx::Shape& full = out[0].shape();
  const int rank = static_cast<int>(full.size());
  const mx::Shape batch(full.begin(), full.end() - 2);
  const int64_t M = full[rank - 2], N = full[rank - 1], K = b.shape(-2);
  if (out[0].size() == 0)
    return;
  // Batch strides right-aligned to the output's (matrix dims included, so
  // batch_offset over `batch` reads only the leading ones).
  const auto hi_strides = cpu::aligned_strides(a_hi, full);
  const auto lo_strides = cpu::aligned_strides(a_lo, full);
  const auto b_strides = cpu::aligned_strides(b, full);
  const auto b_lo_strides = cpu::aligned_strides(b_lo, full);
  std::vector<int64_t> c_strides;
  if (has_c)
    c_strides = cpu::aligned_strides(in[4], full);
  const int64_t hi_rs = a_hi.strides()[a_hi.ndim() - 2],
                hi_cs = a_hi.strides()[a_hi.ndim() - 1];
  const int64_t lo_rs = a_lo.strides()[a_lo.ndim() - 2],
                lo_cs = a_lo.strides()[a_lo.ndim() - 1];
  const int64_t b_rs = b.strides()[b.ndim() - 2],
                b_cs = b.strides()[b.ndim() - 1];
  const int64_t b_lo_rs = b_lo.strides()[b_lo.ndim() - 2],
                b_lo_cs = b_lo.strides()[b_lo.ndim() - 1];
  thread_local std::vector<double> a_buffer, b_buffer, d_buffer;
  double* a_wide = scratch(a_buffer, M * K);
  double* b_wide = scratch(b_buffer, K * N);
  double* d = scratch(d_buffer, M * N);
  const int64_t batches = out[0].size() / (M * N);
  for (int64_t bi = 0; bi < batches; ++bi) {
    const float* hi =
        a_hi.data<float>() + cpu::batch_offset(bi, batch, hi_strides);
    const float* lo =
        a_lo.data<float>() + cpu::batch_offset(bi, batch, lo_strides);
    const float* bb = b.data<float>() + cpu::batch_offset(bi, batch, b_strides);
    const float* bb_lo =
        b_lo.data<float>() + cpu::batch_offset(bi, batch, b_lo_strides);
    cpu::parallel_for(M, cpu::num_threads(), [&](int64_t i) {
      for (int64_t k = 0; k < K; ++k)
        a_wide[i * K + k] =
            widen(hi[i * hi_rs + k * hi_cs], lo[i * lo_rs + k * lo_cs]);
    });
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < N; ++j)
        b_wide[k * N + j] =
            widen(bb[k * b_rs + j * b_cs], bb_lo[k * b_lo_rs + j * b_lo_cs]);
    if (K > 0) {
      cpu::gemm_f64(false, M, N, K, a_wide, b_wide, d, cpu::num_threads());
    } else {
      std::fill_n(d, M * N, 0.0);
    }
    float* o_hi = out[0].data<float>() + bi * M * N;
    float* o_lo = out[1].data<float>() + bi * M * N;
    const float* c = has_c
        ? in[4].data<float>() + cpu::batch_offset(bi, batch, c_strides)
        : nullptr;
    cpu::parallel_for(M, cpu::num_threads(), [&](int64_t i) {
      for (int64_t j = 0; j < N; ++j) {
        double v = d[i * N + j];
        if (c)
          v += c[i * c_strides[rank - 2] + j * c_strides[rank - 1]];
        store(v, o_hi, o_lo, i * N + j);
      }
    });
  }
}

// torch's layer_norm in double: mean, biased variance about the mean, eps
// inside the square root, then * weight + bias.
void layer_norm(
    const std::vector<mx::array>& in,
    std::vector<mx::array>& out,
    double eps,
    bool has_weight,
    bool has_bias) {
  if (out[0].size() == 0)
    return;
  std::vector<float> hi_copy, lo_copy, w_copy, b_copy;
  const float* hi = cpu::row_major(in[0], hi_copy);
  const float* lo = cpu::row_major(in[1], lo_copy);
  const float* w = has_weight ? cpu::row_major(in[2], w_copy) : nullptr;
  const float* b =
      has_bias ? cpu::row_major(in[has_weight ? 3 : 2], b_copy) : nullptr;
  const int64_t dim = in[0].shape(-1);
  const int64_t rows = in[0].size() / dim;
  float* o_hi = out[0].data<float>();
  float* o_lo = out[1].data<float>();
  cpu::parallel_for(rows, cpu::num_threads(), [&](int64_t r) {
    thread_local std::vector<double> x;
    x.resize(dim);
    const int64_t base = r * dim;
    NeumaierSum sum, squares;
    for (int64_t i = 0; i < dim; ++i) {
      x[i] = widen(hi[base + i], lo[base + i]);
      sum.add(x[i]);
    }
    const double mean = sum.value() / static_cast<double>(dim);
    for (int64_t i = 0; i < dim; ++i) {
      x[i] -= mean;
      squares.add(x[i] * x[i]);
    }
    const double inv_std =
        1.0 / std::sqrt(squares.value() / static_cast<double>(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) {
      double v = x[i] * inv_std;
      if (w)
        v *= w[i];
      if (b)
        v += b[i];
      store(v, o_hi, o_lo, base + i);
    }
  });
}

// Element i (row-major over x's shape) of the pair x as a double.
class PairReader {
 public:
  explicit PairReader(const std::vector<mx::array>& in, size_t first = 0)
      : hi_(in[first]),
        lo_(in[first + 1]),
        contiguous_(hi_.flags().row_contiguous && lo_.flags().row_contiguous) {}
  double operator()(int64_t i) const {
    if (contiguous_)
      return widen(hi_.data<float>()[i], lo_.data<float>()[i]);
    return widen(
        hi_.data<float>()[mx::elem_to_loc(i, hi_.shape(), hi_.strides())],
        lo_.data<float>()[mx::elem_to_loc(i, lo_.shape(), lo_.strides())]);
  }

 private:
  const mx::array& hi_;
  const mx::array& lo_;
  bool contiguous_;
};

int64_t id_at(const mx::array& ids, int64_t i) {
  return ids.data<int32_t>()[mx::elem_to_loc(i, ids.shape(), ids.strides())];
}

// Dims of the input to sum_to, split into those kept (the output's dims that
// are not 1, in order) and those summed, each with the strides of hi and lo.
struct SplitDims {
  mx::Shape shape;
  std::vector<int64_t> hi_strides, lo_strides;

  void add(int size, int64_t hi_stride, int64_t lo_stride) {
    shape.push_back(size);
    hi_strides.push_back(hi_stride);
    lo_strides.push_back(lo_stride);
  }
  // Offsets in hi and lo of element i, row-major over `shape`.
  std::pair<int64_t, int64_t> offsets(int64_t i) const {
    int64_t hi = 0, lo = 0;
    for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
      const int64_t index = i % shape[d];
      hi += index * hi_strides[d];
      lo += index * lo_strides[d];
      i /= shape[d];
    }
    return {hi, lo};
  }
};

// in (hi, lo) summed to out's shape (aligned right; dims of 1 and missing
// leading dims summed), one compensated double sum per output, the outputs
// shared among the threads.
void sum_to(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  const mx::array &hi = in[0], &lo = in[1];
  const int offset = static_cast<int>(hi.ndim() - out[0].ndim());
  SplitDims kept, summed;
  for (int d = 0; d < static_cast<int>(hi.ndim()); ++d) {
    const bool keep = d >= offset && out[0].shape(d - offset) != 1;
    (keep ? kept : summed).add(hi.shape(d), hi.strides()[d], lo.strides()[d]);
  }
  const int64_t terms = shape_product(summed.shape);
  const float* hi_data = hi.data<float>();
  const float* lo_data = lo.data<float>();
  constexpr int64_t kTermsPerTask = 1 << 14;
  const int64_t grain =
      std::max<int64_t>(1, kTermsPerTask / std::max<int64_t>(terms, 1));
  cpu::parallel_chunks(
      out[0].size(),
      grain,
      cpu::num_threads(),
      [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const auto [hi_base, lo_base] = kept.offsets(t);
          NeumaierSum sum;
          for (int64_t j = 0; j < terms; ++j) {
            const auto [hi_at, lo_at] = summed.offsets(j);
            sum.add(widen(hi_data[hi_base + hi_at], lo_data[lo_base + lo_at]));
          }
          store(sum.value(), out[0].data<float>(), out[1].data<float>(), t);
        }
      });
}

// Gather: out[i, :] = table[ids[i], :]; ScatterAdd: out[v, :] = sum over the
// i with ids[i] = v of g[i, :].
void rows(
    PairRows::Variant variant,
    const std::vector<mx::array>& in,
    std::vector<mx::array>& out) {
  const mx::array& ids = in[2];
  const int64_t count = ids.size();
  const int64_t dim = out[0].shape(-1);
  float* hi = out[0].data<float>();
  float* lo = out[1].data<float>();
  const PairReader x(in);
  if (variant == PairRows::Variant::Gather) {
    const int64_t table_rows = in[0].shape(0);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t id = id_at(ids, i);
      for (int64_t j = 0; j < dim; ++j)
        store(
            id >= 0 && id < table_rows
                ? x(id * dim + j)
                : std::numeric_limits<double>::quiet_NaN(),
            hi,
            lo,
            i * dim + j);
    }
    return;
  }
  // The positions of each id, in order (a counting sort), then one task per
  // table row: memory O(ids + rows), each sum in the positions' order.
  const int64_t table_rows = out[0].shape(0);
  std::vector<int64_t> first(table_rows + 1, 0), positions(count);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t id = id_at(ids, i);
    if (id >= 0 && id < table_rows)
      ++first[id + 1];
  }
  for (int64_t v = 0; v < table_rows; ++v)
    first[v + 1] += first[v];
  std::vector<int64_t> next(first.begin(), first.end() - 1);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t id = id_at(ids, i);
    if (id >= 0 && id < table_rows)
      positions[next[id]++] = i;
  }
  cpu::parallel_chunks(
      table_rows, 64, cpu::num_threads(), [&](int64_t begin, int64_t end) {
        for (int64_t v = begin; v < end; ++v)
          for (int64_t j = 0; j < dim; ++j) {
            NeumaierSum sum;
            for (int64_t p = first[v]; p < first[v + 1]; ++p)
              sum.add(x(positions[p] * dim + j));
            store(sum.value(), hi, lo, v * dim + j);
          }
      });
}

// torch's layer_norm backward per row, in double: xhat = (x - mean) rstd,
// gw = g w, dx = rstd (gw - mean(gw) - xhat mean(gw xhat)); also g xhat.
void layer_norm_vjp(
    const std::vector<mx::array>& in,
    std::vector<mx::array>& out,
    double eps,
    bool has_weight) {
  if (out[0].size() == 0)
    return;
  const int64_t dim = in[0].shape(-1);
  const int64_t rows = in[0].size() / dim;
  std::vector<float> w_copy;
  const float* w = has_weight ? cpu::row_major(in[2], w_copy) : nullptr;
  const PairReader x_at(in), g_at(in, has_weight ? 3 : 2);
  cpu::parallel_for(rows, cpu::num_threads(), [&](int64_t r) {
    const int64_t base = r * dim;
    pair_layer_norm_vjp_row(
        dim,
        eps,
        w != nullptr,
        [&](int64_t i) { return x_at(base + i); },
        [&](int64_t i) { return g_at(base + i); },
        [&](int64_t i) { return static_cast<double>(w[i]); },
        [&](int64_t i, double v) {
          store(v, out[2].data<float>(), out[3].data<float>(), base + i);
        },
        [&](int64_t i, double v) {
          store(v, out[0].data<float>(), out[1].data<float>(), base + i);
        });
  });
}

// The weighted mean cross-entropy (forward: the scalar; gradient: per logit,
// times the scalar cotangent in[4..5]). A target outside [0, V) gives NaN.
void cross_entropy(
    bool gradient,
    const std::vector<mx::array>& in,
    std::vector<mx::array>& out) {
  const int64_t rows = in[0].shape(0), classes = in[0].shape(1);
  const PairReader logit(in);
  const mx::array &targets = in[2], &weights = in[3];
  auto weight_at = [&](int64_t i) {
    return static_cast<double>(weights.data<float>()[mx::elem_to_loc(
        i, weights.shape(), weights.strides())]);
  };
  NeumaierSum weight_sum, loss_sum;
  for (int64_t i = 0; i < rows; ++i)
    weight_sum.add(weight_at(i));
  const double total_weight = weight_sum.value();
  const double cot = gradient ? PairReader(in, 4)(0) : 0.0;
  std::vector<double> l(classes);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < classes; ++j)
      l[j] = logit(i * classes + j);
    const double log_sum_exp =
        pair_log_sum_exp(classes, [&](int64_t j) { return l[j]; });
    const int64_t t = id_at(targets, i);
    const bool valid = t >= 0 && t < classes;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    if (!gradient) {
      if (weight_at(i) != 0.0)
        loss_sum.add(weight_at(i) * (valid ? log_sum_exp - l[t] : nan));
      continue;
    }
    const double scale = cot * weight_at(i) / total_weight;
    for (int64_t j = 0; j < classes; ++j)
      store(
          valid ? cross_entropy_logit_grad(scale, l[j], log_sum_exp, j == t)
                : nan,
          out[0].data<float>(),
          out[1].data<float>(),
          i * classes + j);
  }
  if (!gradient)
    store(
        loss_sum.value() / total_weight,
        out[0].data<float>(),
        out[1].data<float>(),
        0);
}

} // namespace

void PairElementwise::eval_cpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  cpu::dispatch_outputs(
      stream(),
      inputs,
      outputs,
      [op = op_](
          const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
        elementwise(op, in, outs);
      });
}

void PairAddmm::eval_cpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  cpu::dispatch_outputs(
      stream(),
      inputs,
      outputs,
      [has_c = has_c_](
          const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
        addmm(in, outs, has_c);
      });
}

void PairLayerNorm::eval_cpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  cpu::dispatch_outputs(
      stream(),
      inputs,
      outputs,
      [eps = eps_, has_weight = has_weight_, has_bias = has_bias_](
          const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
        layer_norm(in, outs, eps, has_weight, has_bias);
      });
}

void PairSum::eval_cpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  cpu::dispatch_outputs(stream(), inputs, outputs, sum_to);
}

void PairRows::eval_cpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  cpu::dispatch_outputs(
      stream(),
      inputs,
      outputs,
      [variant = variant_](
          const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
        rows(variant, in, outs);
      });
}

void PairLayerNormVJP::eval_cpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  cpu::dispatch_outputs(
      stream(),
      inputs,
      outputs,
      [eps = eps_, has_weight = has_weight_](
          const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
        layer_norm_vjp(in, outs, eps, has_weight);
      });
}

void PairCrossEntropy::eval_cpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  cpu::dispatch_outputs(
      stream(),
      inputs,
      outputs,
      [gradient = gradient_](
          const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
        cross_entropy(gradient, in, outs);
      });
}

} // namespace mlx_precise
