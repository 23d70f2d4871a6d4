// eval_gpu of the pair ops on MLX's Metal backend, the twin of
// backend/cuda/pair_ops.cpp: the kernels of pair_kernels.metal (one source
// with the shared kernel headers, embedded at build time and compiled by
// MLX's Metal device on first use) in double-word arithmetic, since Metal has
// no float64; operands are read through their strides. PairRFFTConv and its
// gradients' PairRFFTCorrelate run the rfft_conv row launches
// (backend/metal/rfft_conv.cpp); the other gradients' primitives
// (pair_vjp_primitives.h), PairSum, PairRows' ScatterAdd, PairLayerNormVJP and
// PairCrossEntropy, run here.
#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <mlx/allocator.h>
#include <mlx/backend/metal/device.h>

#include "backend/gpu/pair_grad_layout.h"
#include "backend/gpu/strict_layout.h"
#include "backend/metal/encoder.h"
#include "backend/metal/kernel_sources.h"
#include "kernels/pair_math.h"
#include "kernels/strict_params.h"
#include "pair_primitives.h"
#include "pair_vjp_primitives.h"

namespace mlx_precise {

namespace {

using metal::kernel;
using metal::scratch;

// Most SIMD-groups (rows) per layer_norm threadgroup (the kernel's parts
// array) and the partial sums per row it needs.
constexpr int64_t kPairRowsPerGroup = 8;
constexpr int64_t kPairLanes = 8;

constexpr metal::KernelLibrary kPairLibrary{
    "mlx_precise_pair",
    metal::pair_kernels};

// The stream's encoder with the outputs allocated.
mx::metal::CommandEncoder& prepare(
    mx::Stream s,
    std::vector<mx::array>& outputs) {
  for (auto& o : outputs)
    o.set_data(mx::allocator::malloc(o.nbytes()));
  return mx::metal::get_command_encoder(s);
}

// An operand as rows of its last axis (a 0-d array: one row of one element).
RowsLayout operand_layout(const char* op, const mx::array& x) {
  if (x.ndim() == 0)
    return RowsLayout{};
  return gpu::rows_layout(op, x);
}

// One thread per element of a grid of `total`, which Metal indexes in 32 bits.
void dispatch_elements(
    mx::metal::CommandEncoder& enc,
    MTL::ComputePipelineState* k,
    int64_t total,
    const char* op) {
  if (total > std::numeric_limits<uint32_t>::max()) {
    throw std::invalid_argument(
        std::string(op) +
        " (Metal): more than 2^32 - 1 outputs; split the batch");
  }
  metal::dispatch_elements(enc, k, total);
}

} // namespace

void PairElementwise::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  auto& d = mx::metal::device(stream().device);
  auto& enc = prepare(stream(), outputs);
  const int64_t size = outputs[0].size();
  if (size == 0)
    return;
  const bool binary = inputs.size() == 4;
  // Unary ops bind x again as the unread y operands.
  const mx::array& y_hi = binary ? inputs[2] : inputs[0];
  const mx::array& y_lo = binary ? inputs[3] : inputs[1];
  const char* name = pair_op_name(op_);
  const std::vector<RowsLayout> layouts{
      operand_layout(name, inputs[0]),
      operand_layout(name, inputs[1]),
      operand_layout(name, y_hi),
      operand_layout(name, y_lo)};
  const int64_t inner = outputs[0].ndim() == 0 ? 1 : outputs[0].shape(-1);
  MTL::ComputePipelineState* k = kernel(d, kPairLibrary, "pair_elementwise");
  enc.set_compute_pipeline_state(k);
  enc.set_input_array(inputs[0], 0);
  enc.set_input_array(inputs[1], 1);
  enc.set_input_array(y_hi, 2);
  enc.set_input_array(y_lo, 3);
  enc.set_output_array(outputs[0], 4);
  enc.set_output_array(outputs[1], 5);
  enc.set_vector_bytes(layouts, 6);
  enc.set_bytes(size, 7);
  enc.set_bytes(inner, 8);
  enc.set_bytes(static_cast<int>(op_), 9);
  enc.set_bytes(static_cast<int>(binary), 10);
  dispatch_elements(enc, k, size, name);
}

