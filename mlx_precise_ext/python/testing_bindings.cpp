// mlx_precise._ext.testing: the double-word arithmetic of kernels/dd.h mapped
// elementwise over 1-D numpy arrays, so that tests can check every algorithm
// against exact references on millions of inputs. Test hooks, not MLX ops.
// Compiled with the same strict floating-point flags as the kernels.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "backend/cpu/conv_job.h"
#include "backend/cpu/recompute_counts.h"
#include "backend/gpu/conv_layout.h"
#include "backend/gpu/pair_grad_layout.h"
#include "device_memory.h"
#include "kernels/addmm_pair.h"
#include "kernels/certify_pair.h"
#include "kernels/dd.h"
#include "kernels/layer_norm_pair.h"
#include "kernels/pair_grad.h"
#include "kernels/pair_math.h"
#include "kernels/rfft_conv_rows.h"
#include "pair_primitives.h"
#include "primitives.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace mlx_precise {
namespace {

template <class T>
using InArray =
    nb::ndarray<const T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutArray = nb::ndarray<nb::numpy, float, nb::ndim<1>>;

OutArray new_float_array(size_t size, float** data) {
  float* buffer = new float[size];
  nb::capsule owner(
      buffer, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  *data = buffer;
  return OutArray(buffer, {size}, owner);
}

// Calls kernel(in, out) for every index i: in[j] is element i of input j, and
// the kernel writes element i of output j to out[j].
template <class T, size_t NumIn, size_t NumOut, class Kernel>
std::array<OutArray, NumOut> map_elementwise(
    const std::array<InArray<T>, NumIn>& inputs,
    Kernel kernel) {
  const size_t size = inputs[0].shape(0);
  for (const auto& input : inputs) {
    if (input.shape(0) != size) {
      throw std::invalid_argument("all inputs must have the same length");
    }
  }
  std::array<OutArray, NumOut> outputs;
  std::array<float*, NumOut> out_data;
  for (size_t j = 0; j < NumOut; ++j) {
    outputs[j] = new_float_array(size, &out_data[j]);
  }
  std::array<T, NumIn> in;
  std::array<float, NumOut> out;
  for (size_t i = 0; i < size; ++i) {
    for (size_t j = 0; j < NumIn; ++j)
      in[j] = inputs[j].data()[i];
    kernel(in, out);
    for (size_t j = 0; j < NumOut; ++j)
      out_data[j][i] = out[j];
  }
  return outputs;
}

template <size_t NumOut>
nb::tuple as_tuple(const std::array<OutArray, NumOut>& arrays) {
  nb::list items;
  for (const auto& array : arrays)
    items.append(nb::cast(array));
  return nb::tuple(items);
}

using F = InArray<float>;

void write_pair(ff x, float* out) {
  out[0] = x.hi;
  out[1] = x.lo;
}

double as_double(float x) {
  return x;
}
double as_double(double x) {
  return x;
}
double as_double(ff x) {
  return static_cast<double>(x.hi) + static_cast<double>(x.lo);
}

using DoubleArray = nb::ndarray<nb::numpy, double, nb::ndim<1>>;

DoubleArray new_double_array(const std::vector<double>& values) {
  double* buffer = new double[values.size()];
  std::copy(values.begin(), values.end(), buffer);
  nb::capsule owner(
      buffer, [](void* p) noexcept { delete[] static_cast<double*>(p); });
  return DoubleArray(buffer, {values.size()}, owner);
}

// The transform in passes (fft_passes, wide or narrow) on the swizzled row
// (re, im); the forward transform's first pass reads the real row
// x[2m] = re[m], x[2m + 1] = im[m] from "device memory", as the CUDA kernels
// do: as a DeviceRow, or with `contiguous` as a ContiguousRow (even length).
template <class T, bool kWide, class R>
void run_passes(
    const std::vector<float>& real_row,
    R re,
    R im,
    const FFTShape& fs,
    const cpx<T>* tw,
    bool inverse,
    bool contiguous) {
  if (inverse) {
    fft_passes<true, kWide, T>(re, im, fs, tw, 0, 0, 1, true);
    return;
  }
  if (fft_pass_count(fs, kWide) > 0) {
    if (contiguous)
      fft_pass<false, kWide, T>(
          ContiguousRow{real_row.data(), static_cast<int>(real_row.size() / 2)},
          re,
          im,
          fs,
          0,
          tw,
          0,
          1);
    else
      fft_pass<false, kWide, T>(
          DeviceRow{
              real_row.data(), 1, static_cast<int64_t>(real_row.size()), false},
          re,
          im,
          fs,
          0,
          tw,
          0,
          1);
  }
  fft_passes<false, kWide, T>(re, im, fs, tw, 1, 0, 1, true);
}

// conv_rows<float>'s steps on `rows` rows (a: rows x L floats, the kernel
// row b: up to fft_size floats, even; outputs y[0..L) of the size-fft_size
// cyclic convolution, the causal form) on the CPU, one thread running the
// block's
// steps, with its rows laid out as `R`: the kernel spectrum (wide passes,
// store_spectrum), each a row's forward passes (pass 0 from a ContiguousRow),
// the spectral product of all rows (multiply_rows_by_spectrum), each row's
// inverse passes and for_each_output. Returns the rows x L outputs.
template <class R>
std::vector<double> emulated_conv_rows(
    const float* a,
    const float* b,
    int b_len,
    int rows,
    int length,
    int64_t fft_size,
    R (*row_re)(float*, int, int),
    R (*row_im)(float*, int, int)) {
  const gpu::FFTTables<float> t = gpu::make_fft_tables<float>(fft_size);
  const FFTShape& fs = t.shape;
  const int h = fs.n_half;
  ConvShape g{};
  g.fft_size = fft_size;
  g.a_len = length;
  g.b_len = b_len;
  g.out_len = length;
  g.spectrum_scale = 1.0f / static_cast<float>(4 * fft_size); // 1/(4N)
  std::vector<float> kernel_row(2 * static_cast<size_t>(h));
  const SwizzledRow<float*> kre{kernel_row.data()}, kim{kernel_row.data() + h};
  std::vector<cpx<float>> spectrum(2 * static_cast<size_t>(fs.num_pairs));
  fft_pass<false, true, float>(
      ContiguousRow{b, b_len / 2}, kre, kim, fs, 0, t.twiddles.data(), 0, 1);
  fft_passes<false, true, float>(
      kre, kim, fs, t.twiddles.data(), 1, 0, 1, true);
  store_spectrum<float>(
      kre,
      kim,
      t.pairs.data(),
      t.split.data(),
      g.spectrum_scale,
      spectrum.data(),
      fs.num_pairs,
      0,
      1);
  std::vector<float> storage(2 * static_cast<size_t>(h) * rows);
  for (int r = 0; r < rows; ++r) {
    const R re = row_re(storage.data(), h, r),
            im = row_im(storage.data(), h, r);
    fft_pass<false, true, float>(
        ContiguousRow{a + static_cast<size_t>(r) * length, length / 2},
        re,
        im,
        fs,
        0,
        t.twiddles.data(),
        0,
        1);
    fft_passes<false, true, float>(
        re, im, fs, t.twiddles.data(), 1, 0, 1, true);
  }
  multiply_rows_by_spectrum<float>(
      row_re(storage.data(), h, 0),
      row_im(storage.data(), h, 0),
      h,
      rows,
      t.pairs.data(),
      t.split.data(),
      spectrum.data(),
      fs.num_pairs,
      0,
      1);
  std::vector<double> out(static_cast<size_t>(rows) * length);
  for (int r = 0; r < rows; ++r) {
    const R re = row_re(storage.data(), h, r),
            im = row_im(storage.data(), h, r);
    fft_passes<true, true, float>(re, im, fs, t.twiddles.data(), 0, 0, 1, true);
    for_each_output<float>(re, im, g, 0, 1, [&](int64_t i, float v) {
      out.at(static_cast<size_t>(r) * length + i) = v;
    });
  }
  return out;
}

// emulated_conv_rows with the (re, im) arrays of SwizzledRow and with
// InterleavedRow (conv_rows<float, true> on CUDA): returns both.
nb::tuple gpu_conv_row_layouts(F a_in, F b_in, int rows, int64_t fft_size) {
  const int64_t b_len = b_in.shape(0);
  const int64_t length = rows >= 1 ? a_in.shape(0) / rows : 0;
  if (rows < 1 || length < 2 || length % 2 != 0 || 2 * length > fft_size ||
      a_in.shape(0) != static_cast<size_t>(rows * length) || b_len < 2 ||
      b_len % 2 != 0 || b_len > fft_size || fft_size < 4 ||
      (fft_size & (fft_size - 1)) != 0)
    throw std::invalid_argument(
        "pass a of rows * L entries (L even), b of an even length, and a "
        "power-of-two fft_size >= 2L and >= b's length");
  const auto swizzled = emulated_conv_rows<SwizzledRow<float*>>(
      a_in.data(),
      b_in.data(),
      static_cast<int>(b_len),
      rows,
      static_cast<int>(length),
      fft_size,
      [](float* s, int h, int r) { return SwizzledRow<float*>{s + 2 * r * h}; },
      [](float* s, int h, int r) {
        return SwizzledRow<float*>{s + 2 * r * h + h};
      });
  const auto interleaved = emulated_conv_rows<InterleavedRow<float*>>(
      a_in.data(),
      b_in.data(),
      static_cast<int>(b_len),
      rows,
      static_cast<int>(length),
      fft_size,
      [](float* s, int h, int r) {
        return InterleavedRow<float*>{s + 2 * r * h, 0};
      },
      [](float* s, int h, int r) {
        return InterleavedRow<float*>{s + 2 * r * h, 1};
      });
  return nb::make_tuple(
      new_double_array(swizzled), new_double_array(interleaved));
}

// The GPU kernels' complex transform of length fft_size / 2 (forward, or
// inverse) of z = re + i im on the CPU, one thread running the block's steps:
// "stages" (fft_stage) on a plain row, or "wide" / "narrow" / "contiguous"
// (wide, its forward pass 0 reading a ContiguousRow) register passes
// (fft_pass) on a SwizzledRow, or "interleaved": "contiguous" on an
// InterleavedRow (conv_rows<float>'s rows on CUDA). The forward transforms read
// the real row x[2m] = re[m], x[2m + 1] = im[m] cut to its first `length`
// entries (all when negative; even for "contiguous"), zero-padded. Returns the
// result as doubles (exact for every working type: ff's hi + lo fits a double).
template <class T>
nb::tuple gpu_transform(
    F re_in,
    F im_in,
    int64_t fft_size,
    bool inverse,
    const std::string& method,
    int64_t length) {
  if (method != "stages" && method != "wide" && method != "narrow" &&
      method != "contiguous" && method != "interleaved")
    throw std::invalid_argument(
        "method must be 'stages', 'wide', 'narrow', 'contiguous' or "
        "'interleaved'");
  const bool interleaved = method == "interleaved";
  const bool passes = method != "stages";
  const gpu::FFTTables<T> t = gpu::make_fft_tables<T>(fft_size);
  const FFTShape& fs = t.shape;
  const int h = fs.n_half;
  if (re_in.shape(0) != static_cast<size_t>(h) ||
      im_in.shape(0) != static_cast<size_t>(h))
    throw std::invalid_argument("re and im must have fft_size / 2 entries");
  if (length < 0)
    length = 2 * static_cast<int64_t>(h);
  if (length > 2 * static_cast<int64_t>(h) ||
      ((method == "contiguous" || interleaved) && length % 2 != 0))
    throw std::invalid_argument(
        "length must be at most fft_size (and even for 'contiguous'); pass "
        "-1 for the whole row");
  std::vector<T> row(2 * static_cast<size_t>(h));
  const SwizzledRow<T*> sre{row.data()}, sim{row.data() + h};
  const InterleavedRow<T*> ire{row.data(), 0}, iim{row.data(), 1};
  T* re = row.data();
  T* im = re + h;
  std::vector<float> real_row(static_cast<size_t>(length));
  for (int i = 0; i < h; ++i) {
    // The forward transform's input: the real row, zero from `length` on.
    const bool cut = !inverse;
    const float xr = cut && 2 * i >= length ? 0.0f : re_in.data()[i];
    const float xi = cut && 2 * i + 1 >= length ? 0.0f : im_in.data()[i];
    if (2 * i < length)
      real_row[2 * i] = xr;
    if (2 * i + 1 < length)
      real_row[2 * i + 1] = xi;
    const T x = r_from_float(T{}, xr);
    const T y = r_from_float(T{}, xi);
    if (interleaved) {
      ire[i] = x;
      iim[i] = y;
    } else if (passes) {
      sre[i] = x;
      sim[i] = y;
    } else {
      re[i] = x;
      im[i] = y;
    }
  }
  const cpx<T>* tw = t.twiddles.data();
  if (method == "wide" || method == "contiguous") {
    run_passes<T, true>(
        real_row, sre, sim, fs, tw, inverse, method == "contiguous");
  } else if (interleaved) {
    run_passes<T, true>(real_row, ire, iim, fs, tw, inverse, true);
  } else if (method == "narrow") {
    run_passes<T, false>(real_row, sre, sim, fs, tw, inverse, false);
  } else {
    for (int k = 0; k < fs.num_stages; ++k) {
      if (inverse)
        fft_stage<true, T>(re, im, fs, fs.num_stages - 1 - k, tw, 0, 1);
      else
        fft_stage<false, T>(re, im, fs, k, tw, 0, 1);
    }
  }
  std::vector<double> out_re(h), out_im(h);
  for (int i = 0; i < h; ++i) {
    out_re[i] =
        as_double(interleaved ? T(ire[i]) : (passes ? T(sre[i]) : re[i]));
    out_im[i] =
        as_double(interleaved ? T(iim[i]) : (passes ? T(sim[i]) : im[i]));
  }
  nb::list items;
  items.append(nb::cast(new_double_array(out_re)));
  items.append(nb::cast(new_double_array(out_im)));
  return nb::tuple(items);
}

// A row's scale as one thread of a group computes it (certify_pair.h): the
// Metal kernels reduce the same parts over the group.
PairRowScale emulated_row_scale(const float* row, int64_t stride, int64_t len) {
  PairRowScale s{};
  s.max_abs_bits = max_abs_bits_part(row, stride, len, 0, 1);
  s.exponent = pair_scale_exponent(s.max_abs_bits);
  s.norm = pair_norm_bound(
      scaled_square_sum_part(row, stride, len, s.exponent, 0, 1),
      pair_norm_roundings(len, 1));
  return s;
}

// The recompute kernels' step on the CPU: each output marked open summed
// exactly; returns (y, open).
template <class Terms>
nb::tuple recompute_open(
    const Terms& terms,
    const ConvShape& g,
    float* y,
    const float* open,
    OutArray out,
    OutArray open_out) {
  for (int64_t i = 0; i < g.out_len; ++i)
    if (open[i] != 0.0f)
      y[i] = exact_terms_output(terms, g, i);
  nb::list items;
  items.append(nb::cast(out));
  items.append(nb::cast(open_out));
  return nb::tuple(items);
}

// The geometry of an rfft_conv variant of rows of a_len and b_len elements:
// "convolve" (out_len = a_len), "correlate_input" (grad u: a = the
// cotangent, b = k, out_len = a_len) or "correlate_kernel" (grad k: a = the
// cotangent, b = u, out_len = the kernel's length).
ConvGeometry emulated_geometry(
    const std::string& variant,
    int64_t period,
    int64_t a_len,
    int64_t b_len,
    int64_t kernel_len) {
  if (variant == "convolve")
    return conv_geometry(ConvVariant::Convolve, period, a_len, b_len, a_len);
  if (variant == "correlate_input")
    return conv_geometry(
        ConvVariant::CorrelateInput, period, a_len, b_len, a_len);
  if (variant == "correlate_kernel")
    return conv_geometry(
        ConvVariant::CorrelateKernel, period, a_len, b_len, kernel_len);
  throw std::invalid_argument(
      "variant must be 'convolve', 'correlate_input' or 'correlate_kernel'");
}

// certify_pair.h's Group for one CPU thread running a group's steps.
struct EmulatedGroup {
  float* open;
  PairRowScale row_scale(const float* row, int64_t stride, int64_t len) {
    return emulated_row_scale(row, stride, len);
  }
  void mark_open(int64_t e) {
    open[e] = 1.0f;
  }
};

// certify_pair.h's Terms for rows held in numpy arrays.
struct ListTerms {
  std::vector<F> a, b, c, d;
  int conv_count() const {
    return static_cast<int>(a.size());
  }
  void conv_rows(int i, OperandRow& a_row, OperandRow& b_row) const {
    a_row = OperandRow{a[i].data(), 1};
    b_row = OperandRow{b[i].data(), 1};
  }
  int bias_count() const {
    return static_cast<int>(c.size());
  }
  void bias_rows(int j, OperandRow& c_row, OperandRow& d_row) const {
    c_row = OperandRow{c[j].data(), 1};
    d_row = OperandRow{d[j].data(), 1};
  }
};

// Metal's certified rows of terms (certified_reduce_rows, certified_sum_rows,
// then recompute_open_rows / recompute_open_sum) on the CPU: y = sum_i
// rfft_conv(a_i, b_i, n = period or None) + sum_j c_j d_j. Returns (y, open).
nb::tuple metal_certified_conv_terms(
    std::vector<F> a,
    std::vector<F> b,
    std::vector<F> c,
    std::vector<F> d,
    int64_t period,
    const std::string& variant,
    int64_t kernel_len) {
  if (a.empty() || a.size() != b.size() || c.size() != d.size())
    throw std::invalid_argument(
        "a and b: as many rows, at least one; c and d: as many rows");
  const int64_t len = a[0].shape(0), taps = b[0].shape(0);
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].shape(0) != len || b[i].shape(0) != taps)
      throw std::invalid_argument("every a (b) row must have one length");
  const ConvGeometry geo =
      emulated_geometry(variant, period, len, taps, kernel_len);
  for (size_t j = 0; j < c.size(); ++j)
    if (c[j].shape(0) != geo.out_len || d[j].shape(0) != geo.out_len)
      throw std::invalid_argument("c and d rows must be as long as the output");
  const ListTerms terms{a, b, c, d};
  const ConvShape g = gpu::conv_shape(geo, false, 1);
  const gpu::FFTTables<ff> t = gpu::make_fft_tables<ff>(geo.fft_size);
  const int h = t.shape.n_half;
  std::vector<ff> rows(4 * static_cast<size_t>(h));
  std::vector<cpx<ff>> acc(2 * static_cast<size_t>(t.shape.num_pairs));
  float* y;
  OutArray out = new_float_array(static_cast<size_t>(geo.out_len), &y);
  float* open;
  OutArray open_out = new_float_array(static_cast<size_t>(geo.out_len), &open);
  std::fill(open, open + geo.out_len, 0.0f);
  EmulatedGroup group{open};
  ff* r = rows.data();
  certified_terms_row<ff>(
      r,
      r + h,
      r + 2 * h,
      r + 3 * h,
      terms,
      g,
      t.shape,
      t.twiddles.data(),
      t.split.data(),
      t.pairs.data(),
      acc.data(),
      pair_bound_constants(geo.fft_size, terms.conv_count(), len, taps),
      y,
      0,
      group,
      0,
      1);
  return recompute_open(terms, g, y, open, out, open_out);
}

