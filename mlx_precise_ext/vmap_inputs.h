// vmap support shared by the primitives of mlx-precise.
#pragma once

#include <vector>

#include <mlx/ops.h>

namespace mlx_precise {

// Each vmapped input gets its vmapped axis in front, followed by unit axes up
// to rank + 1 dims; unmapped inputs stay as they are. Leading dims then
// broadcast against each other as the primitive's batch dims always do.
inline std::vector<mlx::core::array> vmapped_axis_in_front(
    const std::vector<mlx::core::array>& inputs,
    const std::vector<int>& axes,
    int rank,
    mlx::core::Stream s) {
  std::vector<mlx::core::array> moved;
  for (size_t i = 0; i < inputs.size(); ++i) {
    mlx::core::array x = inputs[i];
    if (axes[i] >= 0) {
      x = mlx::core::moveaxis(x, axes[i], 0, s);
      mlx::core::Shape shape = x.shape();
      shape.insert(
          shape.begin() + 1, rank - (static_cast<int>(x.ndim()) - 1), 1);
      x = mlx::core::reshape(x, shape, s);
    }
    moved.push_back(x);
  }
  return moved;
}

} // namespace mlx_precise
