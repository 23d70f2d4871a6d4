// eval_gpu for RFFTConv and BiasGradient on MLX's Metal backend, the twin of
// backend/cuda/rfft_conv.cpp: the kernels of rfft_conv_kernels.metal (one
// source with the shared kernel headers, embedded at build time and compiled
// by MLX's Metal device on first use) encoded on the stream's command encoder.
// Metal has no float64: "extended" runs the dd kernels (docs/design.md).
#include <algorithm>
#include <functional>
#include <map>
#include <mutex>
#include <optional>

#include <mlx/allocator.h>
#include <mlx/backend/metal/device.h>

#include "backend/common/conv_geometry.h"
#include "backend/common/shapes.h"
#include "backend/gpu/conv_layout.h"
#include "backend/metal/kernel_sources.h"
#include "primitives.h"

namespace mlx_precise {

namespace {

// Upper bound on threadgroups for the launches whose workspace has one slot
// per threadgroup (Metal has no occupancy query; this keeps every GPU busy).
constexpr int64_t kMaxSlotGroups = 1024;

// Buffer indices of rfft_conv_kernels.metal.
enum Slot : int {
  kSlotA = 0,
  kSlotB,
  kSlotBias,
  kSlotOut,
  kSlotRowIndex,
  kSlotConvShape,
  kSlotFFTShape,
  kSlotTwiddles,
  kSlotSplit,
  kSlotPairs,
  kSlotSpectra,
  kSlotWorkspace,
  kSlotLength,
  kSlotSumOverTime,
  kSlotSumOperands,
  kSlotSumOperand0 // ConvolveSum's operand k at kSlotSumOperand0 + k
};

template <class T>
struct MetalFFT {
  FFTShape shape;
  MTL::Buffer* twiddles;
  MTL::Buffer* split;
  MTL::Buffer* pairs;
};

template <class T>
const MetalFFT<T>& metal_fft(mx::metal::Device& d, int64_t fft_size) {
  static std::mutex mutex;
  static std::map<int64_t, MetalFFT<T>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(fft_size);
  if (it != cache.end())
    return it->second;
  const gpu::FFTTables<T> t = gpu::make_fft_tables<T>(fft_size);
  auto upload = [&](const void* data, size_t bytes) {
    return d.mtl_device()->newBuffer(
        data, std::max<size_t>(bytes, 1), MTL::ResourceStorageModeShared);
  };
  MetalFFT<T> f{
      t.shape,
      upload(t.twiddles.data(), t.twiddles.size() * sizeof(cpx<T>)),
      upload(t.split.data(), t.split.size() * sizeof(cpx<T>)),
      upload(t.pairs.data(), t.pairs.size() * sizeof(IndexPair))};
  return cache.emplace(fft_size, f).first->second;
}

template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "float32" : "dd";
}

MTL::ComputePipelineState* kernel(
    mx::metal::Device& d,
    const std::string& name) {
  MTL::Library* lib = d.get_library("mlx_precise_rfft_conv", [] {
    return std::string(metal::rfft_conv_kernels());
  });
  return d.get_kernel(name, lib);
}

mx::array scratch(mx::metal::CommandEncoder& enc, size_t bytes) {
  mx::array buffer(
      {static_cast<int>((bytes + 7) / 8)}, mx::uint64, nullptr, {});
  buffer.set_data(mx::allocator::malloc(buffer.nbytes()));
  enc.add_temporary(buffer);
  return buffer;
}

struct GroupLaunch {
  MTL::ComputePipelineState* pipeline;
  bool in_group_memory;
  size_t row_bytes;
  int threads;
};

template <class T>
GroupLaunch group_launch(
    mx::metal::Device& d,
    const char* name,
    int64_t n_half,
    int buffers) {
  GroupLaunch l{};
  l.row_bytes = static_cast<size_t>(buffers) * 2 * n_half * sizeof(T);
  l.in_group_memory =
      l.row_bytes <= d.mtl_device()->maxThreadgroupMemoryLength();
  l.pipeline = kernel(
      d,
      std::string(name) + "_" + type_name<T>() +
          (l.in_group_memory ? "_group" : "_device"));
  const int cap = static_cast<int>(std::min<NS::UInteger>(
                      1024, l.pipeline->maxTotalThreadsPerThreadgroup())) /
      32 * 32;
  l.threads = static_cast<int>(std::clamp<int64_t>(n_half / 8, 32, cap));
  return l;
}

// Binds the common arguments of a row kernel, then those bind_more() binds,
// and dispatches `groups`.
template <class T>
void dispatch_rows(
    mx::metal::CommandEncoder& enc,
    const GroupLaunch& l,
    int64_t groups,
    const MetalFFT<T>& fft,
    const mx::array& a,
    const mx::array& b,
    const mx::array* bias,
    mx::array& out,
    const mx::array& spectra,
    std::optional<mx::array>& workspace,
    const RowIndex& ix,
    const ConvShape& shape,
    const std::function<void()>& bind_more = [] {}) {
  enc.set_compute_pipeline_state(l.pipeline);
  enc.set_input_array(a, kSlotA);
  enc.set_input_array(b, kSlotB);
  // Unused slots (no bias, rows in threadgroup memory) are bound to an input
  // the kernel never reads through them.
  enc.set_input_array(bias ? *bias : a, kSlotBias);
  enc.set_output_array(out, kSlotOut);
  enc.set_bytes(ix, kSlotRowIndex);
  enc.set_bytes(shape, kSlotConvShape);
  enc.set_bytes(fft.shape, kSlotFFTShape);
  enc.set_buffer(fft.twiddles, kSlotTwiddles);
  enc.set_buffer(fft.split, kSlotSplit);
  enc.set_buffer(fft.pairs, kSlotPairs);
  enc.set_output_array(const_cast<mx::array&>(spectra), kSlotSpectra);
  if (workspace)
    enc.set_output_array(*workspace, kSlotWorkspace);
  else
    enc.set_input_array(a, kSlotWorkspace);
  if (l.in_group_memory)
    enc.set_threadgroup_memory_length(l.row_bytes, 0);
  bind_more();
  enc.dispatch_threadgroups(
      MTL::Size(groups, 1, 1), MTL::Size(l.threads, 1, 1));
}

// ConvolveSum (the jvp): sum_rows over the output rows, each summing its
// terms as reduce_rows sums a target's.
template <class T>
void convolve_sum(
    mx::metal::Device& d,
    mx::metal::CommandEncoder& enc,
    int64_t period,
    const std::vector<mx::array>& in,
    int conv_terms,
    mx::array& out) {
  const gpu::SumLaunch sum = gpu::sum_launch(period, in, conv_terms, out);
  const MetalFFT<T>& fft = metal_fft<T>(d, sum.geo.fft_size);
  GroupLaunch l = group_launch<T>(d, "sum_rows", fft.shape.n_half, 2);
  const int64_t groups = std::min(sum.ix.outer_count, kMaxSlotGroups);
  mx::array acc =
      scratch(enc, groups * 2 * int64_t{fft.shape.num_pairs} * sizeof(cpx<T>));
  std::optional<mx::array> workspace;
  if (!l.in_group_memory)
    workspace = scratch(enc, groups * l.row_bytes);
  dispatch_rows<T>(
      enc,
      l,
      groups,
      fft,
      in[0],
      in[1],
      nullptr,
      out,
      acc,
      workspace,
      sum.ix,
      gpu::conv_shape(sum.geo, false, 1),
      [&] {
        enc.set_bytes(sum.operands, kSlotSumOperands);
        // Unused operand slots are bound to an input the kernel never reads.
        for (int k = 0; k < kMaxSumOperands; ++k)
          enc.set_input_array(
              in[k < static_cast<int>(in.size()) ? k : 0],
              kSlotSumOperand0 + k);
      });
}

template <class T>
void convolve(
    mx::metal::Device& d,
    mx::metal::CommandEncoder& enc,
    ConvVariant variant,
    int64_t period,
    const std::vector<mx::array>& in,
    bool has_bias,
    int conv_terms,
    mx::array& out) {
  if (variant == ConvVariant::ConvolveSum)
    return convolve_sum<T>(d, enc, period, in, conv_terms, out);
  const gpu::ConvLaunch c =
      gpu::conv_launch(variant, period, in, has_bias, out);
  const mx::array& a = c.a;
  const mx::array& b = c.b;
  const mx::array* bias = c.bias;
  const mx::Shape& full = c.full;
  const ConvGeometry& geo = c.geo;
  const MetalFFT<T>& fft = metal_fft<T>(d, geo.fft_size);
  const int64_t h = fft.shape.n_half,
                spectrum_entries = 2 * int64_t(fft.shape.num_pairs);
  std::optional<mx::array> workspace;
  if (c.one_to_one) {
    const RowIndex ix =
        gpu::make_row_index(full, b.shape(), {&a, &b, bias, &out});
    mx::array spectra =
        scratch(enc, ix.outer_count * spectrum_entries * sizeof(cpx<T>));
    GroupLaunch spec = group_launch<T>(d, "kernel_spectra", h, 1);
    int64_t groups = spec.in_group_memory
        ? ix.outer_count
        : std::min(ix.outer_count, kMaxSlotGroups);
    if (!spec.in_group_memory)
      workspace = scratch(enc, groups * spec.row_bytes);
    dispatch_rows<T>(
        enc,
        spec,
        groups,
        fft,
        a,
        b,
        bias,
        out,
        spectra,
        workspace,
        ix,
        gpu::conv_shape(geo, has_bias, 1));
    GroupLaunch rows = group_launch<T>(d, "conv_rows", h, 1);
    const int64_t splits =
        std::clamp<int64_t>(kMaxSlotGroups / ix.outer_count, 1, ix.inner_count);
    const int64_t items = ix.outer_count * splits;
    groups = rows.in_group_memory ? items : std::min(items, kMaxSlotGroups);
    workspace.reset();
    if (!rows.in_group_memory)
      workspace = scratch(enc, groups * rows.row_bytes);
    dispatch_rows<T>(
        enc,
        rows,
        groups,
        fft,
        a,
        b,
        bias,
        out,
        spectra,
        workspace,
        ix,
        gpu::conv_shape(geo, has_bias, splits));
    return;
  }
  const RowIndex ix =
      gpu::make_row_index(full, out.shape(), {&a, &b, bias, &out});
  GroupLaunch l = group_launch<T>(d, "reduce_rows", h, 2);
  const int64_t groups = std::min(ix.outer_count, kMaxSlotGroups);
  mx::array acc = scratch(enc, groups * spectrum_entries * sizeof(cpx<T>));
  if (!l.in_group_memory)
    workspace = scratch(enc, groups * l.row_bytes);
  dispatch_rows<T>(
      enc,
      l,
      groups,
      fft,
      a,
      b,
      bias,
      out,
      acc,
      workspace,
      ix,
      gpu::conv_shape(geo, has_bias, 1));
}

template <class T>
void bias_gradient(
    mx::metal::Device& d,
    mx::metal::CommandEncoder& enc,
    const mx::array& g,
    const mx::array& u,
    mx::array& out) {
  const RowIndex ix = gpu::make_row_index(
      batch_shape(g.shape()), out.shape(), {&g, &u, nullptr, &out});
  const int64_t len = g.shape().back();
  const int sum_over_time = out.shape().back() == 1;
  const int64_t total = ix.outer_count * (sum_over_time ? 1 : len);
  MTL::ComputePipelineState* k =
      kernel(d, std::string("product_sum_") + type_name<T>());
  enc.set_compute_pipeline_state(k);
  enc.set_input_array(g, kSlotA);
  enc.set_input_array(u, kSlotB);
  enc.set_output_array(out, kSlotOut);
  enc.set_bytes(ix, kSlotRowIndex);
  enc.set_bytes(len, kSlotLength);
  enc.set_bytes(sum_over_time, kSlotSumOverTime);
  const int64_t threads =
      std::min<int64_t>(256, k->maxTotalThreadsPerThreadgroup());
  enc.dispatch_threads(MTL::Size(total, 1, 1), MTL::Size(threads, 1, 1));
}

// float32 runs the float kernels; extended and dd the double-word ones.
template <class Fn>
void with_working_type(Precision p, Fn fn) {
  if (p == Precision::Float32)
    fn(float{});
  else
    fn(ff{});
}

} // namespace

void RFFTConv::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  auto& d = mx::metal::device(stream().device);
  auto& enc = mx::metal::get_command_encoder(stream());
  out.set_data(mx::allocator::malloc(out.nbytes()));
  with_working_type(precision_, [&](auto tag) {
    convolve<decltype(tag)>(
        d, enc, variant_, period_, inputs, has_bias_, conv_terms_, out);
  });
}

void BiasGradient::eval_gpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  auto& d = mx::metal::device(stream().device);
  auto& enc = mx::metal::get_command_encoder(stream());
  out.set_data(mx::allocator::malloc(out.nbytes()));
  with_working_type(precision_, [&](auto tag) {
    bias_gradient<decltype(tag)>(d, enc, inputs[0], inputs[1], out);
  });
}

} // namespace mlx_precise
