#include "backend/gpu/conv_layout.h"

#include <stdexcept>
#include <string>

#include "backend/common/shapes.h"
#include "kernels/fft_plan.h"
#include "primitives.h"

namespace mlx_precise::gpu {

namespace {

int log2_exact(int64_t v) {
  int l = 0;
  while ((int64_t(1) << l) < v)
    ++l;
  return l;
}

template <class T>
cpx<T> twiddle(const TwiddleValue& v) {
  cpx<T> w;
  forward_twiddle(v, w.re, w.im);
  return w;
}

// Stride of full-batch dim fd in operand x (0 where x is broadcast).
int64_t batch_stride(const mx::array& x, int rank, int fd) {
  const int d = fd - (rank - (static_cast<int>(x.ndim()) - 1));
  if (d < 0 || x.shape(d) == 1)
    return 0;
  return x.strides()[d];
}

} // namespace

template <class T>
FFTTables<T> make_fft_tables(int64_t fft_size) {
  auto plan = real_fft_plan(fft_size);
  const int64_t h = plan->n_half;
  FFTTables<T> t;
  FFTShape& fs = t.shape;
  fs = FFTShape{};
  fs.n_half = static_cast<int>(h);
  fs.num_stages = static_cast<int>(plan->stages.size());
  if (fs.num_stages > kMaxFFTStages)
    throw std::invalid_argument("rfft_conv: transform too long");
  for (int s = 0; s < fs.num_stages; ++s) {
    const FFTStage& st = plan->stages[s];
    fs.stage_radix[s] = st.radix;
    fs.stage_log2_quarter[s] = log2_exact(st.quarter);
    fs.stage_tw_offset[s] = static_cast<int>(st.tw_offset);
  }
  const int64_t count = static_cast<int64_t>(plan->stage_twiddles[0].size());
  fs.twiddle_count = static_cast<int>(count);
  t.twiddles.resize(3 * count);
  for (int64_t j = 0; j < count; ++j)
    for (int k = 0; k < 3; ++k)
      t.twiddles[3 * j + k] = twiddle<T>(plan->stage_twiddles[k][j]);
  t.split.resize(h);
  for (int64_t p = 0; p < h; ++p)
    t.split[p] = twiddle<T>(plan->split_twiddles[p]);

  // Pair 0: the self-partnered positions 0 and f = H/2; then (p, partner p).
  int nyquist = -1;
  for (int64_t p = 0; p < h; ++p)
    if (h >= 2 && plan->frequency[p] == h / 2)
      nyquist = static_cast<int>(p);
  t.pairs.push_back({0, nyquist});
  for (int64_t p = 1; p < h; ++p) {
    const int64_t q = plan->partner[p];
    if (q > p)
      t.pairs.push_back({static_cast<int>(p), static_cast<int>(q)});
  }
  fs.num_pairs = static_cast<int>(t.pairs.size());
  return t;
}

template FFTTables<float> make_fft_tables<float>(int64_t);
template FFTTables<double> make_fft_tables<double>(int64_t);
template FFTTables<ff> make_fft_tables<ff>(int64_t);

template <class T>
std::vector<cpx<T>> make_twist_table(int64_t fft_size) {
  const TwiddleSource source(fft_size);
  std::vector<cpx<T>> t(static_cast<size_t>(fft_size / 4));
  for (size_t j = 0; j < t.size(); ++j)
    t[j] = twiddle<T>(source(static_cast<int64_t>(j)));
  return t;
}

template std::vector<cpx<double>> make_twist_table<double>(int64_t);

template <class T>
std::vector<cpx<T>> make_deep_twist_table(int64_t fft_size) {
  const TwiddleSource source(fft_size);
  const int64_t p = fft_size / 8;
  std::vector<cpx<T>> t;
  t.reserve(static_cast<size_t>(5 * p));
  for (int64_t power : {1, 5})
    for (int64_t k = 0; k < 2 * p; ++k)
      t.push_back(twiddle<T>(source(power * k)));
  for (int64_t j = 0; j < p; ++j)
    t.push_back(twiddle<T>(source(2 * j)));
  return t;
}

template std::vector<cpx<double>> make_deep_twist_table<double>(int64_t);

bool split_rows_apply(const ConvGeometry& g) {
  return g.fft_size >= 8 && 2 * g.a_len <= g.fft_size && g.b_len <= g.fft_size;
}

bool split_gradients_apply(const ConvGeometry& u, const ConvGeometry& k) {
  return split_rows_apply(u) && split_rows_apply(k) &&
      2 * k.b_len <= k.fft_size && u.fft_size == k.fft_size;
}

bool deep_split_rows_apply(const ConvGeometry& g) {
  return g.fft_size >= 64 && split_rows_apply(g);
}

ConvShape conv_shape(
    const ConvGeometry& g,
    bool has_bias,
    int64_t rows_per_group_split,
    int rows_per_block) {
  ConvShape c{};
  c.fft_size = g.fft_size;
  c.period = g.period;
  c.a_len = g.a_len;
  c.b_len = g.b_len;
  c.out_len = g.out_len;
  c.out_origin = g.out_origin;
  c.fold = g.fold;
  c.a_reversed = g.a_reversed;
  c.out_reversed = g.out_reversed;
  c.has_bias = has_bias;
  c.spectrum_scale = spectrum_scale(g.fft_size);
  c.rows_per_group_split = static_cast<int>(rows_per_group_split);
  c.rows_per_block = rows_per_block;
  return c;
}

ConvLaunch conv_launch(
    ConvVariant variant,
    int64_t period,
    const std::vector<mx::array>& in,
    bool has_bias,
    const mx::array& out) {
  const mx::array& a = in[0];
  const mx::array& b = in[1];
  mx::Shape full = variant == ConvVariant::Convolve ? batch_shape(out.shape())
                                                    : batch_shape(a.shape());
  const bool one_to_one = variant != ConvVariant::CorrelateKernel &&
      shape_product(batch_shape(out.shape())) == shape_product(full);
  return ConvLaunch{
      a,
      b,
      has_bias ? &in[2] : nullptr,
      std::move(full),
      conv_geometry(
          variant,
          period,
          a.shape().back(),
          b.shape().back(),
          out.shape().back()),
      one_to_one};
}

SumLaunch sum_launch(
    int64_t period,
    const std::vector<mx::array>& in,
    int conv_terms,
    const mx::array& out) {
  if (in.size() > kMaxSumOperands || conv_terms > kMaxSumTerms) {
    throw std::invalid_argument(
        "rfft_conv on the GPU: a jvp sums at most " +
        std::to_string(int(kMaxSumTerms)) +
        " convolutions and as many bias products");
  }
  // As on the CPU: the geometry of the first term (all terms share it).
  const int64_t len = in[0].shape().back();
  SumLaunch l{
      conv_geometry(
          ConvVariant::ConvolveSum, period, len, in[1].shape().back(), len),
      {},
      {}};
  const mx::Shape full = batch_shape(out.shape());
  l.ix = make_row_index(full, out.shape(), {nullptr, nullptr, nullptr, &out});
  l.operands.conv_terms = conv_terms;
  l.operands.bias_terms = static_cast<int>(in.size()) / 2 - conv_terms;
  for (size_t k = 0; k < in.size(); ++k) {
    // The same outer dims as l.ix: they depend on full and out only.
    const RowIndex own =
        make_row_index(full, out.shape(), {&in[k], nullptr, nullptr, nullptr});
    for (int d = 0; d < kMaxBatchDims; ++d)
      l.operands.outer_stride[k][d] = own.outer_stride[kOperandA][d];
    l.operands.time_stride[k] = own.time_stride[kOperandA];
  }
  return l;
}

RowIndex make_row_index(
    const mx::Shape& full,
    const mx::Shape& group_shape,
    const std::array<const mx::array*, kNumOperands>& operands) {
  RowIndex ix{};
  ix.outer_count = 1;
  ix.inner_count = 1;
  const int rank = static_cast<int>(full.size());
  const int group_batch = static_cast<int>(group_shape.size()) - 1;
  for (int fd = 0; fd < rank; ++fd) {
    if (full[fd] == 1)
      continue;
    const int gd = fd - (rank - group_batch);
    const bool outer = gd >= 0 && group_shape[gd] > 1;
    int& ndim = outer ? ix.outer_ndim : ix.inner_ndim;
    if (ndim == kMaxBatchDims) {
      throw std::invalid_argument(
          "rfft_conv on the GPU: at most " +
          std::to_string(int(kMaxBatchDims)) +
          " batch dims of size > 1 per group; reshape the batch");
    }
    (outer ? ix.outer_shape : ix.inner_shape)[ndim] = full[fd];
    (outer ? ix.outer_count : ix.inner_count) *= full[fd];
    for (int op = 0; op < kNumOperands; ++op) {
      const int64_t s =
          operands[op] ? batch_stride(*operands[op], rank, fd) : 0;
      (outer ? ix.outer_stride : ix.inner_stride)[op][ndim] = s;
    }
    ++ndim;
  }
  for (int op = 0; op < kNumOperands; ++op) {
    const mx::array* x = operands[op];
    ix.time_stride[op] =
        (!x || x->shape().back() == 1) ? 0 : x->strides().back();
  }
  return ix;
}

} // namespace mlx_precise::gpu
