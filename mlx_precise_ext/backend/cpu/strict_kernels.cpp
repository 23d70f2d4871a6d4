// CPU kernels of the strict ops, compiled once per instruction-set build
// (MP_CPU_ISA, see CMakeLists.txt); the arithmetic itself is in
// kernels/strict_arith.h. Work is split over rows (or column strips), never
// over a reduction, so the bits do not depend on the thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#include "backend/cpu/parallel.h"
#include "backend/cpu/strict_job.h"
#include "kernels/layer_norm_certify.h"
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

// ------------------------------------------------ certified layer_norm ----
// Extended layer_norm certifies each float64 output and recomputes the open
// ones (kernels/layer_norm_certify.h has the bounds and the stages).

// Element i of a contiguous row.
struct RowElements {
  const float* x;
  float operator()(MP_INT64 i) const {
    return x[i];
  }
};

// The indices of the nonzero flags (0 / 1 bytes), eight at a time: almost all
// are zero.
std::vector<int64_t> open_indices(const unsigned char* flags, int64_t count) {
  std::vector<int64_t> open;
  for (int64_t i0 = 0; i0 < count; i0 += 8) {
    const int64_t i1 = std::min<int64_t>(i0 + 8, count);
    uint64_t word = 1;
    if (i1 - i0 == 8)
      std::memcpy(&word, flags + i0, 8);
    if (word != 0)
      for (int64_t i = i0; i < i1; ++i)
        if (flags[i])
          open.push_back(i);
  }
  return open;
}

// The bounds of row x's float64 statistics s (kernels/layer_norm_certify.h),
// from its sums in kLayerNormLanes lanes (vectorised; any order).
LayerNormErrors
row_errors(const float* x, int64_t D, const LayerNormStats<double>& s) {
  double a1[kLayerNormLanes] = {}, m2[kLayerNormLanes] = {};
  for (int64_t i0 = 0; i0 < D; i0 += kLayerNormLanes)
    for (int l = 0; l < kLayerNormLanes && i0 + l < D; ++l) {
      const double d = static_cast<double>(x[i0 + l]) - s.shift;
      a1[l] += std::fabs(d);
      m2[l] += d * d;
    }
  return layer_norm_errors(
      combine_lanes(a1), combine_lanes(m2), D, s.correction, s.inv_std);
}

// The open outputs of row x, recomputed: in double words (mean from the
// exact row sum), then exactly what those do not certify.
void recompute_layer_norm_outputs(
    const LayerNormRows& job,
    const float* x,
    const std::vector<int64_t>& open,
    float* y) {
  const int64_t D = job.dim;
  ExactSum row_sum;
  const LayerNormWideStats s =
      layer_norm_wide_row(RowElements{x}, D, job.eps, row_sum);
  const auto weight = [&](int64_t i) {
    return job.weight ? job.weight[i] : 1.0f;
  };
  const auto bias = [&](int64_t i) { return job.bias ? job.bias[i] : -0.0f; };
  std::vector<int64_t> still_open;
  for (const int64_t i : open)
    if (!layer_norm_wide_output(s, row_sum, D, x[i], weight(i), bias(i), &y[i]))
      still_open.push_back(i);
  if (still_open.empty())
    return;
  const ExactLayerNormRow<kBigLimbs> exact_row =
      exact_layer_norm_row<kBigLimbs>(RowElements{x}, D, job.eps);
  if (exact_row.radicand.size == 0) // eps = 0 and a constant row: 0 / 0
    return;
  for (const int64_t i : still_open)
    y[i] = exact_layer_norm_output(exact_row, x[i], weight(i), bias(i), y[i]);
}

