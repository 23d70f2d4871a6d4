// CPU kernels of the strict ops, compiled once per instruction-set build
// (MP_CPU_ISA, see CMakeLists.txt); the arithmetic itself is in
// kernels/strict_arith.h. Work is split over rows (or column strips), never
// over a reduction, so the bits do not depend on the thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#include "backend/cpu/exact_layer_norm.h"
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

// ------------------------------------------------ certified layer_norm ----
// Extended layer_norm (float64) certifies each output against a rigorous
// bound of the shared algorithm's error (strict_arith.h: shifted two-pass
// mean with correction, var = (sum d^2 - S1 c) / D, inv_std = 1/sqrt(var +
// eps)), as addmm does, and recomputes the rows with open outputs in a wide
// type (binary128 with gcc on x86-64, else long double), certified against
// the same bound; what is still open after that is rounded exactly
// (exact_layer_norm.h: big-integer comparisons with the midpoints). With
// d_i = fl(x_i - shift), A1 = sum |d_i| / D, M2 = sum d_i^2 / D and u the
// unit roundoff:
//   mean error    e1 = (D + 2) u A1 (+ u |c|)
//   var error     ev = (D + 6) u M2 + 3 e1 (|c| + e1)
//   inv_std       rel = (ev + 9u v) / (2 (v - 8u v - ev)) + 6u, v = var + eps
//                 (v read back from inv_std; 6u: sqrt and division)
//   numerator     |num^ - (x_i - mean)| <= u |d_i| + e1 + u |num^|
//   output        |y^ - y| <= |w| (|n^| rel + inv_std e_num + u |n^|)
//                 + u |n^ w| + u |y^|   (n = num * inv_std, y = n w + b)
// (gamma_n <= 1.01 n u for n u < 2^-10; times 1 + 2^-6 for second-order
// terms).
// Error bounds of a row's statistics: e1 on the mean, inv_rel the relative
// error of inv_std (1e300 when var + eps is not safely positive: nothing
// certifies).
template <class R>
struct LayerNormErrors {
  R mean_err;
  R inv_rel;
  R u;
};

// Relative error of inv_std = 1/sqrt(var + eps) from the bound ev on var's
// error: var + eps read back from inv_std (to within a few u, counted), 6u
// for the square root and the division. 1e300 when var + eps is not safely
// positive.
template <class R>
R inv_std_error(R inv_std, R ev, R u) {
  const R v = 1 / (inv_std * inv_std);
  const R low = v * (1 - 8 * u) - ev;
  return low > 0 ? ((ev + 9 * u * v) / (2 * low) + 6 * u) * (1.0 + 1.0 / 64.0)
                 : R(1e300);
}

template <class R>
LayerNormErrors<R> layer_norm_errors(
    const float* x,
    int64_t dim,
    R shift,
    R correction,
    R inv_std,
    R u) {
  const auto abs = [](R v) { return v < 0 ? -v : v; };
  // Sums in kLayerNormLanes lanes (vectorised); only bounds, any order.
  R a1_lane[kLayerNormLanes] = {}, m2_lane[kLayerNormLanes] = {};
  for (int64_t i0 = 0; i0 < dim; i0 += kLayerNormLanes)
    for (int l = 0; l < kLayerNormLanes && i0 + l < dim; ++l) {
      const R d = static_cast<R>(x[i0 + l]) - shift;
      a1_lane[l] += abs(d);
      m2_lane[l] += d * d;
    }
  R a1 = 0, m2 = 0;
  for (int l = 0; l < kLayerNormLanes; ++l) {
    a1 += a1_lane[l];
    m2 += m2_lane[l];
  }
  const R D = static_cast<R>(dim), slack = 1.0 + 1.0 / 64.0;
  a1 = a1 / D * slack;
  m2 = m2 / D * slack;
  const R c = abs(correction);
  const R e1 = ((D + 2) * u * a1 + u * c) * slack;
  const R ev = ((D + 6) * u * m2 + 3 * e1 * (c + e1)) * slack;
  return LayerNormErrors<R>{e1, inv_std_error(inv_std, ev, u), u};
}