// Metal's certified addmm on the CPU, one output at a time as the kernels
// run it (strict_kernels.metal: addmm_tiles_dd, addmm_recompute_open): a
// (m, k), b (k, n), c (m, n) or empty, row-major, flattened. err_scale
// multiplies the bound (1 in the kernels; tests shrink it to show that the
// bound matters). Returns (y, open).
nb::tuple metal_certified_addmm(
    F a,
    F b,
    F c,
    int64_t m,
    int64_t k,
    int64_t n,
    float alpha,
    float beta,
    float err_scale) {
  const bool has_c = c.shape(0) != 0;
  if (m < 0 || k < 0 || n < 0 || static_cast<int64_t>(a.shape(0)) != m * k ||
      static_cast<int64_t>(b.shape(0)) != k * n ||
      (has_c && static_cast<int64_t>(c.shape(0)) != m * n))
    throw std::invalid_argument(
        "pass a of m*k, b of k*n and c of m*n or 0 elements");
  float* y;
  OutArray out = new_float_array(static_cast<size_t>(m * n), &y);
  float* open;
  OutArray open_out = new_float_array(static_cast<size_t>(m * n), &open);
  const float* ad = a.data();
  const float* bd = b.data();
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      PairDot d = pair_dot_init();
      for (int64_t p = 0; p < k; ++p)
        d = pair_dot_step(d, ad[i * k + p], bd[p * n + j]);
      const float cv = has_c ? c.data()[i * n + j] : 0.0f;
      float err;
      const ff v = addmm_pair_value(d, k, alpha, has_c, beta, cv, &err);
      const bool done =
          certified_round_pair(v, err * err_scale, 0, &y[i * n + j]);
      open[i * n + j] = done ? 0.0f : 1.0f;
      if (!done)
        y[i * n + j] = exact_addmm_entry(
            [&](int64_t p) { return ad[i * k + p]; },
            [&](int64_t p) { return bd[p * n + j]; },
            k,
            alpha,
            has_c,
            beta,
            cv);
    }
  }
  return nb::make_tuple(out, open_out);
}