void PairLayerNorm::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  auto& d = mx::metal::device(stream().device);
  auto& enc = prepare(stream(), outputs);
  if (outputs[0].size() == 0)
    return;
  const mx::array& x_hi = inputs[0];
  const int dim = x_hi.shape(-1);
  const int bias_index = has_weight_ ? 3 : 2;
  LayerNormLaunch launch{};
  launch.has_weight = has_weight_;
  launch.has_bias = has_bias_;
  launch.weight_stride = has_weight_ ? inputs[2].strides()[0] : 0;
  launch.bias_stride = has_bias_ ? inputs[bias_index].strides()[0] : 0;
  launch.rows = static_cast<int64_t>(x_hi.size()) / dim;
  launch.dim = dim;
  const ff eps = dd_from_double(eps_);
  MTL::ComputePipelineState* k =
      kernel(d, kPairLibrary, "pair_layer_norm_rows");
  const int64_t width = static_cast<int64_t>(k->threadExecutionWidth());
  if (width < kPairLanes) {
    throw std::runtime_error(
        "pair layer_norm (Metal): SIMD-groups narrower than 8 threads are "
        "not supported");
  }
  const int64_t per_group = std::clamp<int64_t>(
      static_cast<int64_t>(k->maxTotalThreadsPerThreadgroup()) / width,
      1,
      kPairRowsPerGroup);
  const int64_t groups = std::clamp<int64_t>(
      (launch.rows + per_group - 1) / per_group, 1, int64_t(1) << 20);
  enc.set_compute_pipeline_state(k);
  // Absent weight / bias slots are bound to x, never read through them.
  enc.set_input_array(x_hi, 0);
  enc.set_input_array(inputs[1], 1);
  enc.set_input_array(has_weight_ ? inputs[2] : x_hi, 2);
  enc.set_input_array(has_bias_ ? inputs[bias_index] : x_hi, 3);
  enc.set_output_array(outputs[0], 4);
  enc.set_output_array(outputs[1], 5);
  enc.set_bytes(gpu::rows_layout("pair layer_norm", x_hi), 6);
  enc.set_bytes(gpu::rows_layout("pair layer_norm", inputs[1]), 7);
  enc.set_bytes(launch, 8);
  enc.set_bytes(eps, 9);
  enc.dispatch_threadgroups(
      MTL::Size(groups, 1, 1), MTL::Size(per_group * width, 1, 1));
}

// Inputs a_hi, a_lo, b_hi, b_lo [, c]: layouts over (a, b[, c]) with the hi
// parts and with the lo parts.
void PairAddmm::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  auto& d = mx::metal::device(stream().device);
  auto& enc = prepare(stream(), outputs);
  if (outputs[0].size() == 0)
    return;
  std::vector<mx::array> hi_operands{inputs[0], inputs[2]};
  if (has_c_)
    hi_operands.push_back(inputs[4]);
  std::vector<mx::array> lo_operands = hi_operands;
  lo_operands[0] = inputs[1];
  lo_operands[1] = inputs[3];
  MTL::ComputePipelineState* k = kernel(d, kPairLibrary, "pair_addmm");
  enc.set_compute_pipeline_state(k);
  for (int i = 0; i < 4; ++i)
    enc.set_input_array(inputs[i], i);
  // Without c the slot is bound to a, never read through it.
  enc.set_input_array(has_c_ ? inputs[4] : inputs[0], 4);
  enc.set_output_array(outputs[0], 5);
  enc.set_output_array(outputs[1], 6);
  enc.set_bytes(
      gpu::addmm_layout(hi_operands, outputs[0], 1.0f, 1.0f, has_c_), 7);
  enc.set_bytes(
      gpu::addmm_layout(lo_operands, outputs[0], 1.0f, 1.0f, has_c_), 8);
  dispatch_elements(enc, k, outputs[0].size(), "pair addmm / linear");
}

namespace {
void scatter_add_rows(
    mx::Stream s,
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs);
} // namespace

// Gather (the forward of pair take_rows) runs pair_gather_rows; ScatterAdd,
// its gradient, the counting sort of pair_rows_positions and then
// pair_scatter_add_rows (the CPU's and CUDA's order).
void PairRows::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  if (variant_ == Variant::ScatterAdd)
    return scatter_add_rows(stream(), inputs, outputs);
  auto& d = mx::metal::device(stream().device);
  auto& enc = prepare(stream(), outputs);
  const int64_t size = outputs[0].size();
  if (size == 0)
    return;
  const mx::array& ids = inputs[2];
  const int64_t dim = outputs[0].shape(-1);
  const std::vector<RowsLayout> layouts{
      gpu::rows_layout("pair take_rows", inputs[0]),
      gpu::rows_layout("pair take_rows", inputs[1]),
      operand_layout("pair take_rows", ids)};
  const std::vector<int64_t> sizes{
      ids.ndim() == 0 ? 1 : ids.shape(-1), inputs[0].shape(0), dim, size / dim};
  MTL::ComputePipelineState* k = kernel(d, kPairLibrary, "pair_gather_rows");
  enc.set_compute_pipeline_state(k);
  enc.set_input_array(inputs[0], 0);
  enc.set_input_array(inputs[1], 1);
  enc.set_input_array(ids, 2);
  enc.set_output_array(outputs[0], 3);
  enc.set_output_array(outputs[1], 4);
  enc.set_vector_bytes(layouts, 5);
  enc.set_vector_bytes(sizes, 6);
  dispatch_elements(enc, k, size, "pair take_rows");
}

