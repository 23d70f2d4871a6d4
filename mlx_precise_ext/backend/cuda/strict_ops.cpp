// eval_gpu for StrictAddmm, StrictLayerNorm and StrictLayerNormVJP on MLX's
// CUDA backend: the kernels of strict_kernels.cuh (compiled by jit.cpp) added
// as nodes of the stream's graph through MLX's cu::CommandEncoder. Operands
// are read through their strides (broadcast included), as on the CPU.
#include <algorithm>
#include <stdexcept>
#include <string>

#include <cuda.h>

#include <mlx/allocator.h>
#include <mlx/backend/cuda/device.h>
#include <mlx/backend/cuda/utils.h>

#include "backend/cuda/jit.h"
#include "backend/gpu/strict_layout.h"
#include "kernels/strict_arith.h"
#include "kernels/strict_params.h"
#include "strict_primitives.h"

namespace mlx_precise {

namespace {

using gpu::addmm_layout;
using gpu::rows_layout;

// The stream's encoder, with each output allocated as MLX's own eval_gpu does.
mx::cu::CommandEncoder&
prepare(mx::Stream s, std::vector<mx::array*> outs, int& device) {
  auto& dev = mx::cu::device(s.device);
  dev.make_current();
  device = dev.cuda_device();
  for (mx::array* o : outs)
    o->set_data(mx::allocator::malloc(o->nbytes()));
  return mx::cu::get_command_encoder(s);
}

// A device buffer that lives until the graph that uses it has run.
mx::array scratch(mx::cu::CommandEncoder& encoder, size_t bytes) {
  mx::array buffer(
      {static_cast<int>((bytes + 7) / 8)}, mx::uint64, nullptr, {});
  buffer.set_data(mx::allocator::malloc(buffer.nbytes()));
  encoder.add_temporary(buffer);
  return buffer;
}

const float*
maybe_ptr(const std::vector<mx::array>& in, bool present, size_t index) {
  return present ? mx::gpu_ptr<float>(in[index]) : nullptr;
}

// The working-precision form of eps the CPU uses
// (backend/cpu/strict_kernels.cpp).
double working_eps(double eps, double) {
  return eps;
}
ff working_eps(double eps, ff) {
  return dd_from_double(eps);
}

const char* type_name(double) {
  return "double";
}
const char* type_name(ff) {
  return "mlx_precise::ff";
}

std::string kernel_name(const char* kernel, const char* type) {
  return std::string("mlx_precise::gpu::") + kernel + "<" + type + ">";
}

// add_kernel_node_ex takes its kernel arguments' addresses as void*: the
// arguments are passed here by value so that each is a mutable lvalue.
template <class... Args>
void launch(
    mx::cu::CommandEncoder& encoder,
    CUfunction kernel,
    dim3 grid,
    dim3 block,
    Args... args) {
  encoder.add_kernel_node_ex(kernel, grid, block, {}, 0u, args...);
}

// Grid of blocks of kRowsPerBlock warps (8 rows per block) for `rows` rows.
unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>(std::min<int64_t>((rows + 7) / 8, 1 << 20));
}

// Whether the device has the FP64 tensor-core mma (compute capability 8.0+).
bool fp64_mma(int device) {
  static int cached[64]; // 0 unknown, 1 no, 2 yes
  int& c = cached[device & 63];
  if (c == 0) {
    int major = 0;
    CUdevice dev;
    if (cuDeviceGet(&dev, device) != CUDA_SUCCESS ||
        cuDeviceGetAttribute(
            &major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev) !=
            CUDA_SUCCESS)
      major = 0;
    c = major >= 8 ? 2 : 1;
  }
  return c == 2;
}

} // namespace

