// CPU kernels of the strict ops, compiled once per instruction-set build
// (MP_CPU_ISA, see CMakeLists.txt); the arithmetic itself is in
// kernels/strict_arith.h. Work is split over rows (or column strips), never
// over a reduction, so the bits do not depend on the thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>
#include <type_traits>
#include <vector>

#include "backend/cpu/parallel.h"
#include "backend/cpu/strict_job.h"
#include "kernels/strict_arith.h"

namespace mlx_precise::cpu::MP_CPU_ISA {
namespace {

// Element p of a row (or a column, through the transposed copy) of the
// widened inputs.
struct WideRow {
  const double* data;
  double operator()(int64_t p) const {
    return data[p];
  }
};

float exact_addmm_entry(const CertifiedAddmmBlock& t, int64_t i, int64_t j) {
  const bool has_c = t.c.data != nullptr;
  return mlx_precise::exact_addmm_entry(
      WideRow{t.a_double + i * t.k},
      WideRow{t.b_double_t + j * t.k},
      t.k,
      t.alpha,
      has_c,
      t.beta,
      has_c ? t.c.at(i, j) : 0.0f);
}

// dd addmm tiles: kTileRows x kTileCols outputs accumulate together (their
// pairs stay in registers and the column loop vectorises), each output with
// its own k = 0..K-1 order, so tiling never changes a bit.
constexpr int64_t kTileRows = 2;
constexpr int64_t kTileCols = 16;

template <int64_t Rows>
void dd_tile(
    const DoubleWordAddmmBlock& t,
    const float* strip,
    int64_t i0,
    int64_t j0,
    int64_t cols) {
  ff acc[Rows][kTileCols];
  for (int64_t r = 0; r < Rows; ++r)
    for (int64_t c = 0; c < kTileCols; ++c)
      acc[r][c] = ff{0.0f, 0.0f};
  for (int64_t p = 0; p < t.k; ++p) {
    const float* b = strip + p * kTileCols;
    for (int64_t r = 0; r < Rows; ++r) {
      const float a = t.a[(i0 + r) * t.k + p];
      for (int64_t c = 0; c < kTileCols; ++c)
        acc[r][c] = dd_dot_step(acc[r][c], a, b[c]);
    }
  }
  for (int64_t r = 0; r < Rows; ++r) {
    float* out = t.out + (i0 + r) * t.n + j0;
    for (int64_t c = 0; c < cols; ++c) {
      out[c] = t.c.data != nullptr
          ? dd_addmm_result(acc[r][c], t.alpha, t.beta, t.c.at(i0 + r, j0 + c))
          : dd_scaled_result(acc[r][c], t.alpha);
    }
  }
}

template <class T>
T working_eps(double eps);
template <>
double working_eps<double>(double eps) {
  return eps;
}
template <>
ff working_eps<ff>(double eps) {
  return dd_from_double(eps);
}

template <class T>
void layer_norm_forward_t(
    const LayerNormRows& job,
    float* out,
    int num_threads) {
  const T eps = working_eps<T>(job.eps);
  parallel_chunks(job.rows, 16, num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* x = job.x + r * job.dim;
      float* y = out + r * job.dim;
      const LayerNormStats<T> s = layer_norm_stats(x, job.dim, eps);
      // The weight / bias cases as separate loops, so that each vectorises.
      const float* w = job.weight;
      const float* b = job.bias;
      if (w && b)
        for (int64_t i = 0; i < job.dim; ++i)
          y[i] = layer_norm_output(s, x[i], true, w[i], true, b[i]);
      else if (w)
        for (int64_t i = 0; i < job.dim; ++i)
          y[i] = layer_norm_output(s, x[i], true, w[i], false, 0.0f);
      else if (b)
        for (int64_t i = 0; i < job.dim; ++i)
          y[i] = layer_norm_output(s, x[i], false, 0.0f, true, b[i]);
      else
        for (int64_t i = 0; i < job.dim; ++i)
          y[i] = layer_norm_output(s, x[i], false, 0.0f, false, 0.0f);
    }
  });
}

