// Shape helpers shared by the backends' eval functions.
#pragma once

#include <cstdint>

#include <mlx/array.h>

namespace mlx_precise {

// Number of rows of a batch shape.
inline int64_t shape_product(const mlx::core::Shape& s) {
  int64_t p = 1;
  for (auto d : s)
    p *= d;
  return p;
}

// All but the last (time) axis.
inline mlx::core::Shape batch_shape(const mlx::core::Shape& s) {
  return mlx::core::Shape(s.begin(), s.end() - 1);
}

} // namespace mlx_precise