// Certifies the outputs y of row r (computed by the shared float64
// algorithm) in one vectorised pass, and recomputes the open ones. Rows with
// a non-finite x, and outputs with a non-finite weight or bias, keep the
// float64 value (IEEE's Inf / NaN).
void certify_layer_norm_row(
    const LayerNormRows& job,
    int64_t r,
    const LayerNormStats<double>& s,
    float* y) {
  const float* x = job.x + r * job.dim;
  const int64_t D = job.dim;
  const float* w = job.weight;
  const float* b = job.bias;
  bool row_finite = true;
  for (int64_t i = 0; i < D; ++i)
    row_finite = row_finite && std::isfinite(x[i]);
  if (!row_finite)
    return;
  const LayerNormErrors e = row_errors(x, D, s);
  thread_local std::vector<unsigned char> flags_buffer;
  flags_buffer.resize(D);
  unsigned char* __restrict flags = flags_buffer.data();
  // One loop per weight / bias case, so that each vectorises.
  auto pass = [&](auto has_w, auto has_b) {
    constexpr bool with_w = decltype(has_w)::value;
    constexpr bool with_b = decltype(has_b)::value;
    for (int64_t i = 0; i < D; ++i)
      flags[i] = layer_norm_open(
          e,
          s.inv_std,
          layer_norm_terms(
              s,
              x[i],
              with_w,
              with_w ? w[i] : 1.0f,
              with_b,
              with_b ? b[i] : 0.0f));
  };
  using Yes = std::true_type;
  using No = std::false_type;
  if (w && b)
    pass(Yes{}, Yes{});
  else if (w)
    pass(Yes{}, No{});
  else if (b)
    pass(No{}, Yes{});
  else
    pass(No{}, No{});
  const std::vector<int64_t> open = open_indices(flags, D);
  if (!open.empty())
    recompute_layer_norm_outputs(job, x, open, y);
}

// The grad weight columns stage 1 left open (weight_open; their values
// finite): in double words over the rows (kernels/layer_norm_certify.h), then
// exactly (kernels/exact_layer_norm.h). Each row's double-word and exact
// statistics are computed once, for all columns, when first needed.
void recompute_weight_grads(
    const LayerNormRows& job,
    const float* grad,
    const std::vector<unsigned char>& weight_open,
    float* grad_weight,
    int num_threads) {
  const std::vector<int64_t> open = open_indices(weight_open.data(), job.dim);
  if (open.empty())
    return;
  const int64_t D = job.dim;
  std::vector<LayerNormWideStats> wide(job.rows);
  parallel_chunks(job.rows, 16, num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      ExactSum sum;
      wide[r] =
          layer_norm_wide_row(RowElements{job.x + r * D}, D, job.eps, sum);
    }
  });
  std::vector<unsigned char> still_open(open.size());
  parallel_chunks(
      static_cast<int64_t>(open.size()),
      1,
      num_threads,
      [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          const int64_t i = open[k];
          still_open[k] = !weight_grad_wide_output(
              [&](int64_t r) -> const LayerNormWideStats& { return wide[r]; },
              [&](int64_t r) { return job.x[r * D + i]; },
              [&](int64_t r) { return grad[r * D + i]; },
              job.rows,
              &grad_weight[i]);
        }
      });
  if (std::find(still_open.begin(), still_open.end(), 1) == still_open.end())
    return;
  std::vector<ExactLayerNormRow<kBigLimbs>> exact(job.rows);
  parallel_chunks(job.rows, 4, num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      exact[r] = exact_layer_norm_row<kBigLimbs>(
          RowElements{job.x + r * D}, D, job.eps);
  });
  parallel_chunks(
      static_cast<int64_t>(open.size()),
      1,
      num_threads,
      [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          if (!still_open[k])
            continue;
          const int64_t i = open[k];
          float out;
          if (exact_weight_grad_output(
                  [&](int64_t r, ExactLayerNormRow<kBigLimbs>& row) {
                    row = exact[r];
                  },
                  [&](int64_t r) { return job.x[r * D + i]; },
                  [&](int64_t r) { return grad[r * D + i]; },
                  job.rows,
                  grad_weight[i],
                  &out))
            grad_weight[i] = out;
        }
      });
}

} // namespace

void layer_norm_forward(const LayerNormRows& job, float* out, int num_threads) {
  parallel_chunks(job.rows, 16, num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* x = job.x + r * job.dim;
      float* y = out + r * job.dim;
      const LayerNormStats<double> s = layer_norm_stats(x, job.dim, job.eps);
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
      certify_layer_norm_row(job, r, s, y);
    }
  });
}