void StrictAddmm::eval_gpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  int device = 0;
  auto& encoder = prepare(stream(), {&out}, device);
  if (out.size() == 0)
    return;
  const AddmmLayout l = addmm_layout(inputs, out, alpha_, beta_, has_c_);
  const float* a = mx::gpu_ptr<float>(inputs[0]);
  const float* b = mx::gpu_ptr<float>(inputs[1]);
  const float* c = maybe_ptr(inputs, has_c_, 2);
  float* o = mx::gpu_ptr<float>(out);
  const dim3 grid(
      (l.n + 63) / 64,
      (l.m + 63) / 64,
      static_cast<unsigned>(std::min<int64_t>(l.batches, 65535)));
  for (const auto& x : inputs)
    encoder.set_input_array(x);
  if (precision_ == Precision::DoubleDouble) {
    encoder.set_output_array(out);
    launch(
        encoder,
        cuda::get_strict_kernel(
            device,
            "mlx_precise::gpu::addmm_tiles<mlx_precise::gpu::DoubleWordDot>"),
        grid,
        dim3(256),
        a,
        b,
        c,
        o,
        l,
        static_cast<const double*>(nullptr));
    return;
  }
  // Extended: row / column norms for the error bound, then the float64
  // product, certified (or recomputed) per output.
  const int64_t norm_count = l.batches * (static_cast<int64_t>(l.m) + l.n);
  mx::array norms_buffer = scratch(encoder, norm_count * sizeof(double));
  double* norms = static_cast<double*>(mx::gpu_ptr<void>(norms_buffer));
  encoder.set_output_array(norms_buffer);
  launch(
      encoder,
      cuda::get_strict_kernel(device, "mlx_precise::gpu::addmm_norms"),
      dim3(
          static_cast<unsigned>(
              std::min<int64_t>((norm_count + 7) / 8, 1 << 20))),
      dim3(256),
      a,
      b,
      l,
      norms);
  for (const auto& x : inputs)
    encoder.set_input_array(x);
  encoder.set_input_array(norms_buffer);
  encoder.set_output_array(out);
  // sm_80+: the FP64 tensor cores (addmm_dmma, 64 x 64 tiles of 128 threads);
  // older devices: the scalar double tiles. Both certify every output.
  if (fp64_mma(device)) {
    launch(
        encoder,
        cuda::get_strict_kernel(device, "mlx_precise::gpu::addmm_dmma"),
        grid,
        dim3(128),
        a,
        b,
        c,
        o,
        l,
        static_cast<const double*>(norms));
    return;
  }
  launch(
      encoder,
      cuda::get_strict_kernel(
          device,
          "mlx_precise::gpu::addmm_tiles<mlx_precise::gpu::Float64Dot>"),
      grid,
      dim3(256),
      a,
      b,
      c,
      o,
      l,
      static_cast<const double*>(norms));
}

// "extended" computes in double, "dd" in float pairs.
template <class Fn>
void with_strict_type(Precision p, Fn fn) {
  if (p == Precision::DoubleDouble)
    fn(ff{});
  else
    fn(double{});
}

void StrictLayerNorm::eval_gpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  int device = 0;
  auto& encoder = prepare(stream(), {&out}, device);
  if (out.size() == 0)
    return;
  const mx::array& x = inputs[0];
  const int dim = x.shape(-1);
  const int64_t rows = static_cast<int64_t>(x.size()) / dim;
  const RowsLayout xl = rows_layout("layer_norm", x);
  const float* w = maybe_ptr(inputs, has_weight_, 1);
  const int bias_index = has_weight_ ? 2 : 1;
  const float* bias = maybe_ptr(inputs, has_bias_, bias_index);
  const MP_INT64 w_stride = has_weight_ ? inputs[1].strides()[0] : 0;
  const MP_INT64 b_stride = has_bias_ ? inputs[bias_index].strides()[0] : 0;
  const float* xp = mx::gpu_ptr<float>(x);
  float* y = mx::gpu_ptr<float>(out);
  for (const auto& in : inputs)
    encoder.set_input_array(in);
  encoder.set_output_array(out);
  with_strict_type(precision_, [&](auto tag) {
    const auto eps = working_eps(eps_, tag);
    launch(
        encoder,
        cuda::get_strict_kernel(
            device, kernel_name("layer_norm_rows", type_name(tag))),
        dim3(row_blocks(rows)),
        dim3(256),
        xp,
        xl,
        w,
        w_stride,
        bias,
        b_stride,
        y,
        static_cast<MP_INT64>(rows),
        dim,
        eps);
  });
}

