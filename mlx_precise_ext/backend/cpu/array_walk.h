// Walking MLX arrays of any strides on the CPU: batch offsets under
// broadcasting, and row-major copies where a kernel wants contiguous rows.
#pragma once

#include <cstdint>
#include <vector>

#include <mlx/array.h>
#include <mlx/backend/common/utils.h>

namespace mlx_precise::cpu {

namespace mx = mlx::core;

// Strides of x's dims aligned right to `full`'s, 0 where x is broadcast.
inline std::vector<int64_t> aligned_strides(
    const mx::array& x,
    const mx::Shape& full) {
  const int rank = static_cast<int>(full.size());
  const int offset = rank - static_cast<int>(x.ndim());
  std::vector<int64_t> strides(rank, 0);
  for (int d = 0; d < static_cast<int>(x.ndim()); ++d)
    if (x.shape(d) != 1)
      strides[offset + d] = x.strides()[d];
  return strides;
}

// Element offset of batch b (row-major over `batch`) under `strides`.
inline int64_t batch_offset(
    int64_t b,
    const mx::Shape& batch,
    const std::vector<int64_t>& strides) {
  int64_t off = 0;
  for (int d = static_cast<int>(batch.size()) - 1; d >= 0; --d) {
    off += (b % batch[d]) * strides[d];
    b /= batch[d];
  }
  return off;
}

// x's data as a row-major float32 buffer: the array itself when it is
// already row-contiguous, else a copy into storage.
inline const float* row_major(const mx::array& x, std::vector<float>& storage) {
  if (x.flags().row_contiguous)
    return x.data<float>();
  storage.resize(x.size());
  const float* src = x.data<float>();
  for (size_t n = 0; n < x.size(); ++n)
    storage[n] = src[mx::elem_to_loc(n, x.shape(), x.strides())];
  return storage.data();
}

} // namespace mlx_precise::cpu
