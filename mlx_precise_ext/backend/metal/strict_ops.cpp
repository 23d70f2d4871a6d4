// eval_gpu for StrictAddmm, StrictLayerNorm and StrictLayerNormVJP on MLX's
// Metal backend, the twin of backend/cuda/strict_ops.cpp: the kernels of
// strict_kernels.metal (one source with the shared kernel headers, embedded at
// build time and compiled by MLX's Metal device on first use) encoded on the
// stream's command encoder. Operands are read through their strides
// (broadcast included), as on the CPU. Metal has no float64: "extended" and
// "dd" both run float-pair kernels (docs/design.md). addmm / linear and the
// layer_norm forward and gradients are certified (kernels/addmm_pair.h,
// kernels/layer_norm_pair.h: every output correctly rounded, the same bits as
// the CPU and CUDA).
#include <algorithm>
#include <optional>
#include <stdexcept>
#include <string>

#include <mlx/allocator.h>
#include <mlx/backend/metal/device.h>

#include "backend/gpu/strict_layout.h"
#include "backend/metal/encoder.h"
#include "backend/metal/kernel_sources.h"
#include "kernels/addmm_pair.h"
#include "kernels/layer_norm_pair.h"
#include "kernels/strict_arith.h"
#include "kernels/strict_params.h"
#include "strict_primitives.h"

namespace mlx_precise {

namespace {

using gpu::addmm_layout;
using gpu::rows_layout;
using metal::kernel;
using metal::scratch;

// Buffer indices of strict_kernels.metal.
enum AddmmSlot : int {
  kAddmmA = 0,
  kAddmmB,
  kAddmmC,
  kAddmmOut,
  kAddmmLayout,
  kAddmmOpenBits,
  kAddmmWords
};
enum LayerNormSlot : int {
  kLnX = 0,
  kLnWeight,
  kLnSecond /* bias (forward) or cotangent (gradients) */,
  kLnOut,
  kLnXLayout,
  kLnGLayout,
  kLnLaunch,
  kLnEps,
  kLnStats,
  kLnGradBias,
  kLnGradOpenBits
};
// The forward's open bitmap takes the gradients' cotangent-layout slot.
constexpr int kLnOpenBits = kLnGLayout;

// Threads of one addmm threadgroup (16 x 16, fixed by the kernel) and the
// output tile it covers.
constexpr int kAddmmThreads = 256;
constexpr int kAddmmTile = 64;
// Most SIMD-groups (rows) per layer_norm threadgroup (the kernel's lane array).
constexpr int kRowsPerGroup = 8;

constexpr metal::KernelLibrary kStrictLibrary{
    "mlx_precise_strict",
    metal::strict_kernels};

// One SIMD-group per row, up to kRowsPerGroup rows per threadgroup.
struct RowLaunch {
  MTL::Size groups;
  MTL::Size threads;
};

RowLaunch row_launch(MTL::ComputePipelineState* k, int64_t rows) {
  const int64_t width = static_cast<int64_t>(k->threadExecutionWidth());
  const int64_t per_group = std::clamp<int64_t>(
      static_cast<int64_t>(k->maxTotalThreadsPerThreadgroup()) / width,
      1,
      kRowsPerGroup);
  const int64_t groups = std::clamp<int64_t>(
      (rows + per_group - 1) / per_group, 1, int64_t(1) << 20);
  return RowLaunch{MTL::Size(groups, 1, 1), MTL::Size(per_group * width, 1, 1)};
}

// A certified layer_norm row kernel: its lanes are a SIMD-group of
// kPairLanes threads (the bounds count that tree).
MTL::ComputePipelineState* certified_row_kernel(
    mx::metal::Device& d,
    const std::string& name) {
  MTL::ComputePipelineState* k = kernel(d, kStrictLibrary, name);
  if (k->threadExecutionWidth() != static_cast<NS::UInteger>(kPairLanes)) {
    throw std::runtime_error(
        "layer_norm (Metal): the certified kernels need SIMD-groups of 32 threads");
  }
  return k;
}

} // namespace

void StrictAddmm::eval_gpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  auto& d = mx::metal::device(stream().device);
  auto& enc = mx::metal::get_command_encoder(stream());
  out.set_data(mx::allocator::malloc(out.nbytes()));
  if (out.size() == 0)
    return;
  // "extended" and "dd" alike: the dd tiles (no float64 on Metal).
  const AddmmLayout l = addmm_layout(inputs, out, alpha_, beta_, has_c_);
  MTL::ComputePipelineState* k = kernel(d, kStrictLibrary, "addmm_tiles_dd");
  if (k->maxTotalThreadsPerThreadgroup() <
      static_cast<NS::UInteger>(kAddmmThreads)) {
    throw std::runtime_error(
        "addmm / linear (Metal): the dd kernel needs 256 threads per threadgroup");
  }
  mx::array open_bits = metal::open_bitmap(
      enc,
      kernel(d, kStrictLibrary, "clear_addmm_open_bits"),
      out.size(),
      kAddmmOpenBits,
      kAddmmWords);
  auto bind_operands = [&] {
    enc.set_input_array(inputs[0], kAddmmA);
    enc.set_input_array(inputs[1], kAddmmB);
    // Without c the slot is bound to a, which the kernels never read through
    // it.
    enc.set_input_array(has_c_ ? inputs[2] : inputs[0], kAddmmC);
    enc.set_output_array(out, kAddmmOut);
    enc.set_bytes(l, kAddmmLayout);
  };
  enc.set_compute_pipeline_state(k);
  bind_operands();
  enc.set_output_array(open_bits, kAddmmOpenBits);
  const MTL::Size groups(
      (l.n + kAddmmTile - 1) / kAddmmTile,
      (l.m + kAddmmTile - 1) / kAddmmTile,
      static_cast<NS::UInteger>(std::min<int64_t>(l.batches, 65535)));
  enc.dispatch_threadgroups(groups, MTL::Size(kAddmmThreads, 1, 1));
  // The marked outputs summed exactly, one thread per output (few are marked
  // outside heavy cancellation, exact zeros and subnormal results).
  MTL::ComputePipelineState* recompute =
      kernel(d, kStrictLibrary, "addmm_recompute_open");
  enc.set_compute_pipeline_state(recompute);
  bind_operands();
  enc.set_input_array(open_bits, kAddmmOpenBits);
  metal::dispatch_elements(
      enc,
      recompute,
      std::min<int64_t>(static_cast<int64_t>(out.size()), int64_t(1) << 24));
}

