// Adding mlx-precise's kernels to MLX's CUDA graph, shared by the CUDA eval_gpu
// files: the stream's encoder with the outputs allocated, and kernel launches.
#pragma once

#include <vector>

#include <cuda.h>

#include <mlx/allocator.h>
#include <mlx/backend/cuda/device.h>

namespace mlx_precise::cuda {

namespace mx = mlx::core;

// The stream's encoder, with each output allocated as MLX's own eval_gpu does.
inline mx::cu::CommandEncoder&
prepare(mx::Stream s, std::vector<mx::array*> outs, int& device) {
  auto& dev = mx::cu::device(s.device);
  dev.make_current();
  device = dev.cuda_device();
  for (mx::array* o : outs)
    o->set_data(mx::allocator::malloc(o->nbytes()));
  return mx::cu::get_command_encoder(s);
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

} // namespace mlx_precise::cuda
