// Device memory for the precise ops' arrays (outputs and workspaces): MLX's
// stream-ordered allocation on the encoder's stream.
#pragma once

#include <cstddef>

#include "mlx/backend/cuda/allocator.h"
#include "mlx/backend/cuda/device.h"

namespace mlx::core::cuda {

inline allocator::Buffer device_malloc(
    cu::CommandEncoder& encoder,
    size_t bytes) {
  return cu::malloc_async(bytes, encoder);
}

} // namespace mlx::core::cuda
