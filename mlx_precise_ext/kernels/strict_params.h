// Layouts of the strict addmm / layer_norm operands as the GPU kernels see
// them, shared by the host code that fills them and the kernels (compiled as
// C++, CUDA and Metal). Strides are in elements; 0 repeats (broadcast).
#pragma once

#include "portability.h"

namespace mlx_precise {

// Batch dims beyond this are refused on the host with a clear error.
constexpr int kStrictMaxDims = 8;

// Offset of flat index `index` (row-major over shape[0..dims), so below
// their product) under strides. What is left of the index after the inner
// dims is below shape[0]: no division for the outermost dim (a 2-d operand's
// rows take none; integer division is a long instruction sequence on a GPU).
MP_INLINE MP_INT64 strided_offset(
    MP_INT64 index,
    int dims,
    const MP_THREAD int* shape,
    const MP_THREAD MP_INT64* strides) {
  MP_INT64 offset = 0;
  for (int d = dims - 1; d > 0; --d) {
    offset += (index % shape[d]) * strides[d];
    index /= shape[d];
  }
  return dims > 0 ? offset + index * strides[0] : offset;
}

// Rows of a or columns of b that one 256-thread block of CUDA's
// addmm_pack_wide widens (the host sizes its grid by it).
constexpr int kPackTile = 32;

// out (batch..., m, n), row-major, = alpha * a @ b [+ beta * c]; a (m, k) and
// b (k, n) per batch, c broadcast to (m, n) per batch.
struct AddmmLayout {
  int m, n, k;
  int has_c;
  float alpha, beta;
  MP_INT64 batches;
  int batch_dims;
  int batch_shape[kStrictMaxDims];
  MP_INT64 a_batch[kStrictMaxDims];
  MP_INT64 b_batch[kStrictMaxDims];
  MP_INT64 c_batch[kStrictMaxDims];
  MP_INT64 a_row, a_col, b_row, b_col, c_row, c_col;
};

// The rows of a layer_norm operand: row r (row-major over the leading dims)
// starts at strided_offset(r, dims, shape, strides), its element i lies
// i * element_stride further.
struct RowsLayout {
  int dims;
  int shape[kStrictMaxDims];
  MP_INT64 strides[kStrictMaxDims];
  MP_INT64 element_stride;
};

// The scalar arguments of the Metal layer_norm kernels (which optional
// operands are bound, their strides, the row count and length); the CUDA
// kernels take the same values as separate arguments.
struct LayerNormLaunch {
  int has_weight;
  int has_bias;
  int want_grad_x;
  int want_stats;
  int want_grad_weight;
  int want_grad_bias;
  MP_INT64 weight_stride;
  MP_INT64 bias_stride;
  MP_INT64 rows;
  int dim;
};

MP_INLINE MP_INT64 row_start(const MP_THREAD RowsLayout& l, MP_INT64 row) {
  return strided_offset(row, l.dims, l.shape, l.strides);
}

// Element i of an operand laid out as rows of `inner` elements (flat index i
// row-major over the operand's shape).
MP_INLINE MP_INT64
element_offset(const MP_THREAD RowsLayout& l, MP_INT64 i, MP_INT64 inner) {
  return row_start(l, i / inner) + (i % inner) * l.element_stride;
}

} // namespace mlx_precise
