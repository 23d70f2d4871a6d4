// Host-side layouts of the strict addmm / layer_norm operands for the GPU
// kernels (kernels/strict_params.h), shared by the CUDA and Metal backends.
#pragma once

#include <limits>
#include <stdexcept>
#include <string>

#include <mlx/array.h>

#include "kernels/strict_params.h"
#include "strict_primitives.h"

namespace mlx_precise::gpu {

inline void check_dims(const char* op, size_t dims) {
  if (dims > static_cast<size_t>(kStrictMaxDims)) {
    throw std::invalid_argument(
        std::string(op) + ": the GPU kernels take at most " +
        std::to_string(kStrictMaxDims) +
        " batch dims; reshape the leading dims into fewer");
  }
}

// Strides of x's batch dims aligned right to `batch` (rank dims), 0 where x
// is broadcast.
inline void batch_strides(const mx::array& x, int rank, MP_INT64* strides) {
  const int x_batch = static_cast<int>(x.ndim()) - 2;
  for (int d = 0; d < rank; ++d)
    strides[d] = 0;
  for (int d = 0; d < x_batch; ++d)
    if (x.shape(d) != 1)
      strides[rank - x_batch + d] = x.strides()[d];
}

inline AddmmLayout addmm_layout(
    const std::vector<mx::array>& in,
    const mx::array& out,
    float alpha,
    float beta,
    bool has_c) {
  const mx::array& a = in[0];
  const mx::array& b = in[1];
  const int rank = static_cast<int>(out.ndim()) - 2;
  check_dims("addmm / linear", rank);
  AddmmLayout l{};
  l.m = out.shape(-2);
  l.n = out.shape(-1);
  l.k = a.shape(-1);
  l.has_c = has_c;
  l.alpha = alpha;
  l.beta = beta;
  l.batch_dims = rank;
  l.batches = 1;
  for (int d = 0; d < rank; ++d) {
    l.batch_shape[d] = out.shape(d);
    l.batches *= out.shape(d);
  }
  batch_strides(a, rank, l.a_batch);
  batch_strides(b, rank, l.b_batch);
  l.a_row = a.strides()[a.ndim() - 2];
  l.a_col = a.strides()[a.ndim() - 1];
  l.b_row = b.strides()[b.ndim() - 2];
  l.b_col = b.strides()[b.ndim() - 1];
  if (has_c) {
    // c broadcasts to the whole output: its dims align right to out's.
    const mx::array& c = in[2];
    const int full = static_cast<int>(out.ndim());
    MP_INT64 strides[kStrictMaxDims + 2] = {};
    const int offset = full - static_cast<int>(c.ndim());
    for (int d = 0; d < static_cast<int>(c.ndim()); ++d)
      if (c.shape(d) != 1)
        strides[offset + d] = c.strides()[d];
    for (int d = 0; d < rank; ++d)
      l.c_batch[d] = strides[d];
    l.c_row = strides[full - 2];
    l.c_col = strides[full - 1];
  }
  return l;
}

// Rows of x (..., dim): the leading dims with x's strides, dims of 1 dropped
// and a dim merged into the one before it where that one's stride steps over
// it whole (contiguous and sliced operands have one leading dim left), so the
// kernels divide less per row; the offset of every row is unchanged.
inline RowsLayout rows_layout(const char* op, const mx::array& x) {
  check_dims(op, x.ndim() - 1);
  RowsLayout l{};
  for (int d = 0; d + 1 < static_cast<int>(x.ndim()); ++d) {
    const int size = x.shape(d);
    const int64_t stride = x.strides()[d];
    if (size == 1)
      continue;
    const int outer = l.dims - 1;
    if (outer >= 0 && l.strides[outer] == stride * size &&
        static_cast<int64_t>(l.shape[outer]) * size <=
            std::numeric_limits<int>::max()) {
      l.shape[outer] *= size;
      l.strides[outer] = stride;
      continue;
    }
    l.shape[l.dims] = size;
    l.strides[l.dims++] = stride;
  }
  l.element_stride = x.ndim() == 0 ? 0 : x.strides().back();
  return l;
}

} // namespace mlx_precise::gpu