// Metal's certified float-pair layer_norm on the CPU, each row as the kernels
// run it (strict_kernels.metal: layer_norm_rows_dd, then
// layer_norm_recompute_open for the open outputs): x (rows, dim) row-major,
// flattened; weight and bias of dim entries or empty. err_scale multiplies
// the bound (1 in the kernels). Returns (y, open).
nb::tuple metal_certified_layer_norm(
    F x,
    F weight,
    F bias,
    int64_t dim,
    double eps,
    float err_scale) {
  const bool has_w = weight.shape(0) != 0, has_b = bias.shape(0) != 0;
  if (dim <= 0 || x.shape(0) % dim != 0 ||
      (has_w && static_cast<int64_t>(weight.shape(0)) != dim) ||
      (has_b && static_cast<int64_t>(bias.shape(0)) != dim) || !(eps >= 0.0))
    throw std::invalid_argument(
        "pass x of rows * dim entries, weight and bias of dim or 0, eps >= 0");
  const int64_t rows = static_cast<int64_t>(x.shape(0)) / dim;
  const PairLayerNormEps pe = pair_layer_norm_eps(eps);
  float* y;
  OutArray out = new_float_array(static_cast<size_t>(rows * dim), &y);
  float* open;
  OutArray open_out = new_float_array(static_cast<size_t>(rows * dim), &open);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * dim;
    const auto element = [&](int64_t i) { return xr[i]; };
    const PairLayerNormRow row = pair_layer_norm_row(element, dim, pe);
    bool any_open = false;
    for (int64_t i = 0; i < dim; ++i) {
      const float w = has_w ? weight.data()[i] : 1.0f;
      const float b = has_b ? bias.data()[i] : -0.0f;
      const bool done = pair_layer_norm_round(
          pair_layer_norm_output(row, xr[i], w, b), err_scale, &y[r * dim + i]);
      open[r * dim + i] = done ? 0.0f : 1.0f;
      any_open = any_open || !done;
    }
    if (!any_open)
      continue;
    const ExactLayerNormRow<kBigLimbs> exact =
        exact_layer_norm_row<kBigLimbs>(element, dim, pe.exact);
    for (int64_t i = 0; i < dim; ++i)
      if (open[r * dim + i] != 0.0f)
        y[r * dim + i] = exact_layer_norm_output(
            exact,
            xr[i],
            has_w ? weight.data()[i] : 1.0f,
            has_b ? bias.data()[i] : -0.0f,
            y[r * dim + i]);
  }
  return nb::make_tuple(out, open_out);
}

// Metal's certified float-pair layer_norm grad x on the CPU, each row as the
// kernels run it (strict_kernels.metal: layer_norm_grad_rows_dd, then
// layer_norm_grad_x_recompute_open for the open outputs): x and the cotangent
// g (rows, dim) row-major, flattened; weight of dim entries or empty.
// err_scale multiplies the bound (1 in the kernels). Returns (dx, open).
nb::tuple metal_certified_layer_norm_grad_x(
    F x,
    F weight,
    F g,
    int64_t dim,
    double eps,
    float err_scale) {
  const bool has_w = weight.shape(0) != 0;
  if (dim <= 0 || x.shape(0) % dim != 0 || g.shape(0) != x.shape(0) ||
      (has_w && static_cast<int64_t>(weight.shape(0)) != dim) || !(eps >= 0.0))
    throw std::invalid_argument(
        "pass x and g of rows * dim entries, weight of dim or 0, eps >= 0");
  const int64_t rows = static_cast<int64_t>(x.shape(0)) / dim;
  const PairLayerNormEps pe = pair_layer_norm_eps(eps);
  float* dx;
  OutArray out = new_float_array(static_cast<size_t>(rows * dim), &dx);
  // Poisoned: an output the kernels' code failed to write stays NaN.
  std::fill(dx, dx + rows * dim, std::numeric_limits<float>::quiet_NaN());
  float* open;
  OutArray open_out = new_float_array(static_cast<size_t>(rows * dim), &open);
  const auto w = [&](int64_t i) { return has_w ? weight.data()[i] : 1.0f; };
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * dim;
    const float* gr = g.data() + r * dim;
    const auto xe = [&](int64_t i) { return xr[i]; };
    const auto ge = [&](int64_t i) { return gr[i]; };
    const PairLayerNormRow row = pair_layer_norm_row(xe, dim, pe);
    const PairGradX gx = pair_grad_x_row(row, xe, ge, w, dim);
    bool any_open = false;
    for (int64_t i = 0; i < dim; ++i) {
      const bool done = pair_layer_norm_round(
          pair_grad_x_output(row, gx, xr[i], gr[i], w(i)),
          err_scale,
          &dx[r * dim + i]);
      open[r * dim + i] = done ? 0.0f : 1.0f;
      any_open = any_open || !done;
    }
    if (!any_open)
      continue;
    ExactGradXRow exact;
    exact_grad_x_row(xe, ge, w, dim, pe.exact, exact);
    for (int64_t i = 0; i < dim; ++i)
      if (open[r * dim + i] != 0.0f)
        dx[r * dim + i] =
            exact_grad_x_output(exact, xr[i], gr[i], w(i), dx[r * dim + i]);
  }
  return nb::make_tuple(out, open_out);
}

// Metal's certified float-pair layer_norm grad weight on the CPU, each column
// as the kernels run it (strict_kernels.metal: layer_norm_grad_rows_dd for the
// rows' statistics, layer_norm_param_grads_dd, then
// layer_norm_weight_grad_recompute_open for the open columns): x and the
// cotangent g (rows, dim) row-major, flattened. err_scale multiplies the
// bound (1 in the kernels). Returns (dw, open).
nb::tuple metal_certified_layer_norm_grad_weight(
    F x,
    F g,
    int64_t dim,
    double eps,
    float err_scale) {
  if (dim <= 0 || x.shape(0) % dim != 0 || g.shape(0) != x.shape(0) ||
      !(eps >= 0.0))
    throw std::invalid_argument("pass x and g of rows * dim entries, eps >= 0");
  const int64_t rows = static_cast<int64_t>(x.shape(0)) / dim;
  const PairLayerNormEps pe = pair_layer_norm_eps(eps);
  std::vector<PairLayerNormRow> stats(rows);
  for (int64_t r = 0; r < rows; ++r)
    stats[r] = pair_layer_norm_row(
        [&](int64_t i) { return x.data()[r * dim + i]; }, dim, pe);
  float* dw;
  OutArray out = new_float_array(static_cast<size_t>(dim), &dw);
  // Poisoned: an output the kernels' code failed to write stays NaN.
  std::fill(dw, dw + dim, std::numeric_limits<float>::quiet_NaN());
  float* open;
  OutArray open_out = new_float_array(static_cast<size_t>(dim), &open);
  for (int64_t i = 0; i < dim; ++i) {
    const auto xe = [&](int64_t r) { return x.data()[r * dim + i]; };
    const auto ge = [&](int64_t r) { return g.data()[r * dim + i]; };
    const bool done = pair_layer_norm_round(
        pair_weight_grad_output(
            [&](int64_t r) { return stats[r]; }, xe, ge, rows),
        err_scale,
        &dw[i]);
    open[i] = done ? 0.0f : 1.0f;
    if (done)
      continue;
    float exact;
    if (exact_weight_grad_output(
            [&](int64_t r, ExactLayerNormRow<kBigLimbs>& row) {
              row = exact_layer_norm_row<kBigLimbs>(
                  [&](int64_t j) { return x.data()[r * dim + j]; },
                  dim,
                  pe.exact);
            },
            xe,
            ge,
            rows,
            dw[i],
            &exact))
      dw[i] = exact;
  }
  return nb::make_tuple(out, open_out);
}

// Metal's layer_norm bias gradient on the CPU (strict_kernels.metal:
// layer_norm_param_grads): the column sums of g (rows, dim) row-major,
// flattened, rows in order. Returns the dim sums.
OutArray metal_layer_norm_bias_grad(F g, int64_t dim) {
  if (dim <= 0 || g.shape(0) % dim != 0)
    throw std::invalid_argument("pass g of rows * dim entries");
  const int64_t rows = static_cast<int64_t>(g.shape(0)) / dim;
  float* out;
  OutArray result = new_float_array(static_cast<size_t>(dim), &out);
  for (int64_t i = 0; i < dim; ++i) {
    const auto column = [&](int64_t r) { return g.data()[r * dim + i]; };
    PairDot sum = pair_dot_init();
    for (int64_t r = 0; r < rows; ++r)
      sum = pair_dot_step(sum, column(r), 1.0f);
    out[i] = pair_bias_grad(sum, column, rows);
  }
  return result;
}

// The float-pair kernel rows' steps on the CPU, one thread running a group's:
// the spectrum of the loaded row (the spectra kernels), and the loaded row
// convolved with a spectrum (the conv rows kernels: forward, product,
// inverse).
void store_row_spectrum(
    std::vector<ff>& row,
    const gpu::FFTTables<ff>& t,
    const ConvShape& g,
    std::vector<cpx<ff>>& spectrum) {
  const int h = t.shape.n_half;
  fft_rows<false, ff>(
      row.data(), row.data() + h, t.shape, t.twiddles.data(), 0, 1);
  store_spectrum<ff>(
      row.data(),
      row.data() + h,
      t.pairs.data(),
      t.split.data(),
      g.spectrum_scale,
      spectrum.data(),
      t.shape.num_pairs,
      0,
      1);
}

void convolve_loaded_row(
    std::vector<ff>& row,
    const gpu::FFTTables<ff>& t,
    const std::vector<cpx<ff>>& spectrum) {
  const int h = t.shape.n_half;
  fft_rows<false, ff>(
      row.data(), row.data() + h, t.shape, t.twiddles.data(), 0, 1);
  multiply_rows_by_spectrum<ff>(
      row.data(),
      row.data() + h,
      h,
      1,
      t.pairs.data(),
      t.split.data(),
      spectrum.data(),
      t.shape.num_pairs,
      0,
      1);
  fft_rows<true, ff>(
      row.data(), row.data() + h, t.shape, t.twiddles.data(), 0, 1);
}