// ------------------------------------------------------------- gradients ----

// in (hi, lo) summed to out's shape (aligned right; dims of 1 and missing
// leading dims summed), one thread per output (pair_sum_to).
void PairSum::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  auto& d = mx::metal::device(stream().device);
  auto& enc = prepare(stream(), outputs);
  const int64_t size = outputs[0].size();
  if (size == 0)
    return;
  const mx::array &hi = inputs[0], &lo = inputs[1];
  const gpu::PairSumLayout l = gpu::pair_sum_layout(
      hi.shape(), hi.strides(), lo.strides(), outputs[0].shape());
  const std::vector<RowsLayout> layouts{
      l.kept_hi, l.kept_lo, l.summed_hi, l.summed_lo};
  MTL::ComputePipelineState* k = kernel(d, kPairLibrary, "pair_sum_to");
  enc.set_compute_pipeline_state(k);
  enc.set_input_array(hi, 0);
  enc.set_input_array(lo, 1);
  enc.set_output_array(outputs[0], 2);
  enc.set_output_array(outputs[1], 3);
  enc.set_vector_bytes(layouts, 4);
  enc.set_bytes(size, 5);
  enc.set_bytes(l.terms, 6);
  dispatch_elements(enc, k, size, "pair sum");
}

// One thread per row (pair_layer_norm_vjp_rows): dx and g xhat as pairs.
void PairLayerNormVJP::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  auto& d = mx::metal::device(stream().device);
  auto& enc = prepare(stream(), outputs);
  if (outputs[0].size() == 0)
    return;
  const char* op = "pair layer_norm gradient";
  const mx::array& x_hi = inputs[0];
  const int g = has_weight_ ? 3 : 2;
  LayerNormLaunch launch{};
  launch.has_weight = has_weight_;
  launch.weight_stride = has_weight_ ? inputs[2].strides()[0] : 0;
  launch.dim = x_hi.shape(-1);
  launch.rows = static_cast<int64_t>(x_hi.size()) / launch.dim;
  const std::vector<RowsLayout> layouts{
      gpu::rows_layout(op, x_hi),
      gpu::rows_layout(op, inputs[1]),
      gpu::rows_layout(op, inputs[g]),
      gpu::rows_layout(op, inputs[g + 1])};
  const ff eps = dd_from_double(eps_);
  MTL::ComputePipelineState* k =
      kernel(d, kPairLibrary, "pair_layer_norm_vjp_rows");
  enc.set_compute_pipeline_state(k);
  enc.set_input_array(x_hi, 0);
  enc.set_input_array(inputs[1], 1);
  // Without a weight the slot is bound to x, never read through it.
  enc.set_input_array(has_weight_ ? inputs[2] : x_hi, 2);
  enc.set_input_array(inputs[g], 3);
  enc.set_input_array(inputs[g + 1], 4);
  for (int i = 0; i < 4; ++i)
    enc.set_output_array(outputs[i], 5 + i);
  enc.set_vector_bytes(layouts, 9);
  enc.set_bytes(launch, 10);
  enc.set_bytes(eps, 11);
  dispatch_elements(enc, k, launch.rows, op);
}

