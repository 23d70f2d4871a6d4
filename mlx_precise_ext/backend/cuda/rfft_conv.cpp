// eval_gpu for RFFTConv and BiasGradient on MLX's CUDA backend: the kernels
// of rfft_conv_kernels.cuh (compiled by jit.cpp) added as nodes of the
// stream's graph through MLX's cu::CommandEncoder, like MLX's own kernels.
#include <algorithm>
#include <initializer_list>
#include <map>
#include <mutex>
#include <optional>

#include <mlx/allocator.h>
#include <mlx/backend/cuda/device.h>
#include <mlx/backend/cuda/utils.h>

#include "backend/common/conv_geometry.h"
#include "backend/common/shapes.h"
#include "backend/cuda/jit.h"
#include "backend/gpu/conv_layout.h"
#include "kernels/rfft_conv_rows.h"
#include "primitives.h"

namespace mlx_precise {

namespace {

using gpu::FFTTables;

// The FFT tables of one transform size on the device, in precision T.
template <class T>
struct DeviceFFT {
  FFTShape shape;
  CUdeviceptr twiddles, split, pairs;
};

template <class T>
const DeviceFFT<T>& device_fft(int device, int64_t fft_size) {
  static std::mutex mutex;
  static std::map<std::pair<int, int64_t>, DeviceFFT<T>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto key = std::make_pair(device, fft_size);
  auto it = cache.find(key);
  if (it != cache.end())
    return it->second;
  const FFTTables<T> t = gpu::make_fft_tables<T>(fft_size);
  DeviceFFT<T> d{
      t.shape,
      cuda::upload_constant(
          t.twiddles.data(), t.twiddles.size() * sizeof(cpx<T>)),
      cuda::upload_constant(t.split.data(), t.split.size() * sizeof(cpx<T>)),
      cuda::upload_constant(
          t.pairs.data(), t.pairs.size() * sizeof(IndexPair))};
  return cache.emplace(key, d).first->second;
}

template <class T>
constexpr Precision precision_of();
template <>
constexpr Precision precision_of<float>() {
  return Precision::Float32;
}
template <>
constexpr Precision precision_of<double>() {
  return Precision::Extended;
}

// A device buffer that lives until the graph that uses it has run.
mx::array scratch(mx::cu::CommandEncoder& encoder, size_t bytes) {
  mx::array buffer(
      {static_cast<int>((bytes + 7) / 8)}, mx::uint64, nullptr, {});
  buffer.set_data(mx::allocator::malloc(buffer.nbytes()));
  encoder.add_temporary(buffer);
  return buffer;
}

template <class P>
P* data_of(mx::array& buffer) {
  return static_cast<P*>(mx::gpu_ptr<void>(buffer));
}

// The encoder orders graph nodes by the buffers registered just before each
// node: every kernel registers what it reads and what it writes.
void register_buffers(
    mx::cu::CommandEncoder& encoder,
    std::initializer_list<const mx::array*> reads,
    std::initializer_list<mx::array*> writes) {
  for (const mx::array* x : reads)
    if (x)
      encoder.set_input_array(*x);
  for (mx::array* x : writes)
    if (x)
      encoder.set_output_array(*x);
}

// The outputs that did not certify (kernels' OpenList) for a launch of
// `outputs` outputs: one bit each (an eighth of a byte per output, and no
// list that can fill up), cleared by a node of its own.
struct OpenOutputs {
  mx::array bits;
  OpenList list;
};

// A grid-stride launch over `items` items: enough blocks of 256 threads to
// fill the device a few times over, no more.
dim3 grid_stride_blocks(int device, int64_t items) {
  const int64_t wanted = (items + 255) / 256;
  const int64_t most = 4 * int64_t{cuda::device_info(device).multiprocessors};
  return dim3(
      static_cast<unsigned>(
          std::max<int64_t>(1, std::min<int64_t>(wanted, most))));
}

OpenOutputs
open_outputs(mx::cu::CommandEncoder& encoder, int device, int64_t outputs) {
  const int64_t words = std::max<int64_t>((outputs + 31) / 32, 1);
  OpenOutputs o{scratch(encoder, words * sizeof(unsigned)), {}};
  o.list = OpenList{data_of<unsigned>(o.bits), words};
  register_buffers(encoder, {}, {&o.bits});
  encoder.add_kernel_node_ex(
      cuda::get_kernel(device, Precision::Extended, "clear_open_bits", false),
      grid_stride_blocks(device, words),
      dim3(256),
      {},
      0u,
      o.list.bits,
      o.list.words);
  return o;
}

// Step 3 of kernels/certify.h: the marked outputs, recomputed (a warp per
// output, the bitmap read 32 words per warp at a time).
void recompute_open(
    mx::cu::CommandEncoder& encoder,
    int device,
    ConvShape shape, // copies: the encoder takes the arguments' addresses
    RowIndex ix,
    const mx::array& a,
    const mx::array& b,
    const mx::array* bias,
    mx::array& out,
    OpenOutputs& open,
    bool one_term_per_row) {
  register_buffers(encoder, {&a, &b, bias, &open.bits}, {&out});
  encoder.add_kernel_node_ex(
      cuda::get_kernel(device, Precision::Extended, "recompute_open", false),
      grid_stride_blocks(device, (open.list.words + 31) / 32 * 32),
      dim3(256),
      {},
      0u,
      mx::gpu_ptr<float>(a),
      mx::gpu_ptr<float>(b),
      bias ? mx::gpu_ptr<float>(*bias) : nullptr,
      mx::gpu_ptr<float>(out),
      ix,
      shape,
      open.list,
      static_cast<int>(one_term_per_row));
}

// One launch shape: the row storage (shared or workspace), block size and
// the blocks that fit at once.
struct RowLaunch {
  CUfunction kernel;
  bool shared;
  int threads;
  size_t row_bytes; // per block
  int resident;
};

template <class T>
RowLaunch
row_launch(int device, const char* name, int64_t n_half, int buffers) {
  RowLaunch l{};
  l.row_bytes = static_cast<size_t>(buffers) * 2 * n_half * sizeof(T);
  CUfunction in_shared =
      cuda::get_kernel(device, precision_of<T>(), name, true);
  l.shared =
      l.row_bytes <= static_cast<size_t>(cuda::max_dynamic_shared(in_shared));
  l.kernel = l.shared
      ? in_shared
      : cuda::get_kernel(device, precision_of<T>(), name, false);
  // About 4 butterflies of each stage per thread, whole warps.
  const int cap = std::min(1024, cuda::max_block_threads(l.kernel)) / 32 * 32;
  l.threads = static_cast<int>(std::clamp<int64_t>(n_half / 8, 32, cap));
  l.resident = cuda::resident_blocks(
      device, l.kernel, l.threads, l.shared ? l.row_bytes : 0);
  return l;
}

// Pointers every row kernel takes, and its FFT tables.
template <class T>
struct RowOperands {
  const float* a;
  const float* b;
  const float* bias;
  float* out;
  const cpx<T>* twiddles;
  const cpx<T>* split;
  const IndexPair* pairs;
  FFTShape fft;

