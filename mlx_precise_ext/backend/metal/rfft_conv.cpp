// eval_gpu for RFFTConv and BiasGradient on MLX's Metal backend, the twin of
// backend/cuda/rfft_conv.cpp: the kernels of rfft_conv_kernels.metal (one
// source with the shared kernel headers, embedded at build time and compiled
// by MLX's Metal device on first use) encoded on the stream's command encoder.
// Metal has no float64: "extended" and "dd" run the float-pair kernels, the
// forward rows certified (kernels/certify_pair.h, docs/certification.md).
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
#include "backend/gpu/pair_conv_layout.h"
#include "backend/metal/encoder.h"
#include "backend/metal/kernel_sources.h"
#include "kernels/certify_pair.h"
#include "pair_primitives.h"
#include "pair_vjp_primitives.h"
#include "primitives.h"

namespace mlx_precise {

namespace {

using metal::kernel;
using metal::scratch;

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
  kSlotSumOperand0, // ConvolveSum's operand k at kSlotSumOperand0 + k
  kSlotRowScales = kSlotSumOperand0 + kMaxSumOperands, // the certified kernels'
  kSlotOpenBits,
  kSlotPairBound
};

// Threadgroup memory the row kernels declare themselves (summaries, the
// certified kernels' SIMD sums), kept free of the rows.
constexpr size_t kStaticGroupBytes = 256;

// Threads of a recompute_open_rows threadgroup.
constexpr int kRecomputeThreads = 256;

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

constexpr metal::KernelLibrary kConvLibrary{
    "mlx_precise_rfft_conv",
    metal::rfft_conv_kernels};

struct GroupLaunch {
  MTL::ComputePipelineState* pipeline;
  bool in_group_memory;
  size_t row_bytes;
  int threads;
};

// The row kernel `name` of library lib ("<name>_group" or "<name>_device").
template <class T>
GroupLaunch group_launch(
    mx::metal::Device& d,
    MTL::Library* lib,
    const std::string& name,
    int64_t n_half,
    int buffers) {
  GroupLaunch l{};
  l.row_bytes = static_cast<size_t>(buffers) * 2 * n_half * sizeof(T);
  l.in_group_memory = l.row_bytes + kStaticGroupBytes <=
      d.mtl_device()->maxThreadgroupMemoryLength();
  l.pipeline =
      d.get_kernel(name + (l.in_group_memory ? "_group" : "_device"), lib);
  const int cap = static_cast<int>(std::min<NS::UInteger>(
                      1024, l.pipeline->maxTotalThreadsPerThreadgroup())) /
      32 * 32;
  l.threads = static_cast<int>(std::clamp<int64_t>(n_half / 8, 32, cap));
  return l;
}

// The rfft_conv row kernel `name` in precision T.
template <class T>
GroupLaunch group_launch(
    mx::metal::Device& d,
    const char* name,
    int64_t n_half,
    int buffers) {
  return group_launch<T>(
      d,
      metal::library(d, kConvLibrary),
      std::string(name) + "_" + type_name<T>(),
      n_half,
      buffers);
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

// The cleared bitmap of the certified kernels' open outputs.
mx::array open_bitmap(
    mx::metal::Device& d,
    mx::metal::CommandEncoder& enc,
    int64_t outputs) {
  return metal::open_bitmap(
      enc,
      kernel(d, kConvLibrary, "clear_open_bits"),
      outputs,
      kSlotOpenBits,
      kSlotLength);
}

// Binds what the certified row kernels take beyond the row kernels' common
// arguments: the bitmap and the bound's constants for `terms` terms.
void bind_certification(
    mx::metal::CommandEncoder& enc,
    mx::array& open_bits,
    const ConvGeometry& geo,
    int64_t terms) {
  enc.set_output_array(open_bits, kSlotOpenBits);
  enc.set_bytes(
      pair_bound_constants(geo.fft_size, terms, geo.a_len, geo.b_len),
      kSlotPairBound);
}

// Dispatches the recompute kernel `name` (bound by bind_more) over `rows`
// output rows, a threadgroup per row.
void dispatch_recompute(
    mx::metal::Device& d,
    mx::metal::CommandEncoder& enc,
    const char* name,
    const mx::array& open_bits,
    int64_t rows,
    const std::function<void()>& bind_more) {
  MTL::ComputePipelineState* recompute = kernel(d, kConvLibrary, name);
  enc.set_compute_pipeline_state(recompute);
  enc.set_input_array(open_bits, kSlotOpenBits);
  bind_more();
  enc.dispatch_threadgroups(
      MTL::Size(std::min(rows, kMaxSlotGroups), 1, 1),
      MTL::Size(
          std::min<int>(
              kRecomputeThreads, recompute->maxTotalThreadsPerThreadgroup()),
          1,
          1));
}

// ConvolveSum (the jvp): sum_rows over the output rows, each summing its
// terms as reduce_rows sums a target's; extended and dd certified
// (certified_sum_rows, recompute_open_sum).
template <class T>
void convolve_sum(
    mx::metal::Device& d,
    mx::metal::CommandEncoder& enc,
    int64_t period,
    const std::vector<mx::array>& in,
    int conv_terms,
    mx::array& out) {
  constexpr bool certified = std::is_same_v<T, ff>;
  const gpu::SumLaunch sum = gpu::sum_launch(period, in, conv_terms, out);
  const MetalFFT<T>& fft = metal_fft<T>(d, sum.geo.fft_size);
  GroupLaunch l = group_launch<T>(
      d, certified ? "certified_sum_rows" : "sum_rows", fft.shape.n_half, 2);
  const int64_t groups = std::min(sum.ix.outer_count, kMaxSlotGroups);
  mx::array acc =
      scratch(enc, groups * 2 * int64_t{fft.shape.num_pairs} * sizeof(cpx<T>));
  std::optional<mx::array> workspace;
  if (!l.in_group_memory)
    workspace = scratch(enc, groups * l.row_bytes);
  std::optional<mx::array> open_bits;
  if (certified)
    open_bits = open_bitmap(d, enc, sum.ix.outer_count * sum.geo.out_len);
  auto bind_operands = [&] {
    enc.set_bytes(sum.operands, kSlotSumOperands);
    // Unused operand slots are bound to an input the kernel never reads.
    for (int k = 0; k < kMaxSumOperands; ++k)
      enc.set_input_array(
          in[k < static_cast<int>(in.size()) ? k : 0], kSlotSumOperand0 + k);
  };
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
        bind_operands();
        if (open_bits)
          bind_certification(enc, *open_bits, sum.geo, conv_terms);
      });
  if (open_bits) {
    dispatch_recompute(
        d, enc, "recompute_open_sum", *open_bits, sum.ix.outer_count, [&] {
          enc.set_output_array(out, kSlotOut);
          enc.set_bytes(sum.ix, kSlotRowIndex);
          enc.set_bytes(gpu::conv_shape(sum.geo, false, 1), kSlotConvShape);
          bind_operands();
        });
  }
}