namespace {

// ScatterAdd: inputs g_hi, g_lo (ids.shape + (D,)), ids; outputs (V, D).
void scatter_add_rows(
    mx::Stream s,
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  auto& d = mx::metal::device(s.device);
  auto& enc = prepare(s, outputs);
  const int64_t size = outputs[0].size();
  if (size == 0)
    return;
  const char* op = "pair take_rows gradient";
  const mx::array& ids = inputs[2];
  const int64_t table_rows = outputs[0].shape(0), dim = outputs[0].shape(-1);
  const int64_t count = ids.size();
  if (table_rows + 1 > std::numeric_limits<int>::max() ||
      count > std::numeric_limits<int>::max()) {
    throw std::invalid_argument(
        std::string(op) +
        " (Metal): more than 2^31 - 2 table rows or ids; split the ids");
  }
  mx::array first = scratch(enc, (table_rows + 1) * sizeof(int64_t));
  mx::array positions = scratch(enc, count * sizeof(int64_t));
  const std::vector<int64_t> sort_sizes{
      ids.ndim() == 0 ? 1 : ids.shape(-1), count, table_rows};
  MTL::ComputePipelineState* sort =
      kernel(d, kPairLibrary, "pair_rows_positions");
  enc.set_compute_pipeline_state(sort);
  enc.set_input_array(ids, 0);
  enc.set_output_array(first, 1);
  enc.set_output_array(positions, 2);
  enc.set_bytes(operand_layout(op, ids), 3);
  enc.set_vector_bytes(sort_sizes, 4);
  enc.dispatch_threads(MTL::Size(1, 1, 1), MTL::Size(1, 1, 1));
  // Registered as inputs here, the sort's outputs are written before the
  // sums read them (the encoder's barrier between the two dispatches).
  const std::vector<RowsLayout> layouts{
      gpu::rows_layout(op, inputs[0]), gpu::rows_layout(op, inputs[1])};
  const std::vector<int64_t> sizes{table_rows, dim};
  MTL::ComputePipelineState* k =
      kernel(d, kPairLibrary, "pair_scatter_add_rows");
  enc.set_compute_pipeline_state(k);
  enc.set_input_array(inputs[0], 0);
  enc.set_input_array(inputs[1], 1);
  enc.set_input_array(first, 2);
  enc.set_input_array(positions, 3);
  enc.set_output_array(outputs[0], 4);
  enc.set_output_array(outputs[1], 5);
  enc.set_vector_bytes(layouts, 6);
  enc.set_vector_bytes(sizes, 7);
  dispatch_elements(enc, k, size, op);
}

} // namespace

// Inputs l_hi, l_lo, targets, weights [, c_hi, c_lo], the CUDA kernels' steps:
// each row's log-sum-exp (pair_cross_entropy_rows), the weights' total (and
// the forward's loss) in one thread in row order, then the gradient per
// logit; the log-sum-exps and the total as float pairs in scratch words.
void PairCrossEntropy::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  auto& d = mx::metal::device(stream().device);
  auto& enc = prepare(stream(), outputs);
  const char* op =
      gradient_ ? "pair cross_entropy gradient" : "pair cross_entropy";
  const int64_t rows = inputs[0].shape(0), classes = inputs[0].shape(1);
  const mx::array &targets = inputs[2], &weights = inputs[3];
  mx::array log_sum_exp = scratch(enc, rows * sizeof(ff));
  mx::array total = scratch(enc, sizeof(ff));
  const std::vector<RowsLayout> layouts{
      gpu::rows_layout(op, inputs[0]),
      gpu::rows_layout(op, inputs[1]),
      operand_layout(op, targets),
      operand_layout(op, weights)};
  const std::vector<int64_t> sizes{rows, classes, gradient_ ? 0 : 1};
  if (rows > 0) {
    MTL::ComputePipelineState* k =
        kernel(d, kPairLibrary, "pair_cross_entropy_rows");
    enc.set_compute_pipeline_state(k);
    enc.set_input_array(inputs[0], 0);
    enc.set_input_array(inputs[1], 1);
    enc.set_output_array(log_sum_exp, 2);
    enc.set_vector_bytes(layouts, 3);
    enc.set_vector_bytes(sizes, 4);
    dispatch_elements(enc, k, rows, op);
  }
  MTL::ComputePipelineState* k =
      kernel(d, kPairLibrary, "pair_cross_entropy_total");
  enc.set_compute_pipeline_state(k);
  for (int i = 0; i < 4; ++i)
    enc.set_input_array(inputs[i], i);
  enc.set_input_array(log_sum_exp, 4);
  enc.set_output_array(total, 5);
  // The gradient's total pass writes no loss: its slots are bound to total.
  enc.set_output_array(gradient_ ? total : outputs[0], 6);
  enc.set_output_array(gradient_ ? total : outputs[1], 7);
  enc.set_vector_bytes(layouts, 8);
  enc.set_vector_bytes(sizes, 9);
  enc.dispatch_threads(MTL::Size(1, 1, 1), MTL::Size(1, 1, 1));
  if (!gradient_ || outputs[0].size() == 0)
    return;
  k = kernel(d, kPairLibrary, "pair_cross_entropy_grad");
  enc.set_compute_pipeline_state(k);
  for (int i = 0; i < 4; ++i)
    enc.set_input_array(inputs[i], i);
  enc.set_input_array(log_sum_exp, 4);
  enc.set_input_array(total, 5);
  enc.set_input_array(inputs[4], 6);
  enc.set_input_array(inputs[5], 7);
  enc.set_output_array(outputs[0], 8);
  enc.set_output_array(outputs[1], 9);
  enc.set_vector_bytes(layouts, 10);
  enc.set_vector_bytes(sizes, 11);
  dispatch_elements(enc, k, outputs[0].size(), op);
}

} // namespace mlx_precise