// Metal's certified float-pair rfft_conv of one row on the CPU, one thread
// running the group's steps (rfft_conv_kernels.metal: certified_spectra,
// certified_conv_rows, recompute_open_rows): y = rfft_conv(a, b, n = period
// or None, bias), an output per element of a. Returns (y, open): open marks
// the outputs that did not certify (recomputed exactly).
nb::tuple metal_certified_conv(
    F a_in,
    F b_in,
    F bias_in,
    int64_t period,
    const std::string& variant) {
  const int64_t a_len = a_in.shape(0), b_len = b_in.shape(0);
  const bool has_bias = bias_in.shape(0) != 0;
  if (a_len == 0 || b_len == 0 ||
      (has_bias && bias_in.shape(0) != a_in.shape(0)))
    throw std::invalid_argument(
        "a and b must be nonempty, bias empty or as long as a");
  if (variant == "correlate_kernel")
    throw std::invalid_argument(
        "correlate_kernel sums over rows: metal_certified_conv_terms");
  const ConvGeometry geo = emulated_geometry(variant, period, a_len, b_len, 0);
  const ConvShape g = gpu::conv_shape(geo, has_bias, 1);
  const gpu::FFTTables<ff> t = gpu::make_fft_tables<ff>(geo.fft_size);
  const FFTShape& fs = t.shape;
  const int h = fs.n_half;
  const float* a = a_in.data();
  const float* b = b_in.data();
  const float* bias = has_bias ? bias_in.data() : a;
  std::vector<ff> row(2 * static_cast<size_t>(h));
  std::vector<cpx<ff>> spectrum(2 * static_cast<size_t>(fs.num_pairs));
  // certified_spectra
  const PairRowScale b_scale = emulated_row_scale(b, 1, b_len);
  load_scaled_row<ff>(
      row.data(),
      row.data() + h,
      b,
      1,
      b_len,
      false,
      b_scale.exponent,
      h,
      0,
      1);
  store_row_spectrum(row, t, g, spectrum);
  // certified_conv_rows
  const PairBoundConstants k =
      pair_bound_constants(g.fft_size, 1, a_len, b_len);
  const PairCertificate cert = pair_certificate(
      k.kappa,
      k.absolute,
      emulated_row_scale(a, 1, a_len),
      b_scale,
      g.fold != 0,
      has_bias);
  load_scaled_row<ff>(
      row.data(),
      row.data() + h,
      a,
      1,
      a_len,
      g.a_reversed != 0,
      cert.a_exponent,
      h,
      0,
      1);
  convolve_loaded_row(row, t, spectrum);
  float* y;
  OutArray out = new_float_array(static_cast<size_t>(a_len), &y);
  float* open;
  OutArray open_out = new_float_array(static_cast<size_t>(a_len), &open);
  for (int64_t i = 0; i < a_len; ++i) {
    const bool done = certify_pair_output(
        cert,
        gather_output<ff>(row.data(), row.data() + h, g, i),
        has_bias,
        a[i],
        bias[i],
        y + i);
    open[i] = done ? 0.0f : 1.0f;
  }
  // recompute_open_rows
  return recompute_open(
      OneTerm{
          OperandRow{a, 1}, OperandRow{b, 1}, OperandRow{bias, 1}, has_bias},
      g,
      y,
      open,
      out,
      open_out);
}

// Metal's pair rfft_conv rows on the CPU, one thread running the group's
// steps (pair_kernels.metal: pair_kernel_spectra, pair_conv_rows) in float
// pairs on one row: "convolve" (a = u, b = k, with an optional bias),
// "correlate_input" (a = g, b = k: grad u [+ g bias]) or "correlate_kernel"
// (a = g, b = u: grad k, kernel_len outputs). Returns (hi, lo, kappa): kappa
// times ||a||_2 ||b||_2 bounds the error of the convolution part
// (conv_error_bound for u = 1.3 2^-46, doubled where the geometry folds).
nb::tuple metal_pair_conv(
    F a_hi,
    F a_lo,
    F b_hi,
    F b_lo,
    F bias_in,
    int64_t period,
    const std::string& variant,
    int64_t kernel_len) {
  const int64_t a_len = a_hi.shape(0), b_len = b_hi.shape(0);
  const bool has_bias = bias_in.shape(0) != 0;
  if (a_len == 0 || b_len == 0 || a_lo.shape(0) != a_hi.shape(0) ||
      b_lo.shape(0) != b_hi.shape(0) ||
      (has_bias &&
       (bias_in.shape(0) != a_hi.shape(0) || variant == "correlate_kernel")))
    throw std::invalid_argument(
        "metal_pair_conv: pass nonempty pairs a, b and a bias as long as a "
        "(or empty; none for correlate_kernel)");
  const ConvGeometry geo =
      emulated_geometry(variant, period, a_len, b_len, kernel_len);
  const ConvShape g = gpu::conv_shape(geo, has_bias, 1);
  const gpu::FFTTables<ff> t = gpu::make_fft_tables<ff>(geo.fft_size);
  const FFTShape& fs = t.shape;
  const int h = fs.n_half;
  std::vector<ff> row(2 * static_cast<size_t>(h));
  std::vector<cpx<ff>> spectrum(2 * static_cast<size_t>(fs.num_pairs));
  // pair_kernel_spectra
  load_pair_row<ff>(
      row.data(),
      row.data() + h,
      b_hi.data(),
      1,
      b_lo.data(),
      1,
      g.b_len,
      false,
      h,
      0,
      1);
  store_row_spectrum(row, t, g, spectrum);
  // pair_conv_rows
  load_pair_row<ff>(
      row.data(),
      row.data() + h,
      a_hi.data(),
      1,
      a_lo.data(),
      1,
      g.a_len,
      g.a_reversed != 0,
      h,
      0,
      1);
  convolve_loaded_row(row, t, spectrum);
  std::array<float*, 2> out;
  std::array<OutArray, 2> arrays{
      new_float_array(g.out_len, &out[0]), new_float_array(g.out_len, &out[1])};
  for (int64_t i = 0; i < g.out_len; ++i) {
    const ff v = finish_pair_output(
        gather_output<ff>(row.data(), row.data() + h, g, i),
        has_bias,
        has_bias ? a_hi.data()[i] : 0.0f,
        has_bias ? a_lo.data()[i] : 0.0f,
        has_bias ? bias_in.data()[i] : 0.0f);
    out[0][i] = v.hi;
    out[1][i] = v.lo;
  }
  const double kappa = conv_error_bound(
      geo.fft_size, 1, 1.3 * static_cast<double>(kPairUnitRoundoff));
  return nb::make_tuple(arrays[0], arrays[1], (geo.fold ? 2.0 : 1.0) * kappa);
}

// The outputs of a cyclic convolution x (x[2m] = re[m], x[2m + 1] = im[m],
// in double) as the GPU kernels write them: for_each_output run by each of
// `threads` threads in turn, and gather_output for every t. Returns (by
// threads, by gather, times each output was written, outputs_are_entries).
nb::tuple gpu_outputs(
    F re_in,
    F im_in,
    int64_t a_len,
    int64_t b_len,
    int64_t out_len,
    int64_t period,
    bool fold,
    bool out_reversed,
    int64_t out_origin,
    int threads) {
  const size_t h = re_in.shape(0);
  if (im_in.shape(0) != h || out_len < 0 || threads < 1)
    throw std::invalid_argument(
        "re and im must have the same length, out_len >= 0, threads >= 1");
  std::vector<double> re(h), im(h);
  for (size_t i = 0; i < h; ++i) {
    re[i] = re_in.data()[i];
    im[i] = im_in.data()[i];
  }
  ConvShape g{};
  g.fft_size = 2 * static_cast<int64_t>(h);
  g.period = period;
  g.a_len = a_len;
  g.b_len = b_len;
  g.out_len = out_len;
  g.out_origin = out_origin;
  g.fold = fold ? 1 : 0;
  g.out_reversed = out_reversed ? 1 : 0;
  std::vector<double> by_threads(out_len), by_gather(out_len), writes(out_len);
  for (int tid = 0; tid < threads; ++tid)
    for_each_output<double>(
        re.data(), im.data(), g, tid, threads, [&](int64_t t, double v) {
          by_threads.at(t) = v;
          writes.at(t) += 1.0;
        });
  for (int64_t t = 0; t < out_len; ++t)
    by_gather[t] = gather_output<double>(re.data(), im.data(), g, t);
  nb::list items;
  items.append(nb::cast(new_double_array(by_threads)));
  items.append(nb::cast(new_double_array(by_gather)));
  items.append(nb::cast(new_double_array(writes)));
  items.append(nb::cast(outputs_are_entries(g)));
  return nb::tuple(items);
}

