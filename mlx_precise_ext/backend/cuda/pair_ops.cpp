// eval_gpu of the pair ops on MLX's CUDA backend: PairElementwise,
// PairLayerNorm and PairAddmm run the kernels of pair_kernels.cuh (compiled by
// jit.cpp) as nodes of the stream's graph through MLX's cu::CommandEncoder,
// operands read through their strides; PairAddmm's product is cuBLASLt's
// float64 GEMM (blas.h). PairRFFTConv runs the rfft_conv engine
// (backend/cuda/rfft_conv.cpp).
#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda.h>

#include <mlx/allocator.h>
#include <mlx/backend/cuda/utils.h>

#include "backend/cuda/blas.h"
#include "backend/cuda/encoder.h"
#include "backend/cuda/jit.h"
#include "backend/cuda/pair_operand.h"
#include "backend/gpu/pair_grad_layout.h"
#include "backend/gpu/strict_layout.h"
#include "kernels/strict_params.h"
#include "pair_primitives.h"
#include "pair_vjp_primitives.h"

namespace mlx_precise {

// Every kernel of pair_kernels.cuh (one module, compiled at first use).
std::vector<std::string> cuda::pair_kernel_names() {
  return {
      "mlx_precise::gpu::pair_elementwise",
      "mlx_precise::gpu::pair_layer_norm_rows",
      "mlx_precise::gpu::pair_pack_operand",
      "mlx_precise::gpu::pair_addmm_finish",
      "mlx_precise::gpu::pair_gather_rows",
      "mlx_precise::gpu::pair_kernel_spectra<true>",
      "mlx_precise::gpu::pair_kernel_spectra<false>",
      "mlx_precise::gpu::pair_conv_rows<true>",
      "mlx_precise::gpu::pair_conv_rows<false>",
      "mlx_precise::gpu::pair_sum_to",
      "mlx_precise::gpu::pair_rows_positions",
      "mlx_precise::gpu::pair_scatter_add_rows",
      "mlx_precise::gpu::pair_layer_norm_vjp_rows",
      "mlx_precise::gpu::pair_cross_entropy_rows",
      "mlx_precise::gpu::pair_cross_entropy_total",
      "mlx_precise::gpu::pair_cross_entropy_grad"};
}

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

// A pair operand (hi, lo) as the kernels take it.
PairOperand
pair_operand(const char* op, const mx::array& hi, const mx::array& lo) {
  return PairOperand{
      mx::gpu_ptr<float>(hi),
      operand_layout(op, hi),
      mx::gpu_ptr<float>(lo),
      operand_layout(op, lo)};
}

// Blocks of 256 threads for a grid-stride loop over `total` elements.
dim3 stride_grid(int64_t total) {
  return dim3(
      static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 1 << 20)));
}

// The pair kernel `kernel` (a name expression of pair_kernel_names()) as a
// grid-stride loop over `total` elements, 256 threads per block.
template <class... Args>
void launch_elements(
    mx::cu::CommandEncoder& encoder,
    int device,
    const char* kernel,
    int64_t total,
    Args... args) {
  launch(
      encoder,
      cuda::get_pair_kernel(device, kernel),
      stride_grid(total),
      dim3(256),
      args...);
}

// The pair kernel `kernel` in one thread (the CPU's sequential order).
template <class... Args>
void launch_one_thread(
    mx::cu::CommandEncoder& encoder,
    int device,
    const char* kernel,
    Args... args) {
  launch(
      encoder,
      cuda::get_pair_kernel(device, kernel),
      dim3(1),
      dim3(1),
      args...);
}

// Registers the inputs and the buffers written so far (outputs, scratch), so
// that the nodes of one eval run in order.
void register_all(
    mx::cu::CommandEncoder& encoder,
    const std::vector<mx::array>& inputs,
    const std::vector<mx::array>& written) {
  for (const auto& x : inputs)
    encoder.set_input_array(x);
  for (const auto& x : written)
    encoder.set_output_array(x);
}

// A block per row for `rows` rows (grid-stride beyond 2^20 rows).
dim3 row_grid(int64_t rows) {
  return dim3(static_cast<unsigned>(std::min<int64_t>(rows, 1 << 20)));
}