// grad_x = inv_std * ((gw - mean(gw)) - n * mean(gw * n)), gw = grad * weight
// (exact product), n the normalised input; sums in lanes as in the forward.
// grad_weight = sum over rows of grad * n, grad_bias = sum of grad: each
// column sums its rows in order 0, 1, ... (threads split the columns).
template <class T>
void layer_norm_backward_t(
    const LayerNormRows& job,
    const float* grad,
    float* grad_x,
    float* grad_weight,
    float* grad_bias,
    int num_threads) {
  const T eps = working_eps<T>(job.eps);
  const T zero = r_from_float(eps, 0.0f);
  const T count = r_from_float(eps, static_cast<float>(job.dim));
  std::vector<LayerNormStats<T>> stats(job.rows);
  parallel_chunks(job.rows, 16, num_threads, [&](int64_t begin, int64_t end) {
    std::vector<T> gw(job.dim), n(job.dim);
    for (int64_t r = begin; r < end; ++r) {
      const float* x = job.x + r * job.dim;
      const float* g = grad + r * job.dim;
      const LayerNormStats<T> s = layer_norm_stats(x, job.dim, eps);
      stats[r] = s;
      if (grad_x == nullptr)
        continue;
      T sum_gw[kLayerNormLanes], sum_gwn[kLayerNormLanes];
      for (int l = 0; l < kLayerNormLanes; ++l)
        sum_gw[l] = sum_gwn[l] = zero;
      for (int64_t i = 0; i < job.dim; ++i) {
        gw[i] = job.weight ? r_prod(eps, g[i], job.weight[i])
                           : r_from_float(eps, g[i]);
        n[i] = layer_norm_normalized(s, x[i]);
        const int l = static_cast<int>(i % kLayerNormLanes);
        sum_gw[l] = r_add(sum_gw[l], gw[i]);
        sum_gwn[l] = r_add(sum_gwn[l], r_mul(gw[i], n[i]));
      }
      const T mean_gw = r_div(combine_lanes(sum_gw), count);
      const T mean_gwn = r_div(combine_lanes(sum_gwn), count);
      float* dx = grad_x + r * job.dim;
      for (int64_t i = 0; i < job.dim; ++i)
        dx[i] = layer_norm_grad_x(s, gw[i], n[i], mean_gw, mean_gwn);
    }
  });
  if (grad_weight == nullptr && grad_bias == nullptr)
    return;
  parallel_chunks(job.dim, 64, num_threads, [&](int64_t begin, int64_t end) {
    std::vector<T> dw(end - begin, zero), db(end - begin, zero);
    for (int64_t r = 0; r < job.rows; ++r) {
      const float* x = job.x + r * job.dim;
      const float* g = grad + r * job.dim;
      for (int64_t i = begin; i < end; ++i) {
        if (grad_weight)
          dw[i - begin] = r_add(
              dw[i - begin],
              r_mul(
                  r_from_float(eps, g[i]),
                  layer_norm_normalized(stats[r], x[i])));
        if (grad_bias)
          db[i - begin] = r_add(db[i - begin], r_from_float(eps, g[i]));
      }
    }
    for (int64_t i = begin; i < end; ++i) {
      if (grad_weight)
        grad_weight[i] = r_round(dw[i - begin]);
      if (grad_bias)
        grad_bias[i] = r_round(db[i - begin]);
    }
  });
}

} // namespace

// Rows are copied in blocks of kWidenBlock so that a transposed source (B read
// along its columns) is still read a cache line at a time.
constexpr int64_t kWidenBlock = 16;

void widen(const WidenJob& job, int num_threads) {
  parallel_chunks(
      job.rows, kWidenBlock, num_threads, [&](int64_t begin, int64_t end) {
        for (int64_t c = 0; c < job.cols; ++c)
          for (int64_t r = begin; r < end; ++r)
            job.out[r * job.cols + c] = static_cast<double>(
                job.data[r * job.row_stride + c * job.col_stride]);
        for (int64_t r = begin; r < end; ++r) {
          const double* row = job.out + r * job.cols;
          double lanes[kLayerNormLanes] = {};
          int64_t c = 0;
          for (; c + kLayerNormLanes <= job.cols; c += kLayerNormLanes)
            for (int l = 0; l < kLayerNormLanes; ++l)
              lanes[l] += row[c + l] * row[c + l];
          for (int l = 0; c + l < job.cols; ++l)
            lanes[l] += row[c + l] * row[c + l];
          job.row_norms[r] = sqrt(combine_lanes(lanes));
        }
      });
}