  RowOperands(
      const DeviceFFT<T>& f,
      const mx::array& a_,
      const mx::array& b_,
      const mx::array* bias_,
      mx::array& out_)
      : a(mx::gpu_ptr<float>(a_)),
        b(mx::gpu_ptr<float>(b_)),
        bias(bias_ ? mx::gpu_ptr<float>(*bias_) : nullptr),
        out(mx::gpu_ptr<float>(out_)),
        twiddles(reinterpret_cast<const cpx<T>*>(f.twiddles)),
        split(reinterpret_cast<const cpx<T>*>(f.split)),
        pairs(reinterpret_cast<const IndexPair*>(f.pairs)),
        fft(f.shape) {}
};

// Certified precisions: the list of outputs to recompute, else none.
template <class T>
std::optional<OpenOutputs>
maybe_open_outputs(mx::cu::CommandEncoder& encoder, int device, int64_t n) {
  if (!Certified<T>::value)
    return std::nullopt;
  return open_outputs(encoder, device, n);
}

template <class T>
void launch_shared_kernel(
    mx::cu::CommandEncoder& encoder,
    int device,
    const ConvGeometry& geo,
    const mx::Shape& full,
    const mx::array& a,
    const mx::array& b,
    const mx::array* bias,
    mx::array& out) {
  const DeviceFFT<T>& fft = device_fft<T>(device, geo.fft_size);
  RowIndex ix = gpu::make_row_index(full, b.shape(), {&a, &b, bias, &out});

  // Kernel spectra (and norms, when certifying), once per kernel row.
  RowLaunch spec = row_launch<T>(device, "kernel_spectra", fft.shape.n_half, 1);
  const int64_t spectrum_entries =
      2 * static_cast<int64_t>(fft.shape.num_pairs);
  mx::array spectra_buffer =
      scratch(encoder, ix.outer_count * spectrum_entries * sizeof(cpx<T>));
  cpx<T>* spectra = data_of<cpx<T>>(spectra_buffer);
  mx::array norms_buffer = scratch(encoder, ix.outer_count * sizeof(double));
  double* b_norms = data_of<double>(norms_buffer);
  RowLaunch rows = row_launch<T>(device, "conv_rows", fft.shape.n_half, 1);
  // Splits of each kernel row's batch: enough work items for ~4 waves.
  const int64_t splits = std::clamp<int64_t>(
      (4 * rows.resident + ix.outer_count - 1) / ix.outer_count,
      1,
      ix.inner_count);
  ConvShape shape = gpu::conv_shape(geo, bias != nullptr, splits);

  RowOperands<T> op(fft, a, b, bias, out);

  const int64_t spec_grid = spec.shared
      ? ix.outer_count
      : std::min<int64_t>(ix.outer_count, spec.resident);
  std::optional<mx::array> spec_buffer;
  if (!spec.shared)
    spec_buffer = scratch(encoder, spec_grid * spec.row_bytes);
  T* spec_ws = spec_buffer ? data_of<T>(*spec_buffer) : nullptr;
  register_buffers(
      encoder,
      {&b},
      {&spectra_buffer, &norms_buffer, spec_buffer ? &*spec_buffer : nullptr});
  encoder.add_kernel_node_ex(
      spec.kernel,
      dim3(static_cast<unsigned>(spec_grid)),
      dim3(spec.threads),
      {},
      static_cast<uint32_t>(spec.shared ? spec.row_bytes : 0),
      op.b,
      ix,
      shape,
      op.fft,
      op.twiddles,
      op.split,
      op.pairs,
      spectra,
      b_norms,
      spec_ws);

  std::optional<OpenOutputs> open =
      maybe_open_outputs<T>(encoder, device, out.size());
  const int64_t items = ix.outer_count * splits;
  const int64_t grid =
      rows.shared ? items : std::min<int64_t>(items, rows.resident);
  std::optional<mx::array> rows_buffer;
  if (!rows.shared)
    rows_buffer = scratch(encoder, grid * rows.row_bytes);
  T* rows_ws = rows_buffer ? data_of<T>(*rows_buffer) : nullptr;
  const cpx<T>* spectra_in = spectra;
  const double* b_norms_in = b_norms;
  register_buffers(
      encoder,
      {&a, &b, bias, &spectra_buffer, &norms_buffer},
      {&out,
       rows_buffer ? &*rows_buffer : nullptr,
       open ? &open->bits : nullptr});
  encoder.add_kernel_node_ex(
      rows.kernel,
      dim3(static_cast<unsigned>(grid)),
      dim3(rows.threads),
      {},
      static_cast<uint32_t>(rows.shared ? rows.row_bytes : 0),
      op.a,
      op.b,
      op.bias,
      op.out,
      ix,
      shape,
      op.fft,
      op.twiddles,
      op.split,
      op.pairs,
      spectra_in,
      b_norms_in,
      open ? open->list : OpenList{},
      rows_ws);
  if (open)
    recompute_open(encoder, device, shape, ix, a, b, bias, out, *open, true);
}

template <class T>
void launch_reduce(
    mx::cu::CommandEncoder& encoder,
    int device,
    const ConvGeometry& geo,
    const mx::Shape& full,
    const mx::array& a,
    const mx::array& b,
    const mx::array* bias,
    mx::array& out) {
  const DeviceFFT<T>& fft = device_fft<T>(device, geo.fft_size);
  RowIndex ix = gpu::make_row_index(full, out.shape(), {&a, &b, bias, &out});
  RowLaunch l = row_launch<T>(device, "reduce_rows", fft.shape.n_half, 2);
  ConvShape shape = gpu::conv_shape(geo, bias != nullptr, 1);
  const int64_t grid = std::min<int64_t>(ix.outer_count, l.resident);
  const int64_t acc_entries = 2 * static_cast<int64_t>(fft.shape.num_pairs);
  mx::array acc_buffer = scratch(encoder, grid * acc_entries * sizeof(cpx<T>));
  cpx<T>* acc = data_of<cpx<T>>(acc_buffer);
  std::optional<mx::array> ws_buffer;
  if (!l.shared)
    ws_buffer = scratch(encoder, grid * l.row_bytes);
  T* ws = ws_buffer ? data_of<T>(*ws_buffer) : nullptr;
  std::optional<OpenOutputs> open =
      maybe_open_outputs<T>(encoder, device, out.size());
  register_buffers(
      encoder,
      {&a, &b, bias},
      {&out,
       &acc_buffer,
       ws_buffer ? &*ws_buffer : nullptr,
       open ? &open->bits : nullptr});
  RowOperands<T> op(fft, a, b, bias, out);
  encoder.add_kernel_node_ex(
      l.kernel,
      dim3(static_cast<unsigned>(grid)),
      dim3(l.threads),
      {},
      static_cast<uint32_t>(l.shared ? l.row_bytes : 0),
      op.a,
      op.b,
      op.bias,
      op.out,
      ix,
      shape,
      op.fft,
      op.twiddles,
      op.split,
      op.pairs,
      acc,
      open ? open->list : OpenList{},
      ws);
  if (open)
    recompute_open(encoder, device, shape, ix, a, b, bias, out, *open, false);
}

template <class T>
void convolve(
    mx::cu::CommandEncoder& encoder,
    int device,
    ConvVariant variant,
    int64_t period,
    const std::vector<mx::array>& in,
    bool has_bias,
    mx::array& out) {
  const gpu::ConvLaunch c =
      gpu::conv_launch(variant, period, in, has_bias, out);
  if (c.one_to_one) {
    launch_shared_kernel<T>(
        encoder, device, c.geo, c.full, c.a, c.b, c.bias, out);
  } else {
    launch_reduce<T>(encoder, device, c.geo, c.full, c.a, c.b, c.bias, out);
  }
}

template <class T>
void bias_gradient(
    mx::cu::CommandEncoder& encoder,
    int device,
    const mx::array& g,
    const mx::array& u,
    mx::array& out) {
  const mx::Shape full = batch_shape(g.shape());
  RowIndex ix = gpu::make_row_index(full, out.shape(), {&g, &u, nullptr, &out});
  int64_t len = g.shape().back();
  int sum_over_time = out.shape().back() == 1;
  const int64_t threads = 256;
  const int64_t total = ix.outer_count * (sum_over_time ? 1 : len);
  CUfunction kernel =
      cuda::get_kernel(device, precision_of<T>(), "product_sum", false);
  const float* g_ptr = mx::gpu_ptr<float>(g);
  const float* u_ptr = mx::gpu_ptr<float>(u);
  float* out_ptr = mx::gpu_ptr<float>(out);
  register_buffers(encoder, {&g, &u}, {&out});
  encoder.add_kernel_node_ex(
      kernel,
      dim3(static_cast<unsigned>((total + threads - 1) / threads)),
      dim3(threads),
      {},
      0u,
      g_ptr,
      u_ptr,
      out_ptr,
      ix,
      len,
      sum_over_time);
}

// dd runs the double engine with certification, as on the CPU: extended and
// dd give the same, correctly rounded bits.
template <class Fn>
void with_working_type(Precision p, Fn fn) {
  if (p == Precision::Float32)
    return fn(float{});
  return fn(double{});
}

// The stream's encoder, with the output allocated as MLX's own eval_gpu does.
mx::cu::CommandEncoder& prepare(mx::Stream s, mx::array& out, int& device) {
  auto& dev = mx::cu::device(s.device);
  dev.make_current();
  device = dev.cuda_device();
  out.set_data(mx::allocator::malloc(out.nbytes()));
  return mx::cu::get_command_encoder(s);
}

} // namespace

void RFFTConv::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  int device = 0;
  auto& encoder = prepare(stream(), out, device);
  with_working_type(precision_, [&](auto tag) {
    convolve<decltype(tag)>(
        encoder, device, variant_, period_, inputs, has_bias_, out);
  });
}

void BiasGradient::eval_gpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  int device = 0;
  auto& encoder = prepare(stream(), out, device);
  with_working_type(precision_, [&](auto tag) {
    bias_gradient<decltype(tag)>(encoder, device, inputs[0], inputs[1], out);
  });
}

} // namespace mlx_precise
