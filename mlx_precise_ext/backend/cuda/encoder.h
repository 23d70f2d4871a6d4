// Adding mlx-precise's kernels to MLX's CUDA graph, shared by the CUDA eval_gpu
// files: the stream's encoder with the outputs allocated, and kernel launches.
#pragma once

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include <cuda.h>

#include <mlx/allocator.h>
#include <mlx/backend/cuda/device.h>

#include "backend/cuda/allocation.h"

namespace mlx_precise::cuda {

namespace mx = mlx::core;

// The stream's encoder, with each output allocated in device memory.
inline mx::cu::CommandEncoder&
prepare(mx::Stream s, std::vector<mx::array*> outs, int& device) {
  auto& dev = mx::cu::device(s.device);
  dev.make_current();
  device = dev.cuda_device();
  auto& encoder = mx::cu::get_command_encoder(s);
  for (mx::array* o : outs)
    o->set_data(device_malloc(encoder, o->nbytes()));
  return encoder;
}

// A device buffer of at least `bytes` that lives until the graph that uses it
// has run.
inline mx::array scratch(mx::cu::CommandEncoder& encoder, size_t bytes) {
  mx::array buffer(
      {static_cast<int>((std::max<size_t>(bytes, 1) + 7) / 8)},
      mx::uint64,
      nullptr,
      {});
  buffer.set_data(device_malloc(encoder, buffer.nbytes()));
  encoder.add_temporary(buffer);
  return buffer;
}

// The buffers a stream keeps for the work of its calls, one of each kind.
enum class StreamBuffer { GemmWorkspace, WideOperands, Spectra, RowWorkspace };

// A device buffer of at least `bytes`, owned by the stream and reused by every
// call on it. Per-call scratch (encoder.add_temporary) lives until its graph
// has run, and MLX enqueues a whole forward before the first graphs complete,
// so per-call buffers added up: 4x float32's peak memory for M2-BERT
// extended (issue 10). Every node that reads or writes the buffer registers
// it as an output, so its users on the stream run one after another. A
// larger request replaces it: the old buffer becomes a temporary of the
// current graph, alive until every node that used it has run. Never freed
// (it lives as long as the process; MLX's allocator outlives no static).
inline mx::array& stream_buffer(
    mx::cu::CommandEncoder& encoder,
    int device,
    int stream_index,
    StreamBuffer kind,
    size_t bytes) {
  static std::mutex mutex;
  static auto* buffers =
      new std::map<std::tuple<int, int, StreamBuffer>, mx::array>();
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(device, stream_index, kind);
  auto it = buffers->find(key);
  if (it != buffers->end() && it->second.nbytes() >= bytes)
    return it->second;
  if (it != buffers->end()) {
    encoder.add_temporary(it->second);
    buffers->erase(it);
  }
  mx::array buffer(
      {static_cast<int>((std::max<size_t>(bytes, 1) + 7) / 8)},
      mx::uint64,
      nullptr,
      {});
  buffer.set_data(device_malloc(encoder, buffer.nbytes()));
  return buffers->emplace(key, std::move(buffer)).first->second;
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