void StrictLayerNorm::eval_gpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  auto& d = mx::metal::device(stream().device);
  auto& enc = mx::metal::get_command_encoder(stream());
  out.set_data(mx::allocator::malloc(out.nbytes()));
  if (out.size() == 0)
    return;
  const mx::array& x = inputs[0];
  const int dim = x.shape(-1);
  const int bias_index = has_weight_ ? 2 : 1;
  LayerNormLaunch launch{};
  launch.has_weight = has_weight_;
  launch.has_bias = has_bias_;
  launch.weight_stride = has_weight_ ? inputs[1].strides()[0] : 0;
  launch.bias_stride = has_bias_ ? inputs[bias_index].strides()[0] : 0;
  launch.rows = static_cast<int64_t>(x.size()) / dim;
  launch.dim = dim;
  const RowsLayout xl = rows_layout("layer_norm", x);
  const PairLayerNormEps eps = pair_layer_norm_eps(eps_);
  // One bit per output for those that do not certify.
  mx::array open_bits = metal::open_bitmap(
      enc,
      kernel(d, kStrictLibrary, "clear_addmm_open_bits"),
      out.size(),
      kAddmmOpenBits,
      kAddmmWords);
  auto bind_operands = [&] {
    // Absent weight / bias slots are bound to x, never read through them.
    enc.set_input_array(x, kLnX);
    enc.set_input_array(has_weight_ ? inputs[1] : x, kLnWeight);
    enc.set_input_array(has_bias_ ? inputs[bias_index] : x, kLnSecond);
    enc.set_output_array(out, kLnOut);
    enc.set_bytes(xl, kLnXLayout);
    enc.set_bytes(launch, kLnLaunch);
    enc.set_bytes(eps, kLnEps);
  };
  MTL::ComputePipelineState* k = certified_row_kernel(d, "layer_norm_rows_dd");
  enc.set_compute_pipeline_state(k);
  bind_operands();
  enc.set_output_array(open_bits, kLnOpenBits);
  const RowLaunch r = row_launch(k, launch.rows);
  enc.dispatch_threadgroups(r.groups, r.threads);
  // The marked outputs rounded exactly, one thread per row.
  MTL::ComputePipelineState* recompute =
      kernel(d, kStrictLibrary, "layer_norm_recompute_open");
  enc.set_compute_pipeline_state(recompute);
  bind_operands();
  enc.set_input_array(open_bits, kLnOpenBits);
  metal::dispatch_elements(
      enc, recompute, std::min<int64_t>(launch.rows, int64_t(1) << 24));
}