// Writes element x's output and returns whether it is certified.
template <class R>
bool certified_layer_norm_output(
    const LayerNormErrors<R>& e,
    R shift,
    R correction,
    R inv_std,
    float x,
    const float* w,
    const float* b,
    float* out) {
  const auto abs = [](R v) { return v < 0 ? -v : v; };
  const R d = static_cast<R>(x) - shift;
  const R num = d - correction;
  const R n = num * inv_std;
  const R wd = w ? static_cast<R>(*w) : R(1);
  R y = n * wd;
  if (b)
    y = y + static_cast<R>(*b);
  const R u = e.u;
  const R e_num = u * abs(d) + e.mean_err + u * abs(num);
  const R err = (abs(wd) *
                     (abs(n) * e.inv_rel + inv_std * (1 + e.inv_rel) * e_num +
                      u * abs(n)) +
                 u * abs(n * wd) + u * abs(y)) *
      (1.0 + 1.0 / 64.0);
  *out = static_cast<float>(y);
  const R margin = err + 4 * u * abs(y);
  const float lo = static_cast<float>(y - margin);
  const float hi = static_cast<float>(y + margin);
  return (MP_FLOAT_BITS(lo) == MP_FLOAT_BITS(hi)) & (abs(y) < R(1e300)) &
      (margin < R(1e300));
}

// The wide type of the layer_norm recomputation: binary128 where the
// compiler has it (gcc on x86-64: 113-bit significand, in software; rows
// reach it rarely), else long double. sqrt by Newton's method from double's
// (each step doubles the correct bits; error a few u, counted by the bound).
#if defined(__SIZEOF_FLOAT128__) && !defined(__clang__)
using WideReal = __float128;
#else
using WideReal = long double;
#endif

WideReal wide_unit_roundoff() {
  WideReal u = 1;
  const int digits =
      sizeof(WideReal) == 16 && !std::is_same<WideReal, long double>::value
      ? 113
      : std::numeric_limits<long double>::digits;
  for (int i = 0; i < digits; ++i)
    u /= 2;
  return u;
}

template <class R>
R wide_sqrt(R v) {
  if (!(v > 0))
    return 0;
  R s = std::sqrt(static_cast<double>(v));
  for (int i = 0; i < 3; ++i)
    s = (s + v / s) / 2;
  return s;
}

// Recomputes the outputs `open` of a row in precision R (unit roundoff u),
// with the mean from the exact row sum (ExactSum, read out as float parts to
// beyond R's precision), so no cancellation in the mean is left to correct
// (shift = mean, correction 0). Writes R's rounding of each output and keeps
// in `open` those that still do not certify.
template <class R>
void recompute_open_outputs(
    const LayerNormRows& job,
    const float* x,
    R u,
    std::vector<int64_t>& open,
    float* y) {
  const int64_t D = job.dim;
  ExactSum exact;
  exact_sum_init(exact);
  for (int64_t i = 0; i < D; ++i)
    exact_sum_add_product(exact, x[i], 1.0f);
  // (A sum beyond float's range is read out scaled by 2^-64, exactly.)
  R unit = 1;
  ExactSum probe = exact;
  if (!std::isfinite(exact_sum_round(probe))) {
    exact_sum_scale(exact, 0x1p-64f);
    unit = static_cast<R>(0x1p64);
  }
  R sum = 0;
  for (int part = 0; part < 6; ++part) {
    ExactSum rest = exact;
    const float p = exact_sum_round(rest);
    sum += static_cast<R>(p) * unit;
    exact_sum_add_product(exact, -p, 1.0f);
  }
  const R Dr = static_cast<R>(D);
  const R mean = sum / Dr;
  R s2 = 0;
  for (int64_t i = 0; i < D; ++i) {
    const R d = static_cast<R>(x[i]) - mean;
    s2 += d * d;
  }
  const R var = s2 / Dr;
  const R inv_std = 1 / wide_sqrt(var + static_cast<R>(job.eps));
  // mean: the sum's parts leave < 2^-140 of it, the division one rounding;
  // var about the computed mean exceeds the true one by (mean error)^2, and
  // (D + 3) u covers the squares and the sum.
  const R e1 = 2 * u * (mean < 0 ? -mean : mean);
  const R ev = ((Dr + 3) * u * var + e1 * e1) * (1.0 + 1.0 / 64.0);
  const LayerNormErrors<R> el{e1, inv_std_error(inv_std, ev, u), u};
  std::vector<int64_t> still_open;
  for (const int64_t i : open) {
    const float* w = job.weight ? job.weight + i : nullptr;
    const float* b = job.bias ? job.bias + i : nullptr;
    if (!certified_layer_norm_output<R>(
            el, mean, R(0), inv_std, x[i], w, b, &y[i]))
      still_open.push_back(i);
  }
  open.swap(still_open);
}