void StrictLayerNormVJP::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  int device = 0;
  std::vector<mx::array*> outs;
  for (auto& o : outputs)
    outs.push_back(&o);
  auto& encoder = prepare(stream(), outs, device);
  const mx::array& x = inputs[0];
  const mx::array& g = inputs.back();
  const int dim = x.shape(-1);
  const int64_t rows = dim == 0 ? 0 : static_cast<int64_t>(x.size()) / dim;
  size_t slot = 0;
  float* grad_x = want_x_ ? mx::gpu_ptr<float>(outputs[slot++]) : nullptr;
  mx::array* grad_w_array = want_weight_ ? &outputs[slot++] : nullptr;
  mx::array* grad_b_array = want_bias_ ? &outputs[slot++] : nullptr;
  if (dim == 0)
    return;
  const RowsLayout xl = rows_layout("layer_norm gradient", x);
  const RowsLayout gl = rows_layout("layer_norm gradient", g);
  const float* w = maybe_ptr(inputs, has_weight_, 1);
  const MP_INT64 w_stride = has_weight_ ? inputs[1].strides()[0] : 0;
  const float* xp = mx::gpu_ptr<float>(x);
  const float* gp = mx::gpu_ptr<float>(g);
  const bool want_params = want_weight_ || want_bias_;
  with_strict_type(precision_, [&](auto tag) {
    using T = decltype(tag);
    const T eps = working_eps(eps_, tag);
    std::optional<mx::array> stats_buffer;
    LayerNormStats<T>* stats = nullptr;
    if (want_params) {
      stats_buffer = scratch(encoder, rows * sizeof(LayerNormStats<T>));
      stats = static_cast<LayerNormStats<T>*>(mx::gpu_ptr<void>(*stats_buffer));
    }
    for (const auto& in : inputs)
      encoder.set_input_array(in);
    if (want_x_)
      encoder.set_output_array(outputs[0]);
    if (stats_buffer)
      encoder.set_output_array(*stats_buffer);
    if (rows > 0) {
      launch(
          encoder,
          cuda::get_strict_kernel(
              device, kernel_name("layer_norm_grad_rows", type_name(tag))),
          dim3(row_blocks(rows)),
          dim3(256),
          xp,
          xl,
          w,
          w_stride,
          gp,
          gl,
          grad_x,
          stats,
          static_cast<MP_INT64>(rows),
          dim,
          eps);
    }
    if (!want_params)
      return;
    for (const auto& in : inputs)
      encoder.set_input_array(in);
    encoder.set_input_array(*stats_buffer);
    if (grad_w_array)
      encoder.set_output_array(*grad_w_array);
    if (grad_b_array)
      encoder.set_output_array(*grad_b_array);
    float* grad_w = grad_w_array ? mx::gpu_ptr<float>(*grad_w_array) : nullptr;
    float* grad_b = grad_b_array ? mx::gpu_ptr<float>(*grad_b_array) : nullptr;
    launch(
        encoder,
        cuda::get_strict_kernel(
            device, kernel_name("layer_norm_param_grads", type_name(tag))),
        dim3((dim + 127) / 128),
        dim3(128),
        xp,
        xl,
        gp,
        gl,
        static_cast<const LayerNormStats<T>*>(stats),
        grad_w,
        grad_b,
        static_cast<MP_INT64>(rows),
        dim,
        eps);
  });
}

} // namespace mlx_precise