// The GPU's split rows (kernels/rfft_conv_rows.h, "split rows": CUDA's
// split_kernel_spectra and split_conv_rows), or with `deep` the deep split
// rows (deep_split_kernel_spectra and deep_split_conv_rows), on the CPU, one
// thread running a block's steps on rows poisoned with NaN: y =
// rfft_conv(a, b, n = period or None, bias) ("convolve") or grad u
// ("correlate_input": a = the cotangent, b = k), certified against the
// split bound times bound_scale, the outputs that do not certify recomputed
// as recompute_open does. Returns (y, open, values, bounds): the values
// certified (transform plus bias products, in double) and the bound each was
// certified against.
nb::tuple gpu_split_conv(
    F a_in,
    F b_in,
    F bias_in,
    int64_t period,
    const std::string& variant,
    double bound_scale,
    bool deep) {
  const int64_t a_len = a_in.shape(0), b_len = b_in.shape(0);
  const bool has_bias = bias_in.shape(0) != 0;
  if (a_len == 0 || b_len == 0 ||
      (has_bias && bias_in.shape(0) != a_in.shape(0)))
    throw std::invalid_argument(
        "a and b must be nonempty, bias empty or as long as a");
  if (variant == "correlate_kernel")
    throw std::invalid_argument(
        "correlate_kernel sums over rows (reduce_rows): no split rows");
  const ConvGeometry geo = emulated_geometry(variant, period, a_len, b_len, 0);
  if (!(deep ? gpu::deep_split_rows_apply(geo) : gpu::split_rows_apply(geo)))
    throw std::invalid_argument(
        "these rows do not take the split rows (gpu::split_rows_apply, "
        "gpu::deep_split_rows_apply)");
  const ConvShape g = gpu::conv_shape(geo, has_bias, 1);
  const gpu::FFTTables<double> t =
      gpu::make_fft_tables<double>(geo.fft_size / (deep ? 4 : 2));
  const std::vector<cpx<double>> twist = deep
      ? gpu::make_deep_twist_table<double>(geo.fft_size)
      : gpu::make_twist_table<double>(geo.fft_size);
  const FFTShape& fs = t.shape;
  const int m = fs.n_half;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> row(2 * static_cast<size_t>(m), nan);
  std::vector<double> stash((deep ? 6 : 2) * static_cast<size_t>(m), nan);
  std::vector<cpx<double>> spectrum(
      static_cast<size_t>(
          deep ? deep_split_spectrum_stride(fs) : split_spectrum_stride(fs)),
      cpx<double>{nan, nan});
  const SwizzledRow<double*> re{row.data()}, im{row.data() + m};
  const float* a = a_in.data();
  const float* b = b_in.data();
  const float* bias = has_bias ? bias_in.data() : a;
  const DeviceRow b_row{b, 1, g.b_len, false};
  const DeviceRow a_row{a, 1, g.a_len, g.a_reversed != 0};
  using Row = SwizzledRow<double*>;
  // The kernel spectra kernel, then the row kernel's certificate.
  const auto kernel_spectrum = [&](auto form_spectrum) {
    form_spectrum(
        b_row,
        re,
        im,
        fs,
        t.twiddles.data(),
        t.split.data(),
        t.pairs.data(),
        twist.data(),
        g.spectrum_scale,
        spectrum.data(),
        0,
        1);
  };
  RowCertificate cert;
  if (deep) {
    const DeepSplitBound bound = deep_split_bound(geo.fft_size);
    double b_sums[6], a_sums[6];
    deep_folded_sums_part(b_row, 2 * m, 0, 1, b_sums);
    kernel_spectrum(deep_split_kernel_spectrum<false, double, Row>);
    deep_folded_sums_part(a_row, 2 * m, 0, 1, a_sums);
    cert = deep_row_certificate(
        bound,
        g,
        deep_norms(bound.piece_a, m, a_row.len, a_sums),
        deep_norms(bound.piece_a, m, b_row.len, b_sums),
        bound_scale);
  } else {
    const SplitBound bound = split_bound(geo.fft_size);
    double folded_sums[4], sums[3];
    folded_row_sums_part(b_row, 2 * m, 0, 1, folded_sums);
    const SplitKernelNorms b_norms = split_kernel_norms(
        bound.cyclic, m, std::min<int64_t>(b_row.len, 2 * m), folded_sums);
    kernel_spectrum(split_kernel_spectrum<false, double, Row>);
    row_sums_part(a_row, 0, 1, sums);
    cert = split_row_certificate(
        bound,
        g,
        row_norms(bound.cyclic, m, a_row.len, sums),
        b_norms,
        bound_scale);
  }
  float* y;
  OutArray out = new_float_array(static_cast<size_t>(g.out_len), &y);
  float* open;
  OutArray open_out = new_float_array(static_cast<size_t>(g.out_len), &open);
  std::fill(y, y + g.out_len, std::numeric_limits<float>::quiet_NaN());
  std::vector<double> values(g.out_len, nan), bounds(g.out_len, nan);
  const auto emit = [&](int64_t i, double v) {
    double magnitude = std::fabs(v);
    if (has_bias) {
      const double p = r_prod(0.0, a[i], bias[i]);
      v = r_add(v, p);
      magnitude += std::fabs(p);
    }
    values[i] = v;
    bounds[i] = cert.conv_err + cert.rel * magnitude;
    open[i] = certify_output(cert, v, magnitude, y + i) ? 0.0f : 1.0f;
  };
  const auto run = [&](auto conv_row) {
    conv_row(
        a_row,
        re,
        im,
        stash.data(),
        g,
        fs,
        t.twiddles.data(),
        t.split.data(),
        t.pairs.data(),
        twist.data(),
        spectrum.data(),
        0,
        1,
        emit);
  };
  if (deep)
    run(deep_split_conv_row<false, double, Row, decltype(emit)>);
  else
    run(split_conv_row<false, double, Row, decltype(emit)>);
  // recompute_open
  RowIndex ix{};
  ix.outer_count = ix.inner_count = 1;
  for (int op = 0; op < kNumOperands; ++op)
    ix.time_stride[op] = 1;
  for (int64_t i = 0; i < g.out_len; ++i)
    if (open[i] != 0.0f)
      y[i] = recompute_output(a, b, bias, ix, g, 0, 0, 1, i);
  nb::list items;
  items.append(nb::cast(out));
  items.append(nb::cast(open_out));
  items.append(nb::cast(new_double_array(values)));
  items.append(nb::cast(new_double_array(bounds)));
  return nb::tuple(items);
}

// The rows of one target of the split gradient rows: operand op's row j at
// j * row_len (no stride for a broadcast operand), every time stride 1.
RowIndex target_rows(int64_t rows, int64_t row_len, const bool (&per_row)[4]) {
  RowIndex ix{};
  ix.outer_count = 1;
  ix.inner_count = rows;
  ix.inner_ndim = 1;
  ix.inner_shape[0] = rows;
  for (int op = 0; op < kNumOperands; ++op) {
    ix.time_stride[op] = 1;
    ix.inner_stride[op][0] = per_row[op] ? row_len : 0;
  }
  return ix;
}

// The GPU's split gradient rows (kernels/rfft_conv_rows.h, "split gradient
// rows": CUDA's split_kernel_spectra and split_gradient_rows) on the CPU for
// one target, one thread running a block's steps on rows and slots poisoned
// with NaN: for y = rfft_conv(u, k, n = period or None, bias) with `rows`
// rows u_j of length L (u and the cotangent g: rows * L values, row after
// row) sharing one kernel row k, grad u (rows * L) and grad k (len(k)),
// certified against split_row_certificate and split_sum_certificate times
// bound_scale, the outputs that do not certify recomputed as recompute_open
// does. Returns (grad u, grad k, open u, open k, values u, bounds u,
// values k, bounds k).
nb::tuple gpu_split_gradients(
    F g_in,
    F k_in,
    F u_in,
    F bias_in,
    int64_t rows,
    int64_t period,
    double bound_scale) {
  const int64_t k_len = k_in.shape(0);
  const bool has_bias = bias_in.shape(0) != 0;
  if (rows < 1 || k_len == 0 || g_in.shape(0) == 0 ||
      g_in.shape(0) % rows != 0 || u_in.shape(0) != g_in.shape(0) ||
      (has_bias && bias_in.shape(0) != g_in.shape(0)))
    throw std::invalid_argument(
        "g and u must hold `rows` nonempty rows each, k nonempty, bias empty "
        "or as long as g");
  const int64_t L = g_in.shape(0) / rows;
  const ConvGeometry u_geo =
      emulated_geometry("correlate_input", period, L, k_len, 0);
  const ConvGeometry k_geo =
      emulated_geometry("correlate_kernel", period, L, L, k_len);
  if (!gpu::split_gradients_apply(u_geo, k_geo))
    throw std::invalid_argument(
        "these rows do not take the split gradient rows "
        "(gpu::split_gradients_apply)");
  const ConvShape gu = gpu::conv_shape(u_geo, has_bias, 1);
  const ConvShape gk = gpu::conv_shape(k_geo, false, 1);
  const gpu::FFTTables<double> t =
      gpu::make_fft_tables<double>(u_geo.fft_size / 2);
  const std::vector<cpx<double>> twist =
      gpu::make_twist_table<double>(u_geo.fft_size);
  const FFTShape& fs = t.shape;
  const int m = fs.n_half;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> row(2 * static_cast<size_t>(m), nan);
  std::vector<double> stash(4 * static_cast<size_t>(m), nan);
  std::vector<cpx<double>> spectrum(
      static_cast<size_t>(split_spectrum_stride(fs)), cpx<double>{nan, nan});
  std::vector<cpx<double>> acc(
      static_cast<size_t>(split_accumulator_stride(fs)), cpx<double>{nan, nan});
  const SwizzledRow<double*> re{row.data()}, im{row.data() + m};
  const float* g = g_in.data();
  const float* k = k_in.data();
  const float* u = u_in.data();
  const float* bias = has_bias ? bias_in.data() : g;
  const SplitBound bound = split_bound(u_geo.fft_size);
  // split_kernel_spectra
  const DeviceRow k_row{k, 1, gu.b_len, false};
  double folded_sums[4];
  folded_row_sums_part(k_row, 2 * m, 0, 1, folded_sums);
  const SplitKernelNorms k_norms = split_kernel_norms(
      bound.cyclic, m, std::min<int64_t>(k_row.len, 2 * m), folded_sums);
  split_kernel_spectrum<false, double>(
      k_row,
      re,
      im,
      fs,
      t.twiddles.data(),
      t.split.data(),
      t.pairs.data(),
      twist.data(),
      gu.spectrum_scale,
      spectrum.data(),
      0,
      1);
  // split_gradient_rows
  float *grad_u, *grad_k, *open_u, *open_k;
  const size_t u_size = static_cast<size_t>(rows * gu.out_len);
  const size_t k_size = static_cast<size_t>(gk.out_len);
  std::array<OutArray, 4> arrays{
      new_float_array(u_size, &grad_u),
      new_float_array(k_size, &grad_k),
      new_float_array(u_size, &open_u),
      new_float_array(k_size, &open_k)};
  std::vector<double> values_u(u_size, nan), bounds_u(u_size, nan);
  std::vector<double> values_k(k_size, nan), bounds_k(k_size, nan);
  auto certify_into = [](const RowCertificate& cert,
                         double v,
                         double magnitude,
                         size_t i,
                         float* out,
                         float* open,
                         std::vector<double>& values,
                         std::vector<double>& bounds) {
    values[i] = v;
    bounds[i] = cert.conv_err + cert.rel * magnitude;
    open[i] = certify_output(cert, v, magnitude, out + i) ? 0.0f : 1.0f;
  };
  const TransformErrors term_errors =
      transform_errors(u_geo.fft_size / 2, 1, kUnitRoundoff64);
  double norm_products = 0.0, cyclic_terms = 0.0, masses[2] = {0.0, 0.0};
  for (int64_t j = 0; j < rows; ++j) {
    const DeviceRow g_row{g + j * L, 1, gu.a_len, gu.a_reversed != 0};
    const DeviceRow u_row{u + j * L, 1, gk.b_len, false};
    double sums[3];
    row_sums_part(g_row, 0, 1, sums);
    const RowNorms g_norms = row_norms(bound.cyclic, m, g_row.len, sums);
    row_sums_part(u_row, 0, 1, sums);
    const RowNorms u_norms = row_norms(bound.cyclic, m, u_row.len, sums);
    const RowCertificate cert =
        split_row_certificate(bound, gu, g_norms, k_norms, bound_scale);
    norm_products += g_norms.norm * u_norms.norm;
    cyclic_terms += measured_term_error(
        term_errors,
        g_norms.norm,
        u_norms.norm,
        g_norms.spectrum,
        u_norms.spectrum);
    split_gradient_row<false, double>(
        g_row,
        u_row,
        re,
        im,
        stash.data(),
        acc.data(),
        j == 0,
        gu,
        fs,
        t.twiddles.data(),
        t.split.data(),
        t.pairs.data(),
        twist.data(),
        spectrum.data(),
        0,
        1,
        [&](int half, cpx<double> v) {
          masses[half] += std::fabs(v.re) + std::fabs(v.im);
        },
        [&](int64_t i, double v) {
          double magnitude = std::fabs(v);
          if (has_bias) {
            const double p = r_prod(0.0, g[j * L + i], bias[j * L + i]);
            v = r_add(v, p);
            magnitude += std::fabs(p);
          }
          certify_into(
              cert,
              v,
              magnitude,
              static_cast<size_t>(j * gu.out_len + i),
              grad_u,
              open_u,
              values_u,
              bounds_u);
        });
  }
  const RowCertificate cert_k = split_sum_certificate(
      gk, cyclic_terms, masses, norm_products, rows, bound_scale);
  split_accumulated_row<false, double>(
      re,
      im,
      stash.data(),
      acc.data(),
      gk,
      fs,
      t.twiddles.data(),
      t.split.data(),
      t.pairs.data(),
      twist.data(),
      0,
      1,
      [&](int64_t i, double v) {
        certify_into(
            cert_k,
            v,
            std::fabs(v),
            static_cast<size_t>(i),
            grad_k,
            open_k,
            values_k,
            bounds_k);
      });
  // recompute_open: grad u's rows (g_j, k, bias_j), grad k's sum over j of
  // (g_j, u_j)
  const RowIndex u_ix = target_rows(rows, L, {true, false, true, true});
  const RowIndex k_ix = target_rows(rows, L, {true, true, false, false});
  for (int64_t j = 0; j < rows; ++j)
    for (int64_t i = 0; i < gu.out_len; ++i)
      if (open_u[j * gu.out_len + i] != 0.0f)
        grad_u[j * gu.out_len + i] =
            recompute_output(g, k, bias, u_ix, gu, 0, j, j + 1, i);
  for (int64_t i = 0; i < gk.out_len; ++i)
    if (open_k[i] != 0.0f)
      grad_k[i] = recompute_output(g, u, nullptr, k_ix, gk, 0, 0, rows, i);
  nb::list items;
  for (OutArray& a : arrays)
    items.append(nb::cast(a));
  items.append(nb::cast(new_double_array(values_u)));
  items.append(nb::cast(new_double_array(bounds_u)));
  items.append(nb::cast(new_double_array(values_k)));
  items.append(nb::cast(new_double_array(bounds_k)));
  return nb::tuple(items);
}