// The shared-kernel form: the kernel spectra (spec), once per kernel row,
// then the output rows (rows) in work items (kernel row, split), each launch
// with what bind_extra(spectra_pass) binds beyond the row kernels' common
// arguments.
template <class T, class BindExtra>
void launch_shared_kernel(
    mx::metal::CommandEncoder& enc,
    const GroupLaunch& spec,
    const GroupLaunch& rows,
    const MetalFFT<T>& fft,
    const mx::array& a,
    const mx::array& b,
    const mx::array* bias,
    mx::array& out,
    const RowIndex& ix,
    const ConvGeometry& geo,
    BindExtra bind_extra) {
  mx::array spectra = scratch(
      enc, ix.outer_count * 2 * int64_t(fft.shape.num_pairs) * sizeof(cpx<T>));
  // Launch l on `items` work items: one threadgroup each when rows fit in
  // threadgroup memory, else at most kMaxSlotGroups with a workspace slot each.
  auto dispatch = [&](const GroupLaunch& l, int64_t items, int64_t splits) {
    const int64_t groups =
        l.in_group_memory ? items : std::min(items, kMaxSlotGroups);
    std::optional<mx::array> workspace;
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
        spectra,
        workspace,
        ix,
        gpu::conv_shape(geo, bias != nullptr, splits),
        [&] { bind_extra(&l == &spec); });
  };
  dispatch(spec, ix.outer_count, 1);
  const int64_t splits =
      std::clamp<int64_t>(kMaxSlotGroups / ix.outer_count, 1, ix.inner_count);
  dispatch(rows, ix.outer_count * splits, splits);
}

