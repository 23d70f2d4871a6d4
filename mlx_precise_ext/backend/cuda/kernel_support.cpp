// The parts of the CUDA kernel management that do not depend on how the
// kernels are compiled: their names, launch limits and constant tables.
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/cuda/jit.h"

namespace mlx_precise::cuda {

void check_driver(CUresult r, const char* what) {
  if (r != CUDA_SUCCESS) {
    const char* msg = nullptr;
    cuGetErrorString(r, &msg);
    throw std::runtime_error(
        std::string("mlx-precise CUDA: ") + what +
        " failed: " + (msg ? msg : "unknown error"));
  }
}

namespace {

// dd runs the double engine with certification, as on the CPU: both
// certified precisions give the same, correctly rounded bits.
const char* working_type(Precision p) {
  return p == Precision::Float32 ? "float" : "double";
}

// The kernels of rfft_conv_kernels.cuh: templates over the working type, and
// those over the row storage too (shared or workspace), or neither; the
// split rows only in the certified precisions (double), the only ones whose
// bits do not depend on how the convolution is computed.
struct ConvKernel {
  const char* name;
  bool typed;
  bool row_storage;
  bool certified_only = false;
  // A form of a template: the template's name and its second argument.
  const char* form_of = nullptr;
  const char* form = nullptr;
};
const ConvKernel kKernels[] = {
    {"kernel_spectra", true, true},
    {"conv_rows", true, true},
    {"reduce_rows", true, true},
    {"sum_rows", true, true},
    {"gradient_rows", true, true},
    {"split_kernel_spectra", true, false, true},
    {"split_conv_rows", true, false, true},
    {"split_gradient_rows", true, false, true},
    {"deep_split_kernel_spectra",
     true,
     false,
     true,
     "split_kernel_spectra",
     "DeepSplitRows"},
    {"deep_split_conv_rows",
     true,
     false,
     true,
     "split_conv_rows",
     "DeepSplitRows"},
    {"product_sum", true, false},
    {"clear_open_bits", false, false},
    {"recompute_open", false, false},
    {"recompute_undecided", false, false},
    {"recompute_open_reduce", false, false},
    {"recompute_open_windows", false, false},
    {"recompute_undecided_long", false, false},
    {"recompute_open_sum", false, false},
    {"recompute_undecided_sum", false, false}};

std::string name_expression(Precision p, const ConvKernel& k, bool shared) {
  const std::string ns = "mlx_precise::gpu::";
  std::string e = ns + (k.form_of ? k.form_of : k.name);
  if (!k.typed)
    return e;
  e += std::string("<") + working_type(p);
  if (k.row_storage)
    e += shared ? ", true" : ", false";
  if (k.form)
    e += ", " + ns + k.form;
  return e + ">";
}

} // namespace

std::string
conv_kernel_name(Precision p, const std::string& name, bool shared) {
  for (const ConvKernel& k : kKernels)
    if (name == k.name)
      return name_expression(p, k, shared);
  throw std::invalid_argument("mlx-precise CUDA: no rfft_conv kernel " + name);
}

std::vector<std::string> conv_kernel_names(Precision p) {
  std::vector<std::string> names;
  for (const ConvKernel& k : kKernels) {
    if (k.certified_only && p == Precision::Float32)
      continue;
    names.push_back(name_expression(p, k, true));
    if (k.row_storage)
      names.push_back(name_expression(p, k, false));
  }
  return names;
}

void allow_dynamic_shared(CUfunction kernel, int device) {
  // Dynamic shared memory may use what the kernel's static shared variables
  // (block_sum's warp sums) leave of the per-block maximum.
  int static_shared = 0;
  check_driver(
      cuFuncGetAttribute(
          &static_shared, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, kernel),
      "cuFuncGetAttribute");
  check_driver(
      cuFuncSetAttribute(
          kernel,
          CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
          device_info(device).max_shared_per_block - static_shared),
      "cuFuncSetAttribute");
}

const DeviceInfo& device_info(int device) {
  static std::mutex mutex;
  static std::map<int, DeviceInfo> infos;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = infos.find(device);
  if (it != infos.end())
    return it->second;
  CUdevice dev;
  check_driver(cuDeviceGet(&dev, device), "cuDeviceGet");
  DeviceInfo info{};
  check_driver(
      cuDeviceGetAttribute(
          &info.multiprocessors, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev),
      "cuDeviceGetAttribute");
  check_driver(
      cuDeviceGetAttribute(
          &info.max_shared_per_block,
          CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
          dev),
      "cuDeviceGetAttribute");
  return infos.emplace(device, info).first->second;
}

CUdeviceptr upload_constant(const void* data, size_t bytes) {
  CUdeviceptr ptr;
  check_driver(cuMemAlloc(&ptr, bytes > 0 ? bytes : 1), "cuMemAlloc");
  if (bytes > 0)
    check_driver(cuMemcpyHtoD(ptr, data, bytes), "cuMemcpyHtoD");
  return ptr;
}

int max_dynamic_shared(CUfunction kernel) {
  int n = 0;
  check_driver(
      cuFuncGetAttribute(
          &n, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, kernel),
      "cuFuncGetAttribute");
  return n;
}

int max_block_threads(CUfunction kernel) {
  int n = 0;
  check_driver(
      cuFuncGetAttribute(&n, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, kernel),
      "cuFuncGetAttribute");
  return n;
}

int resident_blocks(
    int device,
    CUfunction kernel,
    int threads,
    size_t shared_bytes) {
  int per_sm = 0;
  check_driver(
      cuOccupancyMaxActiveBlocksPerMultiprocessor(
          &per_sm, kernel, threads, shared_bytes),
      "cuOccupancyMaxActiveBlocksPerMultiprocessor");
  if (per_sm < 1) {
    throw std::runtime_error(
        "mlx-precise CUDA: an rfft_conv block does not fit on the device");
  }
  return per_sm * device_info(device).multiprocessors;
}

} // namespace mlx_precise::cuda