// Whether rows of a_len and b_len elements of an rfft_conv variant
// ("convolve", "correlate_input", "correlate_kernel") with period (0: none)
// satisfy gpu::split_rows_apply, and their transform size.
nb::tuple split_rows_apply(
    const std::string& variant,
    int64_t period,
    int64_t a_len,
    int64_t b_len,
    int64_t kernel_len) {
  const ConvGeometry geo =
      emulated_geometry(variant, period, a_len, b_len, kernel_len);
  return nb::make_tuple(gpu::split_rows_apply(geo), geo.fft_size);
}

// Metal's PairSum on the CPU, one output at a time: the pair (hi, lo), flat
// buffers read at `shape` with its hi and lo strides, summed to out_shape
// with the layouts and the float-pair sums of the Metal kernel.
nb::tuple metal_pair_sum(
    F hi,
    F lo,
    const std::vector<int>& shape,
    const std::vector<int64_t>& hi_strides,
    const std::vector<int64_t>& lo_strides,
    const std::vector<int>& out_shape) {
  const gpu::PairSumLayout l = gpu::pair_sum_layout(
      mx::Shape(shape.begin(), shape.end()),
      mx::Strides(hi_strides.begin(), hi_strides.end()),
      mx::Strides(lo_strides.begin(), lo_strides.end()),
      mx::Shape(out_shape.begin(), out_shape.end()));
  int64_t outputs = 1;
  for (int n : out_shape)
    outputs *= n;
  std::array<float*, 2> out;
  std::array<OutArray, 2> arrays{
      new_float_array(outputs, &out[0]), new_float_array(outputs, &out[1])};
  for (int64_t t = 0; t < outputs; ++t) {
    const ff v = pair_sum_to_output<ff>(
        hi.data(),
        lo.data(),
        l.kept_hi,
        l.kept_lo,
        l.summed_hi,
        l.summed_lo,
        l.terms,
        t);
    out[0][t] = v.hi;
    out[1][t] = v.lo;
  }
  return as_tuple(arrays);
}

// Metal's ScatterAdd of PairRows on the CPU: the cotangent rows g (count,
// dim), row-major, added into table_rows rows at ids by the counting sort and
// the float-pair sums of the Metal kernels.
nb::tuple metal_pair_scatter_add(
    F g_hi,
    F g_lo,
    InArray<int32_t> ids,
    int64_t dim,
    int64_t table_rows) {
  const int64_t count = static_cast<int64_t>(ids.shape(0));
  if (dim <= 0 || static_cast<int64_t>(g_hi.shape(0)) != count * dim ||
      g_lo.shape(0) != g_hi.shape(0))
    throw std::invalid_argument(
        "metal_pair_scatter_add: pass g_hi, g_lo of len(ids) * dim entries");
  RowsLayout g_layout{};
  g_layout.dims = 1;
  g_layout.shape[0] = static_cast<int>(count);
  g_layout.strides[0] = dim;
  g_layout.element_stride = 1;
  RowsLayout ids_layout{};
  ids_layout.element_stride = 1;
  std::vector<int64_t> first(table_rows + 1),
      positions(std::max<int64_t>(count, 1));
  pair_rows_count_sort(
      ids.data(),
      ids_layout,
      count,
      count,
      table_rows,
      first.data(),
      positions.data());
  const int64_t size = table_rows * dim;
  std::array<float*, 2> out;
  std::array<OutArray, 2> arrays{
      new_float_array(size, &out[0]), new_float_array(size, &out[1])};
  for (int64_t e = 0; e < size; ++e) {
    const ff v = pair_scatter_add_output<ff>(
        g_hi.data(),
        g_layout,
        g_lo.data(),
        g_layout,
        static_cast<const int64_t*>(first.data()),
        static_cast<const int64_t*>(positions.data()),
        dim,
        e);
    out[0][e] = v.hi;
    out[1][e] = v.lo;
  }
  return as_tuple(arrays);
}

// Metal's PairLayerNormVJP on the CPU, one row at a time: x and g pairs of
// rows of `dim`, row-major, and the weight (empty: none); returns (dx_hi,
// dx_lo, gx_hi, gx_lo) with the float-pair arithmetic of the Metal kernel.
nb::tuple metal_pair_layer_norm_vjp(
    F x_hi,
    F x_lo,
    F g_hi,
    F g_lo,
    F weight,
    int64_t dim,
    double eps) {
  const int64_t size = static_cast<int64_t>(x_hi.shape(0));
  if (dim <= 0 || size % dim != 0 || x_lo.shape(0) != x_hi.shape(0) ||
      g_hi.shape(0) != x_hi.shape(0) || g_lo.shape(0) != x_hi.shape(0) ||
      (weight.shape(0) != 0 && static_cast<int64_t>(weight.shape(0)) != dim))
    throw std::invalid_argument(
        "metal_pair_layer_norm_vjp: pass x and g pairs of rows of dim entries "
        "and a weight of dim entries (or empty)");
  std::array<float*, 4> out;
  std::array<OutArray, 4> arrays{
      new_float_array(size, &out[0]),
      new_float_array(size, &out[1]),
      new_float_array(size, &out[2]),
      new_float_array(size, &out[3])};
  const ff tag = dd_from_double(eps);
  for (int64_t base = 0; base < size; base += dim) {
    pair_layer_norm_vjp_row(
        dim,
        tag,
        weight.shape(0) != 0,
        [&](int64_t i) {
          return r_from_pair(tag, x_hi.data()[base + i], x_lo.data()[base + i]);
        },
        [&](int64_t i) {
          return r_from_pair(tag, g_hi.data()[base + i], g_lo.data()[base + i]);
        },
        [&](int64_t i) { return r_from_float(tag, weight.data()[i]); },
        [&](int64_t i, ff v) {
          out[2][base + i] = v.hi;
          out[3][base + i] = v.lo;
        },
        [&](int64_t i, ff v) {
          out[0][base + i] = v.hi;
          out[1][base + i] = v.lo;
        });
  }
  return as_tuple(arrays);
}

// Metal's PairCrossEntropy on the CPU, the kernels' three steps in order:
// logits (rows, classes) row-major as pairs, int32 targets and float32
// weights (rows); the forward returns the mean loss (one-element hi, lo), the
// gradient (gradient = True, the scalar cotangent c_hi + c_lo) the (rows,
// classes) pair, in the float-pair arithmetic of the Metal kernels.
nb::tuple metal_pair_cross_entropy(
    F l_hi,
    F l_lo,
    InArray<int32_t> targets,
    F weights,
    int64_t classes,
    bool gradient,
    float c_hi,
    float c_lo) {
  const int64_t rows = static_cast<int64_t>(targets.shape(0));
  if (classes <= 0 || static_cast<int64_t>(l_hi.shape(0)) != rows * classes ||
      l_lo.shape(0) != l_hi.shape(0) || weights.shape(0) != targets.shape(0))
    throw std::invalid_argument(
        "metal_pair_cross_entropy: pass logits of len(targets) * classes "
        "entries and one weight per target");
  auto logit_at = [&](int64_t i, int64_t j) {
    return r_from_pair(
        ff{}, l_hi.data()[i * classes + j], l_lo.data()[i * classes + j]);
  };
  std::vector<ff> log_sum_exp(rows);
  for (int64_t i = 0; i < rows; ++i)
    log_sum_exp[i] =
        pair_log_sum_exp(classes, [&](int64_t j) { return logit_at(i, j); });
  ff loss{0.0f, 0.0f};
  const ff total = cross_entropy_total<ff>(
      rows,
      classes,
      [&](int64_t i) { return weights.data()[i]; },
      [&](int64_t i) { return static_cast<int64_t>(targets.data()[i]); },
      logit_at,
      [&](int64_t i) { return log_sum_exp[i]; },
      gradient ? nullptr : &loss);
  const int64_t size = gradient ? rows * classes : 1;
  std::array<float*, 2> out;
  std::array<OutArray, 2> arrays{
      new_float_array(size, &out[0]), new_float_array(size, &out[1])};
  if (!gradient) {
    out[0][0] = loss.hi;
    out[1][0] = loss.lo;
    return as_tuple(arrays);
  }
  const ff c = r_from_pair(ff{}, c_hi, c_lo);
  for (int64_t e = 0; e < size; ++e) {
    const int64_t i = e / classes, j = e - i * classes;
    const ff v = cross_entropy_grad_output<ff>(
        c,
        total,
        weights.data()[i],
        targets.data()[i],
        classes,
        j,
        logit_at(i, j),
        log_sum_exp[i]);
    out[0][e] = v.hi;
    out[1][e] = v.lo;
  }
  return as_tuple(arrays);
}

} // namespace
} // namespace mlx_precise