void StrictLayerNormVJP::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  auto& d = mx::metal::device(stream().device);
  auto& enc = mx::metal::get_command_encoder(stream());
  for (auto& o : outputs)
    o.set_data(mx::allocator::malloc(o.nbytes()));
  const mx::array& x = inputs[0];
  const mx::array& g = inputs.back();
  const int dim = x.shape(-1);
  const int64_t rows = dim == 0 ? 0 : static_cast<int64_t>(x.size()) / dim;
  size_t slot = 0;
  mx::array* grad_x = want_x_ ? &outputs[slot++] : nullptr;
  mx::array* grad_w = want_weight_ ? &outputs[slot++] : nullptr;
  mx::array* grad_b = want_bias_ ? &outputs[slot++] : nullptr;
  if (dim == 0)
    return;
  const bool want_params = want_weight_ || want_bias_;
  const RowsLayout xl = rows_layout("layer_norm gradient", x);
  const RowsLayout gl = rows_layout("layer_norm gradient", g);
  const PairLayerNormEps eps = pair_layer_norm_eps(eps_);
  LayerNormLaunch launch{};
  launch.has_weight = has_weight_;
  launch.want_grad_x = want_x_;
  launch.want_stats = want_params;
  launch.want_grad_weight = want_weight_;
  launch.want_grad_bias = want_bias_;
  launch.weight_stride = has_weight_ ? inputs[1].strides()[0] : 0;
  launch.rows = rows;
  launch.dim = dim;
  const mx::array& weight = has_weight_ ? inputs[1] : x;
  std::optional<mx::array> stats;
  if (want_params)
    stats = scratch(enc, std::max<int64_t>(rows, 1) * sizeof(PairLayerNormRow));
  // One bit per grad x output for those that do not certify.
  std::optional<mx::array> open_bits;
  if (want_x_ && rows > 0)
    open_bits = metal::open_bitmap(
        enc,
        kernel(d, kStrictLibrary, "clear_addmm_open_bits"),
        grad_x->size(),
        kAddmmOpenBits,
        kAddmmWords);
  // The operands every gradient kernel takes, and its output (grad x or grad
  // weight; an absent one is bound to x, never written through it).
  auto bind_operands = [&](mx::array* out) {
    enc.set_input_array(x, kLnX);
    enc.set_input_array(weight, kLnWeight);
    enc.set_input_array(g, kLnSecond);
    if (out)
      enc.set_output_array(*out, kLnOut);
    else
      enc.set_input_array(x, kLnOut);
    enc.set_bytes(xl, kLnXLayout);
    enc.set_bytes(gl, kLnGLayout);
    enc.set_bytes(launch, kLnLaunch);
    enc.set_bytes(eps, kLnEps);
  };

  if (rows > 0 && (want_x_ || want_params)) {
    MTL::ComputePipelineState* k =
        certified_row_kernel(d, "layer_norm_grad_rows_dd");
    enc.set_compute_pipeline_state(k);
    bind_operands(grad_x);
    if (stats)
      enc.set_output_array(*stats, kLnStats);
    else
      enc.set_input_array(x, kLnStats);
    if (open_bits)
      enc.set_output_array(*open_bits, kLnGradOpenBits);
    else
      enc.set_input_array(x, kLnGradOpenBits);
    const RowLaunch r = row_launch(k, rows);
    enc.dispatch_threadgroups(r.groups, r.threads);
  }
  if (open_bits) {
    // The marked grad x outputs rounded exactly, one thread per row.
    MTL::ComputePipelineState* recompute =
        kernel(d, kStrictLibrary, "layer_norm_grad_x_recompute_open");
    enc.set_compute_pipeline_state(recompute);
    bind_operands(grad_x);
    enc.set_input_array(*open_bits, kLnGradOpenBits);
    metal::dispatch_elements(
        enc, recompute, std::min<int64_t>(rows, int64_t(1) << 24));
  }
  if (!want_params)
    return;
  // One bit per grad weight column for those that do not certify.
  std::optional<mx::array> column_bits;
  if (grad_w)
    column_bits = metal::open_bitmap(
        enc,
        kernel(d, kStrictLibrary, "clear_addmm_open_bits"),
        dim,
        kAddmmOpenBits,
        kAddmmWords);
  // One thread per column, rows in order (reads the statistics written above;
  // the encoder orders the two dispatches through the stats buffer).
  MTL::ComputePipelineState* k =
      kernel(d, kStrictLibrary, "layer_norm_param_grads_dd");
  enc.set_compute_pipeline_state(k);
  bind_operands(grad_w);
  enc.set_input_array(*stats, kLnStats);
  if (grad_b)
    enc.set_output_array(*grad_b, kLnGradBias);
  else
    enc.set_input_array(x, kLnGradBias);
  if (column_bits)
    enc.set_output_array(*column_bits, kLnGradOpenBits);
  else
    enc.set_input_array(x, kLnGradOpenBits);
  const int64_t threads =
      std::min<int64_t>(128, k->maxTotalThreadsPerThreadgroup());
  enc.dispatch_threads(MTL::Size(dim, 1, 1), MTL::Size(threads, 1, 1));
  if (!column_bits)
    return;
  // The marked columns decided exactly, one thread per column.
  MTL::ComputePipelineState* recompute =
      kernel(d, kStrictLibrary, "layer_norm_weight_grad_recompute_open");
  enc.set_compute_pipeline_state(recompute);
  bind_operands(grad_w);
  enc.set_input_array(*column_bits, kLnGradOpenBits);
  metal::dispatch_elements(enc, recompute, dim);
}

} // namespace mlx_precise
