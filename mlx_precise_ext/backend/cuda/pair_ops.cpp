// eval_gpu of the pair ops on MLX's CUDA backend: PairElementwise and
// PairLayerNorm run the kernels of pair_kernels.cuh (compiled by jit.cpp) as
// nodes of the stream's graph through MLX's cu::CommandEncoder, operands read
// through their strides. PairAddmm and PairRFFTConv have no CUDA kernels yet:
// a clear error, never a silent move to the CPU.
#include <algorithm>
#include <stdexcept>
#include <string>

#include <cuda.h>

#include <mlx/backend/cuda/utils.h>

#include "backend/cuda/encoder.h"
#include "backend/cuda/jit.h"
#include "backend/gpu/strict_layout.h"
#include "kernels/strict_params.h"
#include "pair_primitives.h"

namespace mlx_precise {

namespace {

using cuda::launch;

// The stream's encoder with the outputs allocated and every operand bound.
mx::cu::CommandEncoder& prepare_bound(
    mx::Stream s,
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs,
    int& device) {
  std::vector<mx::array*> outs;
  for (auto& o : outputs)
    outs.push_back(&o);
  auto& encoder = cuda::prepare(s, outs, device);
  for (const auto& x : inputs)
    encoder.set_input_array(x);
  for (const auto& o : outputs)
    encoder.set_output_array(o);
  return encoder;
}

// An operand as rows of its last axis (a 0-d array: one row of one element).
RowsLayout operand_layout(const char* op, const mx::array& x) {
  if (x.ndim() == 0)
    return RowsLayout{};
  return gpu::rows_layout(op, x);
}

[[noreturn]] void not_on_cuda(const char* op) {
  throw std::runtime_error(
      std::string(op) +
      ": no CUDA kernel yet (the pair ops' elementwise functions and "
      "layer_norm have one); pass stream=mx.cpu");
}

} // namespace

void PairElementwise::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  int device = 0;
  auto& encoder = prepare_bound(stream(), inputs, outputs, device);
  const int64_t size = outputs[0].size();
  if (size == 0)
    return;
  const bool binary = inputs.size() == 4;
  // Unary ops bind x again as the unread y operands.
  const mx::array& y_hi = binary ? inputs[2] : inputs[0];
  const mx::array& y_lo = binary ? inputs[3] : inputs[1];
  const char* name = pair_op_name(op_);
  const MP_INT64 inner =
      outputs[0].ndim() == 0 ? 1 : static_cast<MP_INT64>(outputs[0].shape(-1));
  launch(
      encoder,
      cuda::get_pair_kernel(device, "mlx_precise::gpu::pair_elementwise"),
      dim3(
          static_cast<unsigned>(
              std::min<int64_t>((size + 255) / 256, 1 << 20))),
      dim3(256),
      mx::gpu_ptr<float>(inputs[0]),
      operand_layout(name, inputs[0]),
      mx::gpu_ptr<float>(inputs[1]),
      operand_layout(name, inputs[1]),
      mx::gpu_ptr<float>(y_hi),
      operand_layout(name, y_hi),
      mx::gpu_ptr<float>(y_lo),
      operand_layout(name, y_lo),
      mx::gpu_ptr<float>(outputs[0]),
      mx::gpu_ptr<float>(outputs[1]),
      static_cast<MP_INT64>(size),
      inner,
      static_cast<int>(op_),
      binary ? 1 : 0);
}

void PairLayerNorm::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  int device = 0;
  auto& encoder = prepare_bound(stream(), inputs, outputs, device);
  if (outputs[0].size() == 0)
    return;
  const mx::array& x_hi = inputs[0];
  const int dim = x_hi.shape(-1);
  const int64_t rows = static_cast<int64_t>(x_hi.size()) / dim;
  const int bias_index = has_weight_ ? 3 : 2;
  const float* w = has_weight_ ? mx::gpu_ptr<float>(inputs[2]) : nullptr;
  const float* b = has_bias_ ? mx::gpu_ptr<float>(inputs[bias_index]) : nullptr;
  const MP_INT64 w_stride = has_weight_ ? inputs[2].strides()[0] : 0;
  const MP_INT64 b_stride = has_bias_ ? inputs[bias_index].strides()[0] : 0;
  launch(
      encoder,
      cuda::get_pair_kernel(device, "mlx_precise::gpu::pair_layer_norm_rows"),
      dim3(static_cast<unsigned>(std::min<int64_t>((rows + 7) / 8, 1 << 20))),
      dim3(256),
      mx::gpu_ptr<float>(x_hi),
      gpu::rows_layout("pair layer_norm", x_hi),
      mx::gpu_ptr<float>(inputs[1]),
      gpu::rows_layout("pair layer_norm", inputs[1]),
      w,
      w_stride,
      b,
      b_stride,
      mx::gpu_ptr<float>(outputs[0]),
      mx::gpu_ptr<float>(outputs[1]),
      static_cast<MP_INT64>(rows),
      dim,
      eps_);
}

void PairAddmm::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  not_on_cuda("pair addmm / linear");
}

void PairRFFTConv::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  not_on_cuda("pair rfft_conv");
}

} // namespace mlx_precise
