// Device memory for the CUDA backend's arrays (outputs and workspaces),
// allocated stream-ordered on the encoder's stream as MLX's own eval_gpu
// allocate theirs. In the extension: device_memory.cpp (why not
// mx::allocator::malloc), counted in device_memory.h, not in MLX's memory
// statistics; inside MLX (patches/) it is MLX's cu::malloc_async.
#pragma once

#include <cstddef>

#include <mlx/allocator.h>
#include <mlx/backend/cuda/device.h>

namespace mlx_precise::cuda {

namespace mx = mlx::core;

mx::allocator::Data device_malloc(
    mx::cu::CommandEncoder& encoder,
    size_t bytes);

} // namespace mlx_precise::cuda