// A device buffer of `doubles` 8-byte words (held as uint64: MLX arrays on
// the GPU are never float64) that lives until the graph has run: for the
// gradients' small buffers (a double per row, an index per id), which add
// little even when a whole backward is enqueued before its graphs run.
mx::array
scratch(mx::cu::CommandEncoder& encoder, int64_t doubles, const char* op) {
  if (doubles > std::numeric_limits<int>::max())
    throw std::invalid_argument(
        std::string(op) +
        ": an operand above 2^31 - 1 elements on the GPU; split the batch");
  mx::array buffer(
      {static_cast<int>(std::max<int64_t>(doubles, 1))},
      mx::uint64,
      nullptr,
      {});
  buffer.set_data(cuda::device_malloc(encoder, buffer.nbytes()));
  encoder.add_temporary(buffer);
  return buffer;
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
  launch_elements(
      encoder,
      device,
      "mlx_precise::gpu::pair_elementwise",
      size,
      pair_operand(name, inputs[0], inputs[1]),
      pair_operand(name, y_hi, y_lo),
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
      pair_operand("pair layer_norm", x_hi, inputs[1]),
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

// a and b (pairs) widened to doubles, their float64 product, then + c and
// the split into pairs. Each node registers the inputs and every buffer
// written so far, so the nodes run in order.
void PairAddmm::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  int device = 0;
  auto& encoder = prepare_bound(stream(), inputs, outputs, device);
  if (outputs[0].size() == 0)
    return;
  // Layouts over (a, b[, c]): with the hi parts of a and b, and with their
  // lo parts (inputs a_hi, a_lo, b_hi, b_lo [, c]).
  std::vector<mx::array> hi_operands{inputs[0], inputs[2]};
  if (has_c_)
    hi_operands.push_back(inputs[4]);
  std::vector<mx::array> lo_operands = hi_operands;
  lo_operands[0] = inputs[1];
  lo_operands[1] = inputs[3];
  const AddmmLayout l =
      gpu::addmm_layout(hi_operands, outputs[0], 1.0f, 1.0f, has_c_);
  const AddmmLayout l_lo =
      gpu::addmm_layout(lo_operands, outputs[0], 1.0f, 1.0f, has_c_);
  if (l.batches > std::numeric_limits<int>::max())
    throw std::invalid_argument(
        "pair addmm / linear: more than 2^31 - 1 batches on the GPU; split "
        "the batch");
  const int batches = static_cast<int>(l.batches);
  std::vector<mx::array> written(outputs);
  const double* product = nullptr;
  if (l.k > 0) {
    const int64_t m = l.m, n = l.n, k = l.k;
    // a and b widened, and the product, in the stream's buffer (shared with
    // the stream's other products: per-call buffers are held until their
    // graph has run, and MLX enqueues a whole forward first).
    const int64_t doubles = l.batches * (m * k + k * n + m * n);
    if (doubles > std::numeric_limits<int>::max())
      throw std::invalid_argument(
          "pair addmm / linear: operands above 2^31 - 1 elements on the GPU; "
          "split the batch");
    written.push_back(
        cuda::stream_buffer(
            encoder,
            device,
            stream().index,
            cuda::StreamBuffer::WideOperands,
            doubles * sizeof(double)));
    double* a_data = static_cast<double*>(mx::gpu_ptr<void>(written.back()));
    double* b_data = a_data + l.batches * m * k;
    double* out_data = b_data + l.batches * k * n;
    // a (inputs 0, 1) into a_data, then b (inputs 2, 3) into b_data.
    for (int operand_b = 0; operand_b < 2; ++operand_b) {
      register_all(encoder, inputs, written);
      launch_elements(
          encoder,
          device,
          "mlx_precise::gpu::pair_pack_operand",
          operand_b ? l.batches * k * n : l.batches * m * k,
          mx::gpu_ptr<float>(inputs[2 * operand_b]),
          l,
          mx::gpu_ptr<float>(inputs[2 * operand_b + 1]),
          l_lo,
          operand_b,
          operand_b ? b_data : a_data);
    }
    register_all(encoder, inputs, written);
    cuda::gemm(
        encoder,
        device,
        stream().index,
        cuda::GemmType::Float64,
        l.m,
        l.n,
        l.k,
        batches,
        cuda::GemmOperand{a_data, false, k, m * k},
        cuda::GemmOperand{b_data, false, n, k * n},
        out_data,
        1.0,
        0.0);
    product = out_data;
  }
  register_all(encoder, inputs, written);
  launch(
      encoder,
      cuda::get_pair_kernel(device, "mlx_precise::gpu::pair_addmm_finish"),
      row_grid(l.batches * l.m),
      dim3(256),
      product,
      has_c_ ? static_cast<const float*>(mx::gpu_ptr<float>(inputs[4]))
             : static_cast<const float*>(nullptr),
      l,
      mx::gpu_ptr<float>(outputs[0]),
      mx::gpu_ptr<float>(outputs[1]));
}

namespace {
void scatter_add_rows(
    mx::Stream s,
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs);
} // namespace

// Gather (the forward of pair take_rows, M2-BERT's exact embeddings) runs
// pair_gather_rows; ScatterAdd, its gradient, the counting sort of
// pair_rows_positions and then pair_scatter_add_rows (the CPU's order).
void PairRows::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  if (variant_ == Variant::ScatterAdd)
    return scatter_add_rows(stream(), inputs, outputs);
  int device = 0;
  auto& encoder = prepare_bound(stream(), inputs, outputs, device);
  const int64_t size = outputs[0].size();
  if (size == 0)
    return;
  const mx::array& ids = inputs[2];
  const int64_t dim = outputs[0].shape(-1);
  launch_elements(
      encoder,
      device,
      "mlx_precise::gpu::pair_gather_rows",
      size,
      pair_operand("pair take_rows", inputs[0], inputs[1]),
      mx::gpu_ptr<int32_t>(ids),
      operand_layout("pair take_rows", ids),
      static_cast<MP_INT64>(ids.ndim() == 0 ? 1 : ids.shape(-1)),
      static_cast<MP_INT64>(inputs[0].shape(0)),
      static_cast<MP_INT64>(dim),
      static_cast<MP_INT64>(size / std::max<int64_t>(dim, 1)),
      mx::gpu_ptr<float>(outputs[0]),
      mx::gpu_ptr<float>(outputs[1]));
}

