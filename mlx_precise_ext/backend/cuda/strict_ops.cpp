// eval_gpu for StrictAddmm, StrictLayerNorm and StrictLayerNormVJP on MLX's
// CUDA backend: the kernels of strict_kernels.cuh (compiled by jit.cpp) added
// as nodes of the stream's graph through MLX's cu::CommandEncoder. Operands
// are read through their strides (broadcast included), as on the CPU.
#include <algorithm>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda.h>

#include <mlx/allocator.h>
#include <mlx/backend/cuda/device.h>
#include <mlx/backend/cuda/utils.h>

#include "backend/cuda/blas.h"
#include "backend/cuda/encoder.h"
#include "backend/cuda/jit.h"
#include "backend/gpu/strict_layout.h"
#include "kernels/layer_norm_certify.h"
#include "kernels/strict_arith.h"
#include "kernels/strict_params.h"
#include "strict_primitives.h"

namespace mlx_precise {

// Every kernel of strict_kernels.cuh (one module, compiled at first use).
std::vector<std::string> cuda::strict_kernel_names() {
  return {
      "mlx_precise::gpu::addmm_pack_wide",
      "mlx_precise::gpu::pack_operand<float>",
      "mlx_precise::gpu::fill_from_c",
      "mlx_precise::gpu::addmm_certify",
      "mlx_precise::gpu::addmm_recompute",
      "mlx_precise::gpu::layer_norm_rows<double>",
      "mlx_precise::gpu::layer_norm_recompute<double>",
      "mlx_precise::gpu::layer_norm_grad_rows<double>",
      "mlx_precise::gpu::layer_norm_grad_x_recompute<double>",
      "mlx_precise::gpu::layer_norm_param_grads<double>",
      "mlx_precise::gpu::layer_norm_wide_rows",
      "mlx_precise::gpu::layer_norm_weight_recompute"};
}

namespace {

using cuda::launch;
using cuda::prepare;
using cuda::scratch;
using cuda::stream_buffer;
using cuda::StreamBuffer;
using gpu::addmm_layout;
using gpu::rows_layout;

const float*
maybe_ptr(const std::vector<mx::array>& in, bool present, size_t index) {
  return present ? mx::gpu_ptr<float>(in[index]) : nullptr;
}

const char* type_name(float) {
  return "float";
}
const char* type_name(double) {
  return "double";
}

std::string kernel_name(const char* kernel, const char* type) {
  return std::string("mlx_precise::gpu::") + kernel + "<" + type + ">";
}

// Grid of 256-thread blocks for a grid-stride loop over `count` elements.
dim3 stride_grid(int64_t count) {
  return dim3(
      static_cast<unsigned>(std::min<int64_t>((count + 255) / 256, 1 << 20)));
}

// Whether operand a (m, k) or b (k, n) is read in its transposed orientation:
// when its row stride, not its column stride, is the unit one.
bool reads_transposed(const AddmmLayout& l, bool operand_b) {
  const MP_INT64 row = operand_b ? l.b_row : l.a_row;
  const MP_INT64 col = operand_b ? l.b_col : l.a_col;
  return col != 1 && row == 1;
}

// The operand as the library can read it in place (float32 only): one unit
// stride, a leading dimension covering the other axis, and batches equally
// spaced. Otherwise nullopt, and it is packed.
std::optional<cuda::GemmOperand>
in_place(const float* data, const AddmmLayout& l, bool operand_b) {
  const int64_t rows = operand_b ? l.k : l.m;
  const int64_t cols = operand_b ? l.n : l.k;
  const MP_INT64 row = operand_b ? l.b_row : l.a_row;
  const MP_INT64 col = operand_b ? l.b_col : l.a_col;
  const bool transposed = reads_transposed(l, operand_b);
  const int64_t ld = transposed ? col : row;
  if ((transposed ? row : col) != 1 || ld < (transposed ? rows : cols))
    return std::nullopt;
  // The flat batch index must advance one constant stride.
  const MP_INT64* strides = operand_b ? l.b_batch : l.a_batch;
  int64_t batch_stride = 0, span = 0;
  for (int d = l.batch_dims - 1; d >= 0; --d) {
    if (l.batch_shape[d] == 1)
      continue;
    if (span == 0) {
      batch_stride = strides[d];
      span = l.batch_shape[d];
    } else if (strides[d] != batch_stride * span) {
      return std::nullopt;
    } else {
      span *= l.batch_shape[d];
    }
  }
  if (l.batches > 1 && batch_stride <= 0)
    return std::nullopt;
  return cuda::GemmOperand{data, transposed, ld, batch_stride};
}

// Packs operand a (its rows [row0, row0 + rows)) or b of the batches
// [batch0, batch0 + batch_count) to `dst` as T (pack_operand), row-major or,
// when `transposed`, column-major, and describes the copy. `order` lists the
// buffers every node of the product registers as outputs (dst's among them), so
// the nodes run in order and may reuse them.
template <class T>
cuda::GemmOperand pack(
    mx::cu::CommandEncoder& encoder,
    int device,
    const mx::array& source,
    const AddmmLayout& l,
    bool operand_b,
    int64_t batch0,
    int batch_count,
    int row0,
    int rows,
    bool transposed,
    T* dst,
    const std::vector<mx::array>& order) {
  const int cols = operand_b ? l.n : l.k;
  encoder.set_input_array(source);
  for (const auto& x : order)
    encoder.set_output_array(x);
  launch(
      encoder,
      cuda::get_strict_kernel(
          device, kernel_name("pack_operand", type_name(T{}))),
      stride_grid(static_cast<int64_t>(batch_count) * rows * cols),
      dim3(256),
      mx::gpu_ptr<float>(source),
      l,
      static_cast<int>(operand_b),
      static_cast<MP_INT64>(batch0),
      batch_count,
      row0,
      rows,
      static_cast<int>(transposed),
      dst);
  return cuda::GemmOperand{
      dst,
      transposed,
      transposed ? rows : cols,
      static_cast<int64_t>(rows) * cols};
}

int checked_batches(const AddmmLayout& l) {
  if (l.batches > std::numeric_limits<int>::max())
    throw std::invalid_argument(
        "addmm / linear: more than 2^31 - 1 batches on the GPU; split the "
        "batch");
  return static_cast<int>(l.batches);
}

// "float32" on CUDA: the library's float32 GEMM (CUBLAS_COMPUTE_32F, never
// TF32, whatever MLX_ENABLE_TF32 says for MLX's own matmuls), out = alpha
// a @ b + beta c with c broadcast into out first.
void float32_addmm(
    mx::cu::CommandEncoder& encoder,
    int device,
    int stream_index,
    const std::vector<mx::array>& inputs,
    mx::array& out,
    const AddmmLayout& l) {
  float* o = mx::gpu_ptr<float>(out);
  const float* c = maybe_ptr(inputs, l.has_c, 2);
  if (l.has_c || l.k == 0) {
    if (l.has_c)
      encoder.set_input_array(inputs[2]);
    encoder.set_output_array(out);
    launch(
        encoder,
        cuda::get_strict_kernel(device, "mlx_precise::gpu::fill_from_c"),
        dim3(
            static_cast<unsigned>(
                std::min<int64_t>(l.batches * l.m, int64_t{1} << 20))),
        dim3(256),
        c,
        l,
        l.k == 0 ? l.beta : 1.0f,
        o);
    if (l.k == 0)
      return;
  }
  const int batches = checked_batches(l);
  std::vector<mx::array> order{out};
  auto operand = [&](bool operand_b) {
    const mx::array& x = inputs[operand_b ? 1 : 0];
    if (auto direct = in_place(mx::gpu_ptr<float>(x), l, operand_b))
      return *direct;
    const int rows = operand_b ? l.k : l.m;
    const int cols = operand_b ? l.n : l.k;
    order.push_back(scratch(encoder, l.batches * rows * cols * sizeof(float)));
    return pack<float>(
        encoder,
        device,
        x,
        l,
        operand_b,
        0,
        batches,
        0,
        rows,
        reads_transposed(l, operand_b),
        static_cast<float*>(mx::gpu_ptr<void>(order.back())),
        order);
  };
  const cuda::GemmOperand a = operand(false);
  const cuda::GemmOperand b = operand(true);
  for (const auto& x : inputs)
    encoder.set_input_array(x);
  for (const auto& x : order)
    encoder.set_output_array(x);
  cuda::gemm(
      encoder,
      device,
      stream_index,
      cuda::GemmType::Float32,
      l.m,
      l.n,
      l.k,
      batches,
      a,
      b,
      o,
      l.alpha,
      l.has_c ? l.beta : 0.0);
}

// Doubles of the float64 product (and widened rows of a) held at once: larger
// products run in chunks of rows that reuse one set of buffers.
constexpr int64_t kProductBudget = int64_t{1} << 25;

// "extended" and "dd" on CUDA, per chunk: the operands widened to double
// K-contiguous with their row / column norms for the error bound
// (addmm_pack_wide), the library's float64 GEMM, then addmm_certify and
// addmm_recompute for the outputs it could not certify. Four graph nodes a
// chunk.
void extended_addmm(
    mx::cu::CommandEncoder& encoder,
    int device,
    int stream_index,
    const std::vector<mx::array>& inputs,
    mx::array& out,
    const AddmmLayout& l) {
  const float* a = mx::gpu_ptr<float>(inputs[0]);
  const float* b = mx::gpu_ptr<float>(inputs[1]);
  const float* c = maybe_ptr(inputs, l.has_c, 2);
  float* o = mx::gpu_ptr<float>(out);
  // Chunks: whole batches when a batch's rows fit the budget, else rows of
  // one batch at a time.
  const int batches = checked_batches(l);
  const int64_t per_row = static_cast<int64_t>(l.n) + l.k;
  const int64_t per_batch = per_row * l.m;
  int chunk_rows = l.m, chunk_batches = 1;
  if (per_batch <= kProductBudget) {
    chunk_batches = static_cast<int>(std::min<int64_t>(
        batches, kProductBudget / std::max<int64_t>(per_batch, 1)));
  } else {
    chunk_rows = static_cast<int>(std::min<int64_t>(
        l.m, std::max<int64_t>(64, kProductBudget / per_row)));
  }
  const int64_t chunk_outputs =
      static_cast<int64_t>(chunk_batches) * chunk_rows * l.n;
  // The certify kernels index a chunk's outputs in 32 bits.
  if (chunk_outputs >= (int64_t{1} << 31)) {
    throw std::invalid_argument(
        "addmm / linear: extended products on CUDA take fewer than 2^25 "
        "output columns; split the columns");
  }
  // Outputs the certification cannot round are marked in a bitmap, one bit
  // per output of a chunk, for addmm_recompute.
  const int64_t open_words = (chunk_outputs + 31) / 32;

  // Buffers reused by every chunk, in the stream's buffer (shared with the
  // stream's other products: per-call buffers of this size, held until their
  // graph had run, put M2-BERT's peak memory at 4x float32's): a's rows and
  // b's columns widened to double along K (the GEMM's operands and the
  // recompute's, whose warps read along K), the product, the row norms of a
  // then the column norms of b of every batch, and the bitmap, each 256-byte
  // aligned (the GEMM's and the certification's vector accesses).
  const bool has_k = l.k > 0;
  auto aligned = [](int64_t doubles) { return (doubles + 31) / 32 * 32; };
  const int64_t a_count =
      has_k ? aligned(int64_t{chunk_batches} * chunk_rows * l.k) : 0;
  const int64_t b_count =
      has_k ? aligned(int64_t{chunk_batches} * l.k * l.n) : 0;
  const int64_t product_doubles = has_k ? aligned(chunk_outputs) : 0;
  const int64_t norm_count =
      aligned(l.batches * (static_cast<int64_t>(l.m) + l.n));
  std::vector<mx::array> order{stream_buffer(
      encoder,
      device,
      stream_index,
      StreamBuffer::WideOperands,
      (a_count + b_count + product_doubles + norm_count) * sizeof(double) +
          open_words * sizeof(unsigned))};
  double* a_wide = static_cast<double*>(mx::gpu_ptr<void>(order.back()));
  double* b_wide = a_wide + a_count;
  double* product = has_k ? b_wide + b_count : nullptr;
  double* norms = b_wide + b_count + product_doubles;
  unsigned* open_bits = reinterpret_cast<unsigned*>(norms + norm_count);
  order.push_back(out);
  auto register_all = [&]() {
    for (const auto& x : inputs)
      encoder.set_input_array(x);
    for (const auto& x : order)
      encoder.set_output_array(x);
  };
  const auto tiles = [](int vectors) {
    return (vectors + kPackTile - 1) / kPackTile;
  };
  for (int batch0 = 0; batch0 < batches; batch0 += chunk_batches) {
    const int count = std::min(chunk_batches, batches - batch0);
    for (int row0 = 0; row0 < l.m; row0 += chunk_rows) {
      const int rows = std::min(chunk_rows, l.m - row0);
      // b with a batch's first rows; the bitmap zeroed once per call
      // (addmm_recompute leaves it zero).
      const int64_t blocks =
          int64_t{count} * (tiles(rows) + (row0 == 0 ? tiles(l.n) : 0));
      const bool first_chunk = batch0 == 0 && row0 == 0;
      register_all();
      launch(
          encoder,
          cuda::get_strict_kernel(device, "mlx_precise::gpu::addmm_pack_wide"),
          dim3(static_cast<unsigned>(blocks)),
          dim3(256),
          a,
          b,
          l,
          static_cast<MP_INT64>(batch0),
          count,
          row0,
          rows,
          a_wide,
          b_wide,
          norms,
          open_bits,
          static_cast<MP_INT64>(first_chunk ? open_words : 0));
      if (has_k) {
        register_all();
        cuda::gemm(
            encoder,
            device,
            stream_index,
            cuda::GemmType::Float64,
            rows,
            l.n,
            l.k,
            count,
            cuda::GemmOperand{a_wide, false, l.k, int64_t{rows} * l.k},
            cuda::GemmOperand{b_wide, true, l.k, int64_t{l.n} * l.k},
            product,
            1.0,
            0.0);
      }
      // addmm_certify: eight outputs a thread.
      const int64_t chunk = int64_t{count} * rows * l.n;
      register_all();
      launch(
          encoder,
          cuda::get_strict_kernel(device, "mlx_precise::gpu::addmm_certify"),
          stride_grid((chunk + 7) / 8),
          dim3(256),
          static_cast<const double*>(product),
          c,
          o,
          l,
          static_cast<const double*>(norms),
          static_cast<MP_INT64>(batch0),
          count,
          row0,
          rows,
          open_bits);
      // A warp per marked output; a grid that covers the bitmap's words 32
      // at a time per warp (usually few are nonzero).
      const int64_t chunk_words = (chunk + 31) / 32;
      register_all();
      launch(
          encoder,
          cuda::get_strict_kernel(device, "mlx_precise::gpu::addmm_recompute"),
          stride_grid(chunk_words),
          dim3(256),
          static_cast<const double*>(a_wide),
          static_cast<const double*>(b_wide),
          c,
          o,
          l,
          static_cast<MP_INT64>(batch0),
          row0,
          rows,
          open_bits,
          static_cast<MP_INT64>(chunk_words));
    }
  }
}

// A layer_norm row kernel (one warp per row, 8 rows per block) over `rows`
// rows.
template <class... Args>
void launch_rows(
    mx::cu::CommandEncoder& encoder,
    CUfunction kernel,
    int64_t rows,
    Args... args) {
  launch(
      encoder,
      kernel,
      dim3(static_cast<unsigned>(std::min<int64_t>((rows + 7) / 8, 1 << 20))),
      dim3(256),
      args...);
}

// A layer_norm column kernel (one thread per column, 128 per block) over
// `dim` columns.
template <class... Args>
void launch_columns(
    mx::cu::CommandEncoder& encoder,
    CUfunction kernel,
    int dim,
    Args... args) {
  launch(encoder, kernel, dim3((dim + 127) / 128), dim3(128), args...);
}

// The layer_norm kernel `name` in double: dd is extended's float64
// computation, as on the CPU.
CUfunction layer_norm_kernel(int device, const char* name) {
  return cuda::get_strict_kernel(device, kernel_name(name, "double"));
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
  if (precision_ == Precision::Float32) {
    float32_addmm(encoder, device, stream().index, inputs, out, l);
    return;
  }
  // dd is extended's computation (README, "The dd contract").
  extended_addmm(encoder, device, stream().index, inputs, out, l);
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
  const int bias_index = has_weight_ ? 2 : 1;
  // One bit per output, (dim + 31) / 32 words per row: the outputs
  // layer_norm_rows could not certify, for layer_norm_recompute.
  mx::array open_buffer =
      scratch(encoder, rows * ((dim + 31) / 32) * sizeof(unsigned));
  unsigned* open_bits = static_cast<unsigned*>(mx::gpu_ptr<void>(open_buffer));
  const float* xp = mx::gpu_ptr<float>(x);
  const RowsLayout xl = rows_layout("layer_norm", x);
  const float* w = maybe_ptr(inputs, has_weight_, 1);
  const MP_INT64 w_stride = has_weight_ ? inputs[1].strides()[0] : 0;
  const float* b = maybe_ptr(inputs, has_bias_, bias_index);
  const MP_INT64 b_stride = has_bias_ ? inputs[bias_index].strides()[0] : 0;
  float* y = mx::gpu_ptr<float>(out);
  for (const char* kernel : {"layer_norm_rows", "layer_norm_recompute"}) {
    for (const auto& in : inputs)
      encoder.set_input_array(in);
    encoder.set_output_array(open_buffer);
    encoder.set_output_array(out);
    launch_rows(
        encoder,
        layer_norm_kernel(device, kernel),
        rows,
        xp,
        xl,
        w,
        w_stride,
        b,
        b_stride,
        y,
        static_cast<MP_INT64>(rows),
        dim,
        eps_,
        open_bits);
  }
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
  const float* xp = mx::gpu_ptr<float>(x);
  const float* gp = mx::gpu_ptr<float>(g);
  const bool want_params = want_weight_ || want_bias_;
  std::optional<mx::array> stats_buffer, bounds_buffer;
  LayerNormStats<double>* stats = nullptr;
  NormalizedBound* bounds = nullptr;
  if (want_params) {
    stats_buffer = scratch(encoder, rows * sizeof(LayerNormStats<double>));
    stats =
        static_cast<LayerNormStats<double>*>(mx::gpu_ptr<void>(*stats_buffer));
  }
  if (want_weight_) { // the bounds of n, for grad weight's stage 1
    bounds_buffer = scratch(encoder, rows * sizeof(NormalizedBound));
    bounds = static_cast<NormalizedBound*>(mx::gpu_ptr<void>(*bounds_buffer));
  }
  // grad x's open outputs, one bit each ((dim + 31) / 32 words per row), for
  // layer_norm_grad_x_recompute.
  std::optional<mx::array> open_buffer;
  unsigned* open_bits = nullptr;
  if (want_x_) {
    open_buffer = scratch(encoder, rows * ((dim + 31) / 32) * sizeof(unsigned));
    open_bits = static_cast<unsigned*>(mx::gpu_ptr<void>(*open_buffer));
  }
  std::vector<const char*> kernels{"layer_norm_grad_rows"};
  if (want_x_)
    kernels.push_back("layer_norm_grad_x_recompute");
  for (const char* kernel : kernels) {
    if (rows == 0)
      break;
    for (const auto& in : inputs)
      encoder.set_input_array(in);
    if (want_x_) {
      encoder.set_output_array(outputs[0]);
      encoder.set_output_array(*open_buffer);
    }
    if (stats_buffer)
      encoder.set_output_array(*stats_buffer);
    if (bounds_buffer)
      encoder.set_output_array(*bounds_buffer);
    launch_rows(
        encoder,
        layer_norm_kernel(device, kernel),
        rows,
        xp,
        xl,
        maybe_ptr(inputs, has_weight_, 1),
        static_cast<MP_INT64>(has_weight_ ? inputs[1].strides()[0] : 0),
        gp,
        gl,
        grad_x,
        stats,
        bounds,
        static_cast<MP_INT64>(rows),
        dim,
        eps_,
        open_bits);
  }
  if (!want_params)
    return;
  // grad weight's open columns (one word each), for its stages 2 and 3.
  std::optional<mx::array> weight_open_buffer;
  unsigned* weight_open = nullptr;
  if (want_weight_) {
    weight_open_buffer = scratch(encoder, dim * sizeof(unsigned));
    weight_open =
        static_cast<unsigned*>(mx::gpu_ptr<void>(*weight_open_buffer));
  }
  for (const auto& in : inputs)
    encoder.set_input_array(in);
  encoder.set_input_array(*stats_buffer);
  if (bounds_buffer)
    encoder.set_input_array(*bounds_buffer);
  if (grad_w_array) {
    encoder.set_output_array(*grad_w_array);
    encoder.set_output_array(*weight_open_buffer);
  }
  if (grad_b_array)
    encoder.set_output_array(*grad_b_array);
  launch_columns(
      encoder,
      layer_norm_kernel(device, "layer_norm_param_grads"),
      dim,
      xp,
      xl,
      gp,
      gl,
      static_cast<const LayerNormStats<double>*>(stats),
      static_cast<const NormalizedBound*>(bounds),
      grad_w_array ? mx::gpu_ptr<float>(*grad_w_array) : nullptr,
      grad_b_array ? mx::gpu_ptr<float>(*grad_b_array) : nullptr,
      weight_open,
      static_cast<MP_INT64>(rows),
      dim,
      eps_);
  if (!want_weight_ || rows == 0)
    return;
  // Stages 2 and 3 of grad weight: the rows' double-word statistics (only
  // when a column is open), then the open columns.
  mx::array wide_buffer = scratch(encoder, rows * sizeof(LayerNormWideStats));
  auto* wide = static_cast<LayerNormWideStats*>(mx::gpu_ptr<void>(wide_buffer));
  for (const auto& in : inputs)
    encoder.set_input_array(in);
  encoder.set_input_array(*weight_open_buffer);
  encoder.set_output_array(wide_buffer);
  launch_rows(
      encoder,
      cuda::get_strict_kernel(device, "mlx_precise::gpu::layer_norm_wide_rows"),
      rows,
      xp,
      xl,
      static_cast<const unsigned*>(weight_open),
      wide,
      static_cast<MP_INT64>(rows),
      dim,
      eps_);
  for (const auto& in : inputs)
    encoder.set_input_array(in);
  encoder.set_input_array(*weight_open_buffer);
  encoder.set_input_array(wide_buffer);
  encoder.set_output_array(*grad_w_array);
  launch_columns(
      encoder,
      cuda::get_strict_kernel(
          device, "mlx_precise::gpu::layer_norm_weight_recompute"),
      dim,
      xp,
      xl,
      gp,
      gl,
      static_cast<const LayerNormWideStats*>(wide),
      static_cast<const unsigned*>(weight_open),
      grad_w_array ? mx::gpu_ptr<float>(*grad_w_array) : nullptr,
      static_cast<MP_INT64>(rows),
      dim,
      eps_);
}

} // namespace mlx_precise
