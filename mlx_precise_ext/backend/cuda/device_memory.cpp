// Device memory for the CUDA backend's outputs and workspaces (allocation.h).
//
// The one allocation libmlx exports, mx::allocator::malloc, is MLX's
// malloc_async(size, -1, nullptr): managed memory (cudaMallocManaged), and a
// cached device buffer of a fitting size is first moved into fresh managed
// memory by a synchronous cudaMemcpy. MLX's own eval_gpu take device memory
// from cu::malloc_async(size, encoder), which libmlx does not export. For
// M2-BERT float32 at L = 8192 on the H200 the managed outputs cost 60 ms of
// "Memcpy DtoD (Device -> Managed)" and 97 ms in 49 launches of fill_from_c
// (a copy, and the first kernel to write each fresh managed addmm output) of
// a 204 ms forward (docs/gpu.md). So the backend allocates its own:
// stream-ordered on the encoder's stream, from a memory pool of its own per
// device, wrapped as MLX buffers (CudaBuffer, the struct gpu_ptr reads) with
// a deleter.
#include "backend/cuda/allocation.h"

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include <mlx/memory.h>

#include "device_memory.h"

namespace mlx_precise::cuda {

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    throw std::runtime_error(
        std::string("mlx-precise CUDA: ") + what +
        " failed: " + cudaGetErrorString(e));
  }
}

// Per device: the pool (null where the device has no memory pools) and a
// stream for the frees.
struct DeviceMemory {
  cudaMemPool_t pool = nullptr;
  cudaStream_t free_stream = nullptr;
};

// Created at first use, with the device current, and kept for the process
// (as MLX keeps its allocator): deleters may run at exit.
const DeviceMemory& device_memory(mx::cu::Device& dev) {
  static std::mutex mutex;
  static auto* memories = new std::map<int, DeviceMemory>();
  std::lock_guard<std::mutex> lock(mutex);
  const int device = dev.cuda_device();
  auto it = memories->find(device);
  if (it != memories->end())
    return it->second;
  DeviceMemory m;
  if (dev.memory_pools()) {
    dev.make_current();
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    check(cudaMemPoolCreate(&m.pool, &props), "cudaMemPoolCreate");
    // A pool returns what exceeds its release threshold at every stream or
    // event synchronization, and MLX synchronizes on events after each
    // graph: with CUDA's default threshold (0) every forward would map its
    // memory anew. Keeping up to an eighth of the device serves repeated
    // calls from the pool, as MLX's buffer cache does for its own arrays.
    size_t free_bytes = 0, total_bytes = 0;
    check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
    uint64_t keep = total_bytes / 8;
    check(
        cudaMemPoolSetAttribute(m.pool, cudaMemPoolAttrReleaseThreshold, &keep),
        "cudaMemPoolSetAttribute");
    check(
        cudaStreamCreateWithFlags(&m.free_stream, cudaStreamNonBlocking),
        "cudaStreamCreateWithFlags");
  }
  return memories->emplace(device, m).first->second;
}

void* allocate(const DeviceMemory& m, size_t bytes, cudaStream_t stream) {
  void* data = nullptr;
  const cudaError_t e = m.pool
      ? cudaMallocFromPoolAsync(&data, bytes, m.pool, stream)
      : cudaMalloc(&data, bytes);
  if (e == cudaSuccess)
    return data;
  if (e != cudaErrorMemoryAllocation)
    check(e, "device allocation");
  cudaGetLastError(); // clears the error, which is handled here
  return nullptr;
}

// Frees a buffer of device_malloc. Deleters run when MLX releases an array,
// after every graph that used it has run (MLX holds the arrays of a graph
// until it completes), so the free waits for nothing. Errors are ignored:
// at exit the CUDA runtime may be gone before the last arrays.
void release(
    mx::cu::CudaBuffer& buf,
    int device,
    const DeviceMemory& m,
    size_t bytes) {
  count_device_free(bytes);
  if (!buf.data)
    return;
  int current = -1;
  cudaGetDevice(&current);
  if (current != device)
    cudaSetDevice(device);
  if (buf.device == -1) {
    // Read on the host, MLX moved the data into its unified memory (managed,
    // or pinned host memory where managed memory is not supported) and freed
    // the device memory itself (Buffer::raw_ptr): free it as MLX would.
    cudaPointerAttributes attributes{};
    const bool host =
        cudaPointerGetAttributes(&attributes, buf.data) == cudaSuccess &&
        attributes.type == cudaMemoryTypeHost;
    host ? cudaFreeHost(buf.data) : cudaFree(buf.data);
  } else if (m.pool) {
    cudaFreeAsync(buf.data, m.free_stream);
  } else {
    cudaFree(buf.data);
  }
  cudaGetLastError();
  if (current != device && current >= 0)
    cudaSetDevice(current);
}

} // namespace

mx::allocator::Data device_malloc(
    mx::cu::CommandEncoder& encoder,
    size_t bytes) {
  mx::cu::Device& dev = encoder.device();
  const int device = dev.cuda_device();
  const DeviceMemory& m = device_memory(dev);
  void* data = nullptr;
  if (bytes > 0) {
    data = allocate(m, bytes, encoder.stream());
    if (!data) {
      // Memory held by MLX's buffer cache or by this pool above what its
      // arrays use: give it back and try once more.
      mx::clear_cache();
      if (m.pool)
        check(cudaMemPoolTrimTo(m.pool, 0), "cudaMemPoolTrimTo");
      data = allocate(m, bytes, encoder.stream());
    }
    if (!data) {
      throw std::runtime_error(
          "mlx-precise CUDA: out of device memory for " +
          std::to_string(bytes) +
          " bytes; use a smaller batch or sequence length");
    }
  }
  if (data && poison_device_memory()) {
    check(
        cudaMemsetAsync(data, 0xFF, bytes, encoder.stream()),
        "cudaMemsetAsync");
  }
  count_device_malloc(bytes);
  auto* buf = new mx::cu::CudaBuffer{data, bytes, data ? device : -1};
  return mx::allocator::Data(
      mx::allocator::Buffer(buf), [device, &m, bytes](mx::allocator::Buffer b) {
        auto* held = static_cast<mx::cu::CudaBuffer*>(b.ptr());
        release(*held, device, m, bytes);
        delete held;
      });
}

} // namespace mlx_precise::cuda