// Certifies the outputs y of row r (computed by the shared float64
// algorithm) in one vectorised pass; open outputs are recomputed in long
// double (x87, 64-bit significand), what is still open in WideReal (mean from
// the exact row sum), and what stays open is rounded exactly. Rows with a
// non-finite x, and outputs with a non-finite weight or bias, keep the
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
  const LayerNormErrors<double> e = layer_norm_errors<double>(
      x, D, s.shift, s.correction, s.inv_std, kUnitRoundoff64);
  thread_local std::vector<unsigned char> flags_buffer;
  flags_buffer.resize(D);
  unsigned char* __restrict flags = flags_buffer.data();
  // The bound of certified_layer_norm_output, written out so that it
  // vectorises (one loop per weight / bias case).
  const double u = kUnitRoundoff64, slack = 1.0 + 1.0 / 64.0;
  const double shift = s.shift, c = s.correction, inv = s.inv_std;
  const double rel = e.inv_rel, inv_err = inv * (1.0 + e.inv_rel);
  auto pass = [&](auto has_w, auto has_b) {
    for (int64_t i = 0; i < D; ++i) {
      const double d = static_cast<double>(x[i]) - shift;
      const double num = d - c;
      const double n = num * inv;
      double wd = 1.0, bd = 0.0, v = n;
      if constexpr (decltype(has_w)::value) {
        wd = w[i];
        v = n * wd;
      }
      if constexpr (decltype(has_b)::value) {
        bd = b[i];
        v = v + bd;
      }
      const double e_num = u * std::fabs(d) + e.mean_err + u * std::fabs(num);
      const double err =
          (std::fabs(wd) *
               (std::fabs(n) * rel + inv_err * e_num + u * std::fabs(n)) +
           u * std::fabs(n * wd) + u * std::fabs(v)) *
          slack;
      const double margin = err + 4.0 * u * std::fabs(v);
      const float lo = static_cast<float>(v - margin);
      const float hi = static_cast<float>(v + margin);
      // Open: not certified, the output not NaN, weight and bias finite.
      flags[i] =
          ((MP_FLOAT_BITS(lo) != MP_FLOAT_BITS(hi)) | !(std::fabs(v) < 1e300)) &
          (y[i] == y[i]) & (std::fabs(wd) <= 3.5e38) &
          (std::fabs(bd) <= 3.5e38);
    }
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
  std::vector<int64_t> open;
  for (int64_t i0 = 0; i0 < D; i0 += 8) {
    const int64_t i1 = std::min<int64_t>(i0 + 8, D);
    uint64_t word = 1;
    if (i1 - i0 == 8)
      std::memcpy(&word, flags + i0, 8);
    if (word != 0)
      for (int64_t i = i0; i < i1; ++i)
        if (flags[i])
          open.push_back(i);
  }
  if (open.empty())
    return;
  recompute_open_outputs<long double>(
      job,
      x,
      std::ldexp(1.0L, -std::numeric_limits<long double>::digits),
      open,
      y);
  if (!open.empty() && !std::is_same<WideReal, long double>::value)
    recompute_open_outputs<WideReal>(job, x, wide_unit_roundoff(), open, y);
  if (open.empty())
    return;
  const std::vector<int64_t>& still_open = open;
  const ExactLayerNormRow exact_row = exact_layer_norm_row(x, D, job.eps);
  if (exact_row.radicand.size == 0) // eps = 0 and a constant row: 0 / 0
    return;
  for (const int64_t i : still_open)
    y[i] = exact_layer_norm_output(
        exact_row, x[i], w ? w[i] : 1.0f, b ? b[i] : 0.0f, y[i]);
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

// grad_x = inv_std * ((gw - mean(gw)) - n * mean(gw * n)), gw = grad * weight
// (exact product), n the normalised input; sums in lanes as in the forward.
// grad_weight = sum over rows of grad * n, grad_bias = sum of grad: each
// column sums its rows in order 0, 1, ... (threads split the columns).
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
      double sum_gw[kLayerNormLanes], sum_gwn[kLayerNormLanes];
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
      const double mean_gw = r_div(combine_lanes(sum_gw), count);
      const double mean_gwn = r_div(combine_lanes(sum_gwn), count);
      float* dx = grad_x + r * job.dim;
      for (int64_t i = 0; i < job.dim; ++i)
        dx[i] = layer_norm_grad_x(s, gw[i], n[i], mean_gw, mean_gwn);
    }
  });
  if (grad_weight == nullptr && grad_bias == nullptr)
    return;
  parallel_chunks(job.dim, 64, num_threads, [&](int64_t begin, int64_t end) {
    std::vector<double> dw(end - begin, zero), db(end - begin, zero);
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