// grad x of row x (cotangent g; gw, n, the means and the bound's sums of |gw|
// and |gw n| as layer_norm_backward computed them), each output rounded and
// certified in one pass against the bound of kernels/layer_norm_certify.h;
// the open outputs recomputed in double words, what is still open rounded
// exactly. Rows with a non-finite x, g or weight keep the float64 values.
void grad_x_row(
    const LayerNormRows& job,
    const LayerNormStats<double>& s,
    const float* x,
    const float* g,
    const double* gw,
    const double* n,
    double mean_gw,
    double mean_gwn,
    double abs_gw,
    double abs_gwn,
    bool finite,
    float* dx) {
  const int64_t D = job.dim;
  const float* w = job.weight;
  if (!finite) {
    for (int64_t i = 0; i < D; ++i)
      dx[i] = layer_norm_grad_x(s, gw[i], n[i], mean_gw, mean_gwn);
    return;
  }
  const LayerNormErrors e = row_errors(x, D, s);
  const NormalizedBound nb =
      layer_norm_normalized_bound(e, s.inv_std, s.correction);
  const GradXErrors ge =
      grad_x_errors(D, abs_gw, abs_gwn, nb, mean_gw, mean_gwn);
  thread_local std::vector<unsigned char> flags_buffer;
  flags_buffer.resize(D);
  unsigned char* __restrict flags = flags_buffer.data();
  float* __restrict out = dx;
  for (int64_t i = 0; i < D; ++i)
    flags[i] = grad_x_open(
        e, nb, ge, s.inv_std, gw[i], n[i], mean_gw, mean_gwn, &out[i]);
  const std::vector<int64_t> open = open_indices(flags, D);
  if (open.empty())
    return;
  const auto weight = [&](int64_t i) { return w ? w[i] : 1.0f; };
  const GradXWide wide =
      grad_x_wide_row(RowElements{x}, RowElements{g}, weight, D, job.eps);
  std::vector<int64_t> still_open;
  for (const int64_t i : open)
    if (!grad_x_wide_output(wide, x[i], g[i], weight(i), &dx[i]))
      still_open.push_back(i);
  if (still_open.empty())
    return;
  ExactGradXRow exact_row;
  exact_grad_x_row(
      RowElements{x}, RowElements{g}, weight, D, job.eps, exact_row);
  if (exact_row.row.radicand.size == 0) // eps = 0 and a constant row: 0 / 0
    return;
  for (const int64_t i : still_open)
    dx[i] = exact_grad_x_output(exact_row, x[i], g[i], weight(i), dx[i]);
}