void init_testing(nb::module_& parent) {
  using namespace mlx_precise;
  nb::module_ m = parent.def_submodule(
      "testing",
      "Elementwise hooks into kernels/dd.h over 1-D float32 numpy arrays (tests only).");

  m.def(
      "poison_device_memory",
      &set_poison_device_memory,
      "on"_a,
      "Fill mlx-precise's own GPU allocations (CUDA) with all-ones bytes (NaN) "
      "from now on, or stop: an output a kernel fails to write shows.");

  // float32 only: an implicit cast of float64 test data would hide what is
  // tested.
  m.def(
      "two_sum",
      [](F a, F b) {
        return as_tuple(
            map_elementwise<float, 2, 2>({a, b}, [](const auto& in, auto& out) {
              write_pair(two_sum(in[0], in[1]), out.data());
            }));
      },
      "a"_a.noconvert(),
      "b"_a.noconvert(),
      "TwoSum: (hi, lo) with hi + lo == a + b exactly.");

  m.def(
      "fast_two_sum",
      [](F a, F b) {
        return as_tuple(
            map_elementwise<float, 2, 2>({a, b}, [](const auto& in, auto& out) {
              write_pair(fast_two_sum(in[0], in[1]), out.data());
            }));
      },
      "a"_a.noconvert(),
      "b"_a.noconvert(),
      "FastTwoSum (needs |a| >= |b|).");

  m.def(
      "two_prod",
      [](F a, F b) {
        return as_tuple(
            map_elementwise<float, 2, 2>({a, b}, [](const auto& in, auto& out) {
              write_pair(two_prod(in[0], in[1]), out.data());
            }));
      },
      "a"_a.noconvert(),
      "b"_a.noconvert(),
      "TwoProd: (hi, lo) with hi + lo == a * b exactly.");

  m.def(
      "dd_add",
      [](F xh, F xl, F yh, F yl) {
        return as_tuple(
            map_elementwise<float, 4, 2>(
                {xh, xl, yh, yl}, [](const auto& in, auto& out) {
                  write_pair(
                      dd_add(ff{in[0], in[1]}, ff{in[2], in[3]}), out.data());
                }));
      },
      "xh"_a.noconvert(),
      "xl"_a.noconvert(),
      "yh"_a.noconvert(),
      "yl"_a.noconvert(),
      "AccurateDWPlusDW: x + y.");

  m.def(
      "dd_sub",
      [](F xh, F xl, F yh, F yl) {
        return as_tuple(
            map_elementwise<float, 4, 2>(
                {xh, xl, yh, yl}, [](const auto& in, auto& out) {
                  write_pair(
                      dd_sub(ff{in[0], in[1]}, ff{in[2], in[3]}), out.data());
                }));
      },
      "xh"_a.noconvert(),
      "xl"_a.noconvert(),
      "yh"_a.noconvert(),
      "yl"_a.noconvert(),
      "x - y (AccurateDWPlusDW of x and -y).");

  m.def(
      "dd_function",
      [](const std::string& name, F xh, F xl) {
        // log is no pair op of its own (the cross-entropy's logsumexp).
        if (name == "log")
          return as_tuple(
              map_elementwise<float, 2, 2>(
                  {xh, xl}, [](const auto& in, auto& out) {
                    write_pair(dd_log(ff{in[0], in[1]}), out.data());
                  }));
        // The derivatives: the binary *Grad ops with the cotangent 1.
        const PairOp op = name == "exp" ? PairOp::Exp
            : name == "sin"             ? PairOp::Sin
            : name == "tanh"            ? PairOp::Tanh
            : name == "gelu"            ? PairOp::Gelu
            : name == "sin_grad"        ? PairOp::SinGrad
            : name == "tanh_grad"       ? PairOp::TanhGrad
            : name == "gelu_grad"
            ? PairOp::GeluGrad
            : throw std::invalid_argument(
                  "dd_function: pass \"exp\", \"log\", \"sin\", \"tanh\", \"gelu\" or "
                  "the derivative \"sin_grad\", \"tanh_grad\", \"gelu_grad\"");
        return as_tuple(
            map_elementwise<float, 2, 2>(
                {xh, xl}, [op](const auto& in, auto& out) {
                  const ff x{in[0], in[1]};
                  write_pair(
                      pair_op_arity(op) == 1
                          ? pair_unary_dd(op, x)
                          : pair_binary_dd(op, x, ff{1.0f, 0.0f}),
                      out.data());
                }));
      },
      "name"_a,
      "xh"_a.noconvert(),
      "xl"_a.noconvert(),
      "exp / log / sin / tanh / gelu of the pair x, or the derivative of sin / tanh / "
      "gelu, in double-word arithmetic (kernels/pair_math.h).");

  m.def(
      "dd_mul",
      [](F xh, F xl, F yh, F yl) {
        return as_tuple(
            map_elementwise<float, 4, 2>(
                {xh, xl, yh, yl}, [](const auto& in, auto& out) {
                  write_pair(
                      dd_mul(ff{in[0], in[1]}, ff{in[2], in[3]}), out.data());
                }));
      },
      "xh"_a.noconvert(),
      "xl"_a.noconvert(),
      "yh"_a.noconvert(),
      "yl"_a.noconvert(),
      "DWTimesDW3: x * y.");

  m.def(
      "dd_mul_f",
      [](F xh, F xl, F y) {
        return as_tuple(
            map_elementwise<float, 3, 2>(
                {xh, xl, y}, [](const auto& in, auto& out) {
                  write_pair(dd_mul_f(ff{in[0], in[1]}, in[2]), out.data());
                }));
      },
      "xh"_a.noconvert(),
      "xl"_a.noconvert(),
      "y"_a.noconvert(),
      "DWTimesFP3: x * y, y a float.");

  m.def(
      "dd_round",
      [](F hi, F lo) {
        return map_elementwise<float, 2, 1>(
            {hi, lo}, [](const auto& in, auto& out) {
              out[0] = dd_round(ff{in[0], in[1]});
            })[0];
      },
      "hi"_a.noconvert(),
      "lo"_a.noconvert(),
      "The float32 nearest to hi + lo.");

  m.def(
      "dd_from_double",
      [](InArray<double> d) {
        return as_tuple(
            map_elementwise<double, 1, 2>({d}, [](const auto& in, auto& out) {
              write_pair(dd_from_double(in[0]), out.data());
            }));
      },
      "d"_a.noconvert(),
      "A float64 array as normalised float32 pairs (hi, lo).");

  m.def(
      "cdd_mul",
      [](F a_re_h,
         F a_re_l,
         F a_im_h,
         F a_im_l,
         F b_re_h,
         F b_re_l,
         F b_im_h,
         F b_im_l) {
        return as_tuple(
            map_elementwise<float, 8, 4>(
                {a_re_h,
                 a_re_l,
                 a_im_h,
                 a_im_l,
                 b_re_h,
                 b_re_l,
                 b_im_h,
                 b_im_l},
                [](const auto& in, auto& out) {
                  cff a{ff{in[0], in[1]}, ff{in[2], in[3]}};
                  cff b{ff{in[4], in[5]}, ff{in[6], in[7]}};
                  cff c = cdd_mul(a, b);
                  write_pair(c.re, out.data());
                  write_pair(c.im, out.data() + 2);
                }));
      },
      "a_re_h"_a.noconvert(),
      "a_re_l"_a.noconvert(),
      "a_im_h"_a.noconvert(),
      "a_im_l"_a.noconvert(),
      "b_re_h"_a.noconvert(),
      "b_re_l"_a.noconvert(),
      "b_im_h"_a.noconvert(),
      "b_im_l"_a.noconvert(),
      "Complex double-word product: (re_h, re_l, im_h, im_l).");

  m.def(
      "set_rfft_conv_certification",
      [](bool enabled) { cpu::set_rfft_conv_certification(enabled); },
      "enabled"_a,
      "Benchmarks only: with False, the CPU's extended/dd rfft_conv rounds the "
      "float64 engine's values without certifying them (not correctly rounded), "
      "so that the cost of certification can be timed side by side. "
      "Returns nothing; pass True to restore the default.");

  m.def(
      "recompute_counts",
      []() {
        nb::dict counts;
        const std::pair<const char*, cpu::CertifiedOp> ops[] = {
            {"addmm", cpu::CertifiedOp::Addmm},
            {"rfft_conv", cpu::CertifiedOp::RFFTConv}};
        for (const auto& [name, op] : ops) {
          const cpu::RecomputeCount& c = cpu::recompute_count(op);
          counts[name] = nb::make_tuple(c.recomputed.load(), c.outputs.load());
        }
        return counts;
      },
      "The CPU's certified extended / dd outputs since the last "
      "reset_recompute_counts(): {'addmm': (recomputed, outputs), "
      "'rfft_conv': (recomputed, outputs)}, where recomputed counts the "
      "outputs that did not certify and were recomputed exactly (addmm and "
      "linear; rfft_conv forward and gradients). CUDA and Metal are not "
      "counted.");

  m.def(
      "reset_recompute_counts",
      []() {
        for (auto& c : cpu::recompute_counts()) {
          c.outputs.store(0);
          c.recomputed.store(0);
        }
      },
      "Sets every count of recompute_counts() to zero.");

  m.def(
      "gpu_transform",
      [](F re,
         F im,
         int64_t fft_size,
         const std::string& precision,
         bool inverse,
         const std::string& method,
         int64_t length) {
        if (precision == "float32")
          return gpu_transform<float>(
              re, im, fft_size, inverse, method, length);
        if (precision == "extended")
          return gpu_transform<double>(
              re, im, fft_size, inverse, method, length);
        if (precision == "dd")
          return gpu_transform<ff>(re, im, fft_size, inverse, method, length);
        throw std::invalid_argument(
            "precision must be 'float32', 'extended' or 'dd'");
      },
      "re"_a.noconvert(),
      "im"_a.noconvert(),
      "fft_size"_a,
      "precision"_a,
      "inverse"_a,
      "method"_a,
      "length"_a = -1,
      "The GPU kernels' complex FFT of length fft_size / 2 run on the CPU by one thread: "
      "'stages' (one stage at a time), 'wide' or 'narrow' register passes, or 'contiguous' "
      "(wide, the forward pass 0 reading the real row as the CUDA kernels' ContiguousRow), or "
      "'interleaved' ('contiguous' on an InterleavedRow) "
      "(float32: float, extended: double, dd: the float-pair kernels of Metal). The forward "
      "transform reads the real row (re[0], im[0], re[1], ...) cut to `length` entries (-1: "
      "all), zero-padded; returns (re, im) as float64.");

  m.def(
      "gpu_conv_row_layouts",
      &gpu_conv_row_layouts,
      "a"_a.noconvert(),
      "b"_a.noconvert(),
      "rows"_a,
      "fft_size"_a,
      "conv_rows<float>'s steps (outputs y[0..L) of each a row's size-fft_size "
      "cyclic convolution with b) on the CPU with the rows as (re, im) arrays "
      "and interleaved: returns (outputs, outputs).");
  m.def(
      "gpu_split_conv",
      &gpu_split_conv,
      "a"_a,
      "b"_a,
      "bias"_a,
      "period"_a,
      "variant"_a,
      "bound_scale"_a = 1.0,
      "deep"_a = false,
      "The GPU's split rows (CUDA split_conv_rows; deep: deep_split_conv_rows) "
      "of one row on the CPU, certified and recomputed: returns (y, open, "
      "values, bounds).");
  m.def(
      "gpu_split_gradients",
      &gpu_split_gradients,
      "g"_a,
      "k"_a,
      "u"_a,
      "bias"_a,
      "rows"_a,
      "period"_a,
      "bound_scale"_a = 1.0,
      "The GPU's split gradient rows (CUDA split_gradient_rows) of one target "
      "(`rows` rows of g and u sharing the kernel row k) on the CPU, "
      "certified and recomputed: returns (grad u, grad k, open u, open k, "
      "values u, bounds u, values k, bounds k).");
  m.def(
      "split_rows_apply",
      &split_rows_apply,
      "variant"_a,
      "period"_a,
      "a_len"_a,
      "b_len"_a,
      "kernel_len"_a = 0,
      "Whether the GPU takes split rows for this geometry, and its N.");
  m.def(
      "gpu_outputs",
      &gpu_outputs,
      "re"_a.noconvert(),
      "im"_a.noconvert(),
      "a_len"_a,
      "b_len"_a,
      "out_len"_a,
      "period"_a,
      "fold"_a,
      "out_reversed"_a,
      "out_origin"_a,
      "threads"_a,
      "The CUDA kernels' output step on the CPU: the outputs of the cyclic convolution x "
      "(x[2m] = re[m], x[2m + 1] = im[m], length 2 len(re)) for the given ConvShape fields, "
      "as for_each_output writes them with `threads` threads and as gather_output reads "
      "them; returns (by_threads, by_gather, writes per output, outputs_are_entries).");

  m.def(
      "metal_certified_addmm",
      &metal_certified_addmm,
      "a"_a.noconvert(),
      "b"_a.noconvert(),
      "c"_a.noconvert(),
      "m"_a,
      "k"_a,
      "n"_a,
      "alpha"_a,
      "beta"_a,
      "err_scale"_a = 1.0f,
      "Metal's certified float-pair addmm (kernels/addmm_pair.h) run on the CPU with the "
      "kernels' own code: alpha a @ b [+ beta c] for row-major flattened a (m, k), b (k, n), "
      "c (m, n) or empty; err_scale multiplies the bound (1 on Metal). Returns (y, open), "
      "open 1 where the output did not certify and was recomputed exactly.");

  m.def(
      "metal_certified_layer_norm",
      &metal_certified_layer_norm,
      "x"_a.noconvert(),
      "weight"_a.noconvert(),
      "bias"_a.noconvert(),
      "dim"_a,
      "eps"_a,
      "err_scale"_a = 1.0f,
      "Metal's certified float-pair layer_norm (kernels/layer_norm_pair.h) run on the CPU "
      "with the kernels' own code: rows of dim entries of x (row-major, flattened), weight "
      "and bias of dim entries or empty; err_scale multiplies the bound (1 on Metal). "
      "Returns (y, open), open 1 where the output did not certify and was rounded exactly.");

  m.def(
      "metal_certified_layer_norm_grad_x",
      &metal_certified_layer_norm_grad_x,
      "x"_a.noconvert(),
      "weight"_a.noconvert(),
      "g"_a.noconvert(),
      "dim"_a,
      "eps"_a,
      "err_scale"_a = 1.0f,
      "Metal's certified float-pair layer_norm grad x (kernels/layer_norm_pair.h) run on "
      "the CPU with the kernels' own code: rows of dim entries of x and the cotangent g "
      "(row-major, flattened), weight of dim entries or empty; err_scale multiplies the "
      "bound (1 on Metal). Returns (dx, open), open 1 where the output did not certify "
      "and was rounded exactly.");

  m.def(
      "metal_certified_layer_norm_grad_weight",
      &metal_certified_layer_norm_grad_weight,
      "x"_a.noconvert(),
      "g"_a.noconvert(),
      "dim"_a,
      "eps"_a,
      "err_scale"_a = 1.0f,
      "Metal's certified float-pair layer_norm grad weight (kernels/layer_norm_pair.h) "
      "run on the CPU with the kernels' own code: the column sums of g n for rows of dim "
      "entries of x and the cotangent g (row-major, flattened); err_scale multiplies the "
      "bound (1 on Metal). Returns (dw, open), open 1 where the column did not certify "
      "and went to the exact stages.");

  m.def(
      "metal_layer_norm_bias_grad",
      &metal_layer_norm_bias_grad,
      "g"_a.noconvert(),
      "dim"_a,
      "Metal's certified layer_norm bias gradient (kernels/layer_norm_pair.h: "
      "pair_bias_grad) on the CPU: the column sums of g (rows, dim), row-major "
      "and flattened.");

  m.def(
      "metal_pair_sum",
      &metal_pair_sum,
      "hi"_a.noconvert(),
      "lo"_a.noconvert(),
      "shape"_a,
      "hi_strides"_a,
      "lo_strides"_a,
      "out_shape"_a,
      "Metal's pair sum (kernels/pair_grad.h in float pairs) on the CPU: the pair "
      "(hi, lo), flat buffers read at shape with the given element strides, summed to "
      "out_shape (aligned right, dims of 1 summed); returns (hi, lo) flat.");

  m.def(
      "metal_pair_scatter_add",
      &metal_pair_scatter_add,
      "g_hi"_a.noconvert(),
      "g_lo"_a.noconvert(),
      "ids"_a.noconvert(),
      "dim"_a,
      "table_rows"_a,
      "Metal's pair take_rows gradient (kernels/pair_grad.h in float pairs) on the "
      "CPU: rows of g (len(ids), dim) added into table_rows rows at ids (others "
      "dropped); returns (hi, lo) flat, (table_rows, dim) row-major.");

  m.def(
      "metal_pair_layer_norm_vjp",
      &metal_pair_layer_norm_vjp,
      "x_hi"_a.noconvert(),
      "x_lo"_a.noconvert(),
      "g_hi"_a.noconvert(),
      "g_lo"_a.noconvert(),
      "weight"_a.noconvert(),
      "dim"_a,
      "eps"_a,
      "Metal's pair layer_norm gradient (kernels/pair_grad.h in float pairs) on the "
      "CPU: rows of dim, row-major, weight empty for none; returns (dx_hi, dx_lo, "
      "gx_hi, gx_lo), gx = g xhat (summed over rows: the weight's gradient).");

  m.def(
      "metal_pair_cross_entropy",
      &metal_pair_cross_entropy,
      "l_hi"_a.noconvert(),
      "l_lo"_a.noconvert(),
      "targets"_a.noconvert(),
      "weights"_a.noconvert(),
      "classes"_a,
      "gradient"_a,
      "c_hi"_a = 1.0f,
      "c_lo"_a = 0.0f,
      "Metal's pair cross-entropy (kernels/pair_grad.h in float pairs, dd_exp and "
      "dd_log) on the CPU: logits (len(targets), classes) row-major as a pair, int32 "
      "targets, float32 weights; returns the mean loss as one-element (hi, lo), or with "
      "gradient=True the logits' gradient for the scalar cotangent c_hi + c_lo.");

  m.def(
      "metal_pair_conv",
      &metal_pair_conv,
      "a_hi"_a.noconvert(),
      "a_lo"_a.noconvert(),
      "b_hi"_a.noconvert(),
      "b_lo"_a.noconvert(),
      "bias"_a.noconvert(),
      "period"_a,
      "variant"_a,
      "kernel_len"_a = 0,
      "Metal's pair rfft_conv rows (pair_kernels.metal, float pairs) on the CPU for one "
      "row: variant 'convolve' (a = u, b = k), 'correlate_input' (a = g, b = k: grad u) or "
      "'correlate_kernel' (a = g, b = u: grad k of kernel_len entries); bias empty or as "
      "long as a; period the n of the circular form, 0 for the causal one. Returns "
      "(hi, lo, kappa), kappa ||a||_2 ||b||_2 bounding the convolution's error.");

  m.def(
      "metal_certified_conv",
      &metal_certified_conv,
      "a"_a.noconvert(),
      "b"_a.noconvert(),
      "bias"_a.noconvert(),
      "period"_a,
      "variant"_a = "convolve",
      "Metal's certified float-pair rfft_conv(a, b, n=period or None, bias) of one row "
      "(bias empty: none; variant 'correlate_input': grad u, a the cotangent), run on the CPU by one thread with the kernels' "
      "own code (kernels/certify_pair.h); returns (y, open) as float32, open 1 where the "
      "output did not certify and was recomputed exactly.");

  m.def(
      "metal_certified_conv_terms",
      &metal_certified_conv_terms,
      "a"_a,
      "b"_a,
      "c"_a,
      "d"_a,
      "period"_a,
      "variant"_a = "convolve",
      "kernel_len"_a = 0,
      "Metal's certified float-pair rows of terms (gradients summed over broadcast rows, "
      "the fused jvp) run on the CPU by one thread with the kernels' own code: "
      "y = sum_i rfft_conv(a_i, b_i, n=period or None) + sum_j c_j * d_j (lists of float32 "
      "rows; variant 'correlate_kernel' with kernel_len: grad k summed over the rows, "
      "a the cotangents, b the inputs); returns (y, open) as float32.");
}