// Binds recompute_open_rows' arguments: the operands of c, its row index,
// shape and `one_term` (1: one output row per a row, 0: target rows).
void bind_recompute_rows(
    mx::metal::CommandEncoder& enc,
    const gpu::ConvLaunch& c,
    const RowIndex& ix,
    mx::array& out,
    int one_term) {
  enc.set_input_array(c.a, kSlotA);
  enc.set_input_array(c.b, kSlotB);
  enc.set_input_array(c.bias ? *c.bias : c.a, kSlotBias);
  enc.set_output_array(out, kSlotOut);
  enc.set_bytes(ix, kSlotRowIndex);
  enc.set_bytes(gpu::conv_shape(c.geo, c.bias != nullptr, 1), kSlotConvShape);
  enc.set_bytes(one_term, kSlotSumOverTime);
}

// Extended and dd forward rows: the float-pair transform of the scaled rows,
// each output certified (certified_spectra, certified_conv_rows) or marked in
// the bitmap, and the marked ones summed exactly (recompute_open_rows).
void convolve_certified(
    mx::metal::Device& d,
    mx::metal::CommandEncoder& enc,
    const MetalFFT<ff>& fft,
    const gpu::ConvLaunch& c,
    const RowIndex& ix,
    mx::array& out) {
  const int64_t rows = ix.outer_count * ix.inner_count;
  mx::array scales = scratch(enc, ix.outer_count * sizeof(PairRowScale));
  mx::array open_bits = open_bitmap(d, enc, rows * c.geo.out_len);
  const int64_t h = fft.shape.n_half;
  launch_shared_kernel<ff>(
      enc,
      group_launch<ff>(d, "certified_spectra", h, 1),
      group_launch<ff>(d, "certified_conv_rows", h, 1),
      fft,
      c.a,
      c.b,
      c.bias,
      out,
      ix,
      c.geo,
      [&](bool) {
        enc.set_output_array(scales, kSlotRowScales);
        bind_certification(enc, open_bits, c.geo, 1);
      });
  dispatch_recompute(d, enc, "recompute_open_rows", open_bits, rows, [&] {
    bind_recompute_rows(enc, c, ix, out, 1);
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
  if constexpr (std::is_same_v<T, ff>) {
    if (c.one_to_one) {
      convolve_certified(
          d,
          enc,
          fft,
          c,
          gpu::make_row_index(full, b.shape(), {&a, &b, bias, &out}),
          out);
      return;
    }
  }
  if (c.one_to_one) {
    const RowIndex ix =
        gpu::make_row_index(full, b.shape(), {&a, &b, bias, &out});
    launch_shared_kernel<T>(
        enc,
        group_launch<T>(d, "kernel_spectra", h, 1),
        group_launch<T>(d, "conv_rows", h, 1),
        fft,
        a,
        b,
        bias,
        out,
        ix,
        geo,
        [](bool) {});
    return;
  }
  const RowIndex ix =
      gpu::make_row_index(full, out.shape(), {&a, &b, bias, &out});
  // Extended and dd certified: certified_reduce_rows, recompute_open_rows.
  constexpr bool certified = std::is_same_v<T, ff>;
  GroupLaunch l = group_launch<T>(
      d, certified ? "certified_reduce_rows" : "reduce_rows", h, 2);
  const int64_t groups = std::min(ix.outer_count, kMaxSlotGroups);
  mx::array acc = scratch(enc, groups * spectrum_entries * sizeof(cpx<T>));
  if (!l.in_group_memory)
    workspace = scratch(enc, groups * l.row_bytes);
  std::optional<mx::array> open_bits;
  if (certified)
    open_bits = open_bitmap(d, enc, ix.outer_count * geo.out_len);
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
      gpu::conv_shape(geo, has_bias, 1),
      [&] {
        if (open_bits)
          bind_certification(enc, *open_bits, geo, ix.inner_count);
      });
  if (open_bits) {
    dispatch_recompute(
        d, enc, "recompute_open_rows", *open_bits, ix.outer_count, [&] {
          bind_recompute_rows(enc, c, ix, out, 0);
        });
  }
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
      kernel(d, kConvLibrary, std::string("product_sum_") + type_name<T>());
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

// pair_rfft_conv (Convolve) and its gradients (CorrelateInput,
// CorrelateKernel: a reversed and the outputs gathered back to front, as the
// geometry says): in = a_hi, a_lo, b_hi, b_lo [, bias], outs = hi, lo, one
// output row per row of a (u, or g for the gradients); b (k, or u for the
// kernel's gradient) is transformed once per row of its own. The
// shared-kernel form with the pair kernels of pair_kernels.metal, in float
// pairs; lo_ix numbers the rows of the lo parts as ix numbers those of the
// hi parts.
void launch_pair_conv(
    mx::metal::Device& d,
    mx::metal::CommandEncoder& enc,
    ConvVariant variant,
    int64_t period,
    const std::vector<mx::array>& in,
    bool has_bias,
    std::vector<mx::array>& outs) {
  const mx::array &u_hi = in[0], &u_lo = in[1], &k_hi = in[2], &k_lo = in[3];
  const mx::array* bias = has_bias ? &in[4] : nullptr;
  const gpu::PairConvLaunch c =
      gpu::pair_conv_launch(variant, period, in, has_bias, outs);
  const ConvGeometry& geo = c.geo;
  const RowIndex &ix = c.ix, &lo_ix = c.lo_ix;
  const MetalFFT<ff>& fft = metal_fft<ff>(d, geo.fft_size);
  MTL::Library* lib = d.get_library(
      "mlx_precise_pair", [] { return std::string(metal::pair_kernels()); });
  // The pair kernels' slots beyond the row kernels' (pair_kernels.metal).
  enum : int { kSlotLo = 12, kSlotOutLo = 13, kSlotLoRowIndex = 14 };
  const int64_t h = fft.shape.n_half;
  launch_shared_kernel<ff>(
      enc,
      group_launch<ff>(d, lib, "pair_kernel_spectra", h, 1),
      group_launch<ff>(d, lib, "pair_conv_rows", h, 1),
      fft,
      u_hi,
      k_hi,
      bias,
      outs[0],
      ix,
      geo,
      [&](bool spectra_pass) {
        enc.set_input_array(spectra_pass ? k_lo : u_lo, kSlotLo);
        enc.set_output_array(outs[1], kSlotOutLo);
        enc.set_bytes(lo_ix, kSlotLoRowIndex);
      });
}

// The pair forms: both outputs allocated, then launch_pair_conv.
void eval_pair_conv(
    mx::Stream s,
    ConvVariant variant,
    int64_t period,
    bool has_bias,
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  auto& d = mx::metal::device(s.device);
  auto& enc = mx::metal::get_command_encoder(s);
  for (auto& o : outputs)
    o.set_data(mx::allocator::malloc(o.nbytes()));
  if (outputs[0].size() == 0)
    return;
  launch_pair_conv(d, enc, variant, period, inputs, has_bias, outputs);
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

// Inputs g, k, u [, bias]: the CorrelateInput and CorrelateKernel launches.
void RFFTConvGradients::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  auto& d = mx::metal::device(stream().device);
  auto& enc = mx::metal::get_command_encoder(stream());
  for (auto& o : outputs)
    o.set_data(mx::allocator::malloc(o.nbytes()));
  const auto input_grad = input_gradient_inputs(inputs, has_bias_);
  with_working_type(precision_, [&](auto tag) {
    convolve<decltype(tag)>(
        d,
        enc,
        ConvVariant::CorrelateInput,
        period_,
        input_grad,
        has_bias_,
        1,
        outputs[0]);
    convolve<decltype(tag)>(
        d,
        enc,
        ConvVariant::CorrelateKernel,
        period_,
        {inputs[0], inputs[2]},
        false,
        1,
        outputs[1]);
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

// Inputs u_hi, u_lo, k_hi, k_lo [, bias]; outputs hi, lo (launch_pair_conv).
void PairRFFTConv::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  eval_pair_conv(
      stream(), ConvVariant::Convolve, period_, has_bias_, inputs, outputs);
}

// Inputs g_hi, g_lo, then k_hi, k_lo [, bias] (CorrelateInput) or u_hi, u_lo
// (CorrelateKernel); outputs hi, lo (launch_pair_conv).
void PairRFFTCorrelate::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  eval_pair_conv(stream(), variant_, period_, has_bias_, inputs, outputs);
}

} // namespace mlx_precise