// grad_x = inv_std * ((gw - mean(gw)) - n * mean(gw * n)), gw = grad * weight
// (exact product), n the normalised input; sums in lanes as in the forward;
// then certified, the open outputs rounded exactly (grad_x_row).
// grad_weight = sum over rows of grad * n, grad_bias = sum of grad (correctly
// rounded: bias_grad_output): each column sums its rows in order 0, 1, ...
// (threads split the columns).
void layer_norm_backward(
    const LayerNormRows& job,
    const float* grad,
    float* grad_x,
    float* grad_weight,
    float* grad_bias,
    int num_threads) {
  const double eps = job.eps;
  const double zero = r_from_float(eps, 0.0f);
  const double count = r_from_float(eps, static_cast<float>(job.dim));
  std::vector<LayerNormStats<double>> stats(job.rows);
  parallel_chunks(job.rows, 16, num_threads, [&](int64_t begin, int64_t end) {
    std::vector<double> gw(job.dim), n(job.dim);
    for (int64_t r = begin; r < end; ++r) {
      const float* x = job.x + r * job.dim;
      const float* g = grad + r * job.dim;
      const LayerNormStats<double> s = layer_norm_stats(x, job.dim, eps);
      stats[r] = s;
      if (grad_x == nullptr)
        continue;
      // The means' lane sums, and the bound's sums of |gw| and |gw n| (any
      // order) with the row's finiteness.
      double sum_gw[kLayerNormLanes], sum_gwn[kLayerNormLanes];
      double abs_gw[kLayerNormLanes] = {}, abs_gwn[kLayerNormLanes] = {};
      for (int l = 0; l < kLayerNormLanes; ++l)
        sum_gw[l] = sum_gwn[l] = zero;
      unsigned finite = 1u;
      const auto step = [&](int64_t i, int l) {
        const float wi = job.weight ? job.weight[i] : 1.0f;
        gw[i] = job.weight ? r_prod(eps, g[i], wi) : r_from_float(eps, g[i]);
        n[i] = layer_norm_normalized(s, x[i]);
        const double gwn = r_mul(gw[i], n[i]);
        sum_gw[l] = r_add(sum_gw[l], gw[i]);
        sum_gwn[l] = r_add(sum_gwn[l], gwn);
        abs_gw[l] += std::fabs(gw[i]);
        abs_gwn[l] += std::fabs(gwn);
        finite &= is_finite_bits(MP_FLOAT_BITS(x[i])) &
            is_finite_bits(MP_FLOAT_BITS(g[i])) &
            is_finite_bits(MP_FLOAT_BITS(wi));
      };
      // Whole groups of kLayerNormLanes (vectorised over the lanes), then the
      // rest: lane l takes i = l, l + 8, ... in order either way.
      int64_t i0 = 0;
      for (; i0 + kLayerNormLanes <= job.dim; i0 += kLayerNormLanes)
        for (int l = 0; l < kLayerNormLanes; ++l)
          step(i0 + l, l);
      for (int l = 0; i0 + l < job.dim; ++l)
        step(i0 + l, l);
      grad_x_row(
          job,
          s,
          x,
          g,
          gw.data(),
          n.data(),
          r_div(combine_lanes(sum_gw), count),
          r_div(combine_lanes(sum_gwn), count),
          combine_lanes(abs_gw),
          combine_lanes(abs_gwn),
          finite != 0u,
          grad_x + r * job.dim);
    }
  });
  if (grad_weight == nullptr && grad_bias == nullptr)
    return;
  std::vector<NormalizedBound> bounds;
  if (grad_weight) {
    bounds.resize(job.rows);
    parallel_chunks(job.rows, 16, num_threads, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        bounds[r] = layer_norm_normalized_bound(
            row_errors(job.x + r * job.dim, job.dim, stats[r]),
            stats[r].inv_std,
            stats[r].correction);
    });
  }
  std::vector<unsigned char> weight_open(grad_weight ? job.dim : 0);
  parallel_chunks(job.dim, 64, num_threads, [&](int64_t begin, int64_t end) {
    const int64_t count = end - begin;
    std::vector<double> dw_buffer(grad_weight ? 3 * count : 0, zero),
        db_buffer(grad_bias ? 2 * count : 0, zero);
    // Distinct arrays, one loop per gradient, so that each vectorises.
    double* __restrict dw = dw_buffer.data();
    double* __restrict dw_err = dw + count;
    double* __restrict dw_mass = dw + 2 * count;
    double* __restrict db = db_buffer.data();
    double* __restrict db_mass = db + count;
    for (int64_t r = 0; r < job.rows; ++r) {
      const float* x = job.x + r * job.dim + begin;
      const float* g = grad + r * job.dim + begin;
      if (grad_weight) {
        const LayerNormStats<double> s = stats[r];
        const NormalizedBound nb = bounds[r];
        for (int64_t i = 0; i < count; ++i) {
          const double gd = r_from_float(eps, g[i]);
          const double n = layer_norm_normalized(s, x[i]);
          const double p = r_mul(gd, n);
          dw[i] = r_add(dw[i], p);
          dw_err[i] += weight_grad_term_error(nb, gd, n, p);
          dw_mass[i] += std::fabs(dw[i]);
        }
      }
      if (grad_bias)
        for (int64_t i = 0; i < count; ++i) {
          db[i] = r_add(db[i], r_from_float(eps, g[i]));
          db_mass[i] += std::fabs(db[i]);
        }
    }
    for (int64_t i = begin; i < end; ++i) {
      if (grad_weight)
        weight_open[i] = !weight_grad_certified(
                             dw[i - begin],
                             dw_err[i - begin],
                             dw_mass[i - begin],
                             &grad_weight[i]) &&
            std::fabs(dw[i - begin]) < 1e300;
      if (grad_bias)
        grad_bias[i] = bias_grad_output(
            db[i - begin],
            db_mass[i - begin],
            [&](int64_t r) { return grad[r * job.dim + i]; },
            job.rows);
    }
  });
  if (grad_weight)
    recompute_weight_grads(job, grad, weight_open, grad_weight, num_threads);
}

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

} // namespace mlx_precise::cpu::MP_CPU_ISA
