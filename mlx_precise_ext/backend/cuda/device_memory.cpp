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
// a deleter. Through the driver API, which the extension links (libcuda):
// libmlx links the CUDA runtime statically and exports none of its symbols.
#include "backend/cuda/allocation.h"

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include <cuda.h>

#include <mlx/memory.h>

#include "backend/cuda/jit.h"
#include "device_memory.h"

namespace mlx_precise::cuda {

namespace {

// Per device: its primary context (current while a deleter frees), the pool
// (null where the device has no memory pools) and a stream for the frees.
struct DeviceMemory {
  CUcontext context = nullptr;
  CUmemoryPool pool = nullptr;
  CUstream free_stream = nullptr;
};

// Created at first use and kept for the process (as MLX keeps its
// allocator): deleters may run at exit.
const DeviceMemory& device_memory(mx::cu::Device& dev) {
  static std::mutex mutex;
  static auto* memories = new std::map<int, DeviceMemory>();
  std::lock_guard<std::mutex> lock(mutex);
  const int device = dev.cuda_device();
  auto it = memories->find(device);
  if (it != memories->end())
    return it->second;
  DeviceMemory m;
  dev.make_current();
  CUdevice cu_device;
  check_driver(cuDeviceGet(&cu_device, device), "cuDeviceGet");
  check_driver(
      cuDevicePrimaryCtxRetain(&m.context, cu_device),
      "cuDevicePrimaryCtxRetain");
  if (dev.memory_pools()) {
    CUmemPoolProps props{};
    props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    props.handleTypes = CU_MEM_HANDLE_TYPE_NONE;
    props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    props.location.id = device;
    check_driver(cuMemPoolCreate(&m.pool, &props), "cuMemPoolCreate");
    // A pool returns what exceeds its release threshold at every stream or
    // event synchronization, and MLX synchronizes on events after each
    // graph: with CUDA's default threshold (0) every forward would map its
    // memory anew. Keeping up to an eighth of the device serves repeated
    // calls from the pool, as MLX's buffer cache does for its own arrays.
    size_t free_bytes = 0, total_bytes = 0;
    check_driver(cuMemGetInfo(&free_bytes, &total_bytes), "cuMemGetInfo");
    cuuint64_t keep = total_bytes / 8;
    check_driver(
        cuMemPoolSetAttribute(m.pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep),
        "cuMemPoolSetAttribute");
    check_driver(
        cuStreamCreate(&m.free_stream, CU_STREAM_NON_BLOCKING),
        "cuStreamCreate");
  }
  return memories->emplace(device, m).first->second;
}

void* allocate(const DeviceMemory& m, size_t bytes, CUstream stream) {
  CUdeviceptr data = 0;
  const CUresult r = m.pool
      ? cuMemAllocFromPoolAsync(&data, bytes, m.pool, stream)
      : cuMemAlloc(&data, bytes);
  if (r == CUDA_SUCCESS)
    return reinterpret_cast<void*>(data);
  if (r != CUDA_ERROR_OUT_OF_MEMORY)
    check_driver(r, "device allocation");
  return nullptr;
}

// Frees a buffer of device_malloc. Deleters run when MLX releases an array,
// after every graph that used it has run (MLX holds the arrays of a graph
// until it completes), so the free waits for nothing. Errors are ignored:
// at exit the driver may be shutting down before the last arrays go.
void release(mx::cu::CudaBuffer& buf, const DeviceMemory& m, size_t bytes) {
  count_device_free(bytes);
  if (!buf.data || cuCtxPushCurrent(m.context) != CUDA_SUCCESS)
    return;
  const auto ptr = reinterpret_cast<CUdeviceptr>(buf.data);
  if (buf.device == -1) {
    // Read on the host, MLX moved the data into its unified memory (managed,
    // or pinned host memory where managed memory is not supported) and freed
    // the device memory itself (Buffer::raw_ptr): free it as MLX would.
    unsigned int type = 0;
    const bool host =
        cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, ptr) ==
            CUDA_SUCCESS &&
        type == CU_MEMORYTYPE_HOST;
    host ? cuMemFreeHost(buf.data) : cuMemFree(ptr);
  } else if (m.pool) {
    cuMemFreeAsync(ptr, m.free_stream);
  } else {
    cuMemFree(ptr);
  }
  CUcontext popped;
  cuCtxPopCurrent(&popped);
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
        check_driver(cuMemPoolTrimTo(m.pool, 0), "cuMemPoolTrimTo");
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
    check_driver(
        cuMemsetD8Async(
            reinterpret_cast<CUdeviceptr>(data), 0xFF, bytes, encoder.stream()),
        "cuMemsetD8Async");
  }
  count_device_malloc(bytes);
  auto* buf = new mx::cu::CudaBuffer{data, bytes, data ? device : -1};
  return mx::allocator::Data(
      mx::allocator::Buffer(buf), [&m, bytes](mx::allocator::Buffer b) {
        auto* held = static_cast<mx::cu::CudaBuffer*>(b.ptr());
        release(*held, m, bytes);
        delete held;
      });
}

} // namespace mlx_precise::cuda