// ------------------------------------------------------------- gradients ----
// The gradients' pair primitives (pair_vjp_primitives.h): the kernels of
// pair_kernels.cuh's gradients section, each the CPU's arithmetic
// (kernels/pair_grad.h) in the CPU's order. Each node registers the inputs
// and every buffer written so far, so the nodes of one eval run in order.

namespace {

double* doubles_of(const mx::array& buffer) {
  return static_cast<double*>(mx::gpu_ptr<void>(buffer));
}

} // namespace

// in (hi, lo) summed to out's shape (aligned right; dims of 1 and missing
// leading dims summed), one thread per output (pair_sum_to).
void PairSum::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  int device = 0;
  auto& encoder = prepare_bound(stream(), inputs, outputs, device);
  const int64_t size = outputs[0].size();
  if (size == 0)
    return;
  const mx::array &hi = inputs[0], &lo = inputs[1];
  const gpu::PairSumLayout l = gpu::pair_sum_layout(
      hi.shape(), hi.strides(), lo.strides(), outputs[0].shape());
  launch_elements(
      encoder,
      device,
      "mlx_precise::gpu::pair_sum_to",
      size,
      mx::gpu_ptr<float>(hi),
      mx::gpu_ptr<float>(lo),
      l.kept_hi,
      l.kept_lo,
      l.summed_hi,
      l.summed_lo,
      static_cast<MP_INT64>(size),
      static_cast<MP_INT64>(l.terms),
      mx::gpu_ptr<float>(outputs[0]),
      mx::gpu_ptr<float>(outputs[1]));
}

namespace {

// ScatterAdd: inputs g_hi, g_lo (ids.shape + (D,)), ids; outputs (V, D).
void scatter_add_rows(
    mx::Stream s,
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  int device = 0;
  auto& encoder = prepare_bound(s, inputs, outputs, device);
  const int64_t size = outputs[0].size();
  if (size == 0)
    return;
  const mx::array& ids = inputs[2];
  const int64_t table_rows = outputs[0].shape(0), dim = outputs[0].shape(-1);
  const int64_t count = ids.size();
  // Int64 words in uint64 buffers (scratch counts 8-byte words).
  mx::array first = scratch(encoder, table_rows + 1, "pair take_rows gradient");
  mx::array positions =
      scratch(encoder, std::max<int64_t>(count, 1), "pair take_rows gradient");
  std::vector<mx::array> written(outputs);
  written.insert(written.end(), {first, positions});
  auto* first_data = static_cast<MP_INT64*>(mx::gpu_ptr<void>(first));
  auto* positions_data = static_cast<MP_INT64*>(mx::gpu_ptr<void>(positions));
  register_all(encoder, inputs, written);
  launch_one_thread(
      encoder,
      device,
      "mlx_precise::gpu::pair_rows_positions",
      mx::gpu_ptr<int32_t>(ids),
      operand_layout("pair take_rows gradient", ids),
      static_cast<MP_INT64>(ids.ndim() == 0 ? 1 : ids.shape(-1)),
      static_cast<MP_INT64>(count),
      static_cast<MP_INT64>(table_rows),
      first_data,
      positions_data);
  register_all(encoder, inputs, written);
  launch_elements(
      encoder,
      device,
      "mlx_precise::gpu::pair_scatter_add_rows",
      size,
      pair_operand("pair take_rows gradient", inputs[0], inputs[1]),
      static_cast<const MP_INT64*>(first_data),
      static_cast<const MP_INT64*>(positions_data),
      static_cast<MP_INT64>(table_rows),
      static_cast<MP_INT64>(dim),
      mx::gpu_ptr<float>(outputs[0]),
      mx::gpu_ptr<float>(outputs[1]));
}

} // namespace