int64_t certify_addmm(const CertifiedAddmmBlock& t, int num_threads) {
  // |fl64(A@B) - A@B| <= gamma_K sum_k |a_ik b_kj| <= gamma_K ||a_i|| ||b_j||
  // (Cauchy-Schwarz); alpha * . and + beta * c then round once each in
  // double. kBoundSlack covers the rounding of the norms and of this bound.
  constexpr double kBoundSlack = 1.0 + 1.0 / 1024.0;
  const double gamma = gamma_bound(t.k);
  const double alpha = static_cast<double>(t.alpha);
  const double beta = static_cast<double>(t.beta);
  std::atomic<int64_t> recomputed{0};
  parallel_chunks(t.m, 8, num_threads, [&](int64_t begin, int64_t end) {
    std::vector<unsigned char> uncertain(t.n);
    int64_t local = 0;
    for (int64_t i = begin; i < end; ++i) {
      const double* d = t.product + i * t.n;
      const double row_bound = kBoundSlack * gamma * fabs(alpha) * t.a_norm[i];
      float* out = t.out + i * t.n;
      // One branch-free pass over the row (vectorised; c's presence hoisted),
      // then the rare recomputations.
      const double* bn = t.b_norm;
      unsigned char* unc = uncertain.data();
      auto pass = [&](auto with_c) {
        for (int64_t j = 0; j < t.n; ++j) {
          const double scaled = alpha * d[j];
          double value = scaled;
          if constexpr (decltype(with_c)::value)
            value += beta * static_cast<double>(t.c.at(i, j));
          const double err = row_bound * bn[j] +
              kUnitRoundoff64 * (fabs(scaled) + fabs(value));
          unc[j] = !certified_round(value, err, &out[j]);
        }
      };
      if (t.c.data != nullptr)
        pass(std::true_type{});
      else
        pass(std::false_type{});
      for (int64_t j = 0; j < t.n; ++j) {
        if (uncertain[j]) {
          out[j] = exact_addmm_entry(t, i, j);
          ++local;
        }
      }
    }
    recomputed += local;
  });
  return recomputed.load();
}

void dd_addmm(const DoubleWordAddmmBlock& t, int num_threads) {
  const int64_t strips = (t.n + kTileCols - 1) / kTileCols;
  parallel_chunks(strips, 1, num_threads, [&](int64_t begin, int64_t end) {
    std::vector<float> strip(t.k * kTileCols);
    for (int64_t s = begin; s < end; ++s) {
      const int64_t j0 = s * kTileCols;
      const int64_t cols = std::min(kTileCols, t.n - j0);
      // B's columns j0 .. j0+15, zero padded: padding lanes are computed and
      // dropped.
      for (int64_t p = 0; p < t.k; ++p)
        for (int64_t c = 0; c < kTileCols; ++c)
          strip[p * kTileCols + c] = c < cols ? t.b[p * t.n + j0 + c] : 0.0f;
      int64_t i = 0;
      for (; i + kTileRows <= t.m; i += kTileRows)
        dd_tile<kTileRows>(t, strip.data(), i, j0, cols);
      for (; i < t.m; ++i)
        dd_tile<1>(t, strip.data(), i, j0, cols);
    }
  });
}

void layer_norm_forward(
    Precision p,
    const LayerNormRows& job,
    float* out,
    int num_threads) {
  if (p == Precision::DoubleDouble)
    layer_norm_forward_t<ff>(job, out, num_threads);
  else
    layer_norm_forward_t<double>(job, out, num_threads);
}

void layer_norm_backward(
    Precision p,
    const LayerNormRows& job,
    const float* grad,
    float* grad_x,
    float* grad_weight,
    float* grad_bias,
    int num_threads) {
  if (p == Precision::DoubleDouble)
    layer_norm_backward_t<ff>(
        job, grad, grad_x, grad_weight, grad_bias, num_threads);
  else
    layer_norm_backward_t<double>(
        job, grad, grad_x, grad_weight, grad_bias, num_threads);
}

} // namespace mlx_precise::cpu::MP_CPU_ISA