// Inputs x_hi, x_lo [, weight], g_hi, g_lo; outputs dx, g xhat (pairs), one
// thread per row (pair_layer_norm_vjp_rows).
void PairLayerNormVJP::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  int device = 0;
  auto& encoder = prepare_bound(stream(), inputs, outputs, device);
  if (outputs[0].size() == 0)
    return;
  const char* op = "pair layer_norm gradient";
  const int64_t dim = inputs[0].shape(-1);
  const int64_t rows = static_cast<int64_t>(inputs[0].size()) / dim;
  const int g = has_weight_ ? 3 : 2;
  launch_elements(
      encoder,
      device,
      "mlx_precise::gpu::pair_layer_norm_vjp_rows",
      rows,
      pair_operand(op, inputs[0], inputs[1]),
      has_weight_ ? static_cast<const float*>(mx::gpu_ptr<float>(inputs[2]))
                  : static_cast<const float*>(nullptr),
      static_cast<MP_INT64>(has_weight_ ? inputs[2].strides()[0] : 0),
      pair_operand(op, inputs[g], inputs[g + 1]),
      static_cast<MP_INT64>(rows),
      static_cast<MP_INT64>(dim),
      eps_,
      mx::gpu_ptr<float>(outputs[0]),
      mx::gpu_ptr<float>(outputs[1]),
      mx::gpu_ptr<float>(outputs[2]),
      mx::gpu_ptr<float>(outputs[3]));
}

// Inputs l_hi, l_lo, targets, weights [, c_hi, c_lo]: each row's
// log-sum-exp (a thread per row), the weights' total (and the forward's
// loss) in one thread in row order, then the gradient per logit.
void PairCrossEntropy::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  int device = 0;
  auto& encoder = prepare_bound(stream(), inputs, outputs, device);
  const char* op =
      gradient_ ? "pair cross_entropy gradient" : "pair cross_entropy";
  const int64_t rows = inputs[0].shape(0), classes = inputs[0].shape(1);
  const PairOperand logits = pair_operand(op, inputs[0], inputs[1]);
  mx::array log_sum_exp = scratch(encoder, std::max<int64_t>(rows, 1), op);
  mx::array total = scratch(encoder, 1, op);
  std::vector<mx::array> written(outputs);
  written.insert(written.end(), {log_sum_exp, total});
  const mx::array &targets = inputs[2], &weights = inputs[3];
  if (rows > 0) {
    register_all(encoder, inputs, written);
    launch_elements(
        encoder,
        device,
        "mlx_precise::gpu::pair_cross_entropy_rows",
        rows,
        logits,
        static_cast<MP_INT64>(rows),
        static_cast<MP_INT64>(classes),
        doubles_of(log_sum_exp));
  }
  register_all(encoder, inputs, written);
  launch_one_thread(
      encoder,
      device,
      "mlx_precise::gpu::pair_cross_entropy_total",
      logits,
      mx::gpu_ptr<int32_t>(targets),
      operand_layout(op, targets),
      mx::gpu_ptr<float>(weights),
      operand_layout(op, weights),
      static_cast<MP_INT64>(rows),
      static_cast<MP_INT64>(classes),
      static_cast<const double*>(doubles_of(log_sum_exp)),
      doubles_of(total),
      gradient_ ? static_cast<float*>(nullptr) : mx::gpu_ptr<float>(outputs[0]),
      gradient_ ? static_cast<float*>(nullptr)
                : mx::gpu_ptr<float>(outputs[1]));
  if (!gradient_ || outputs[0].size() == 0)
    return;
  register_all(encoder, inputs, written);
  launch_elements(
      encoder,
      device,
      "mlx_precise::gpu::pair_cross_entropy_grad",
      rows * classes,
      logits,
      mx::gpu_ptr<int32_t>(targets),
      operand_layout(op, targets),
      mx::gpu_ptr<float>(weights),
      operand_layout(op, weights),
      static_cast<const float*>(mx::gpu_ptr<float>(inputs[4])),
      static_cast<const float*>(mx::gpu_ptr<float>(inputs[5])),
      static_cast<MP_INT64>(rows),
      static_cast<MP_INT64>(classes),
      static_cast<const double*>(doubles_of(log_sum_exp)),
      static_cast<const double*>(doubles_of(total)),
      mx::gpu_ptr<float>(outputs[0]),
      mx::gpu_ptr<float>(outputs[1]));
}

} // namespace mlx_precise
