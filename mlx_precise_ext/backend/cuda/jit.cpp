#include "backend/cuda/jit.h"

#include <nvrtc.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "backend/cuda/jit_sources.h"

namespace mlx_precise::cuda {

namespace {

void check(CUresult r, const char* what) {
  if (r != CUDA_SUCCESS) {
    const char* msg = nullptr;
    cuGetErrorString(r, &msg);
    throw std::runtime_error(
        std::string("mlx-precise CUDA: ") + what +
        " failed: " + (msg ? msg : "unknown error"));
  }
}

void check(nvrtcResult r, const char* what) {
  if (r != NVRTC_SUCCESS) {
    throw std::runtime_error(
        std::string("mlx-precise NVRTC: ") + what +
        " failed: " + nvrtcGetErrorString(r));
  }
}

const char* working_type(Precision p) {
  switch (p) {
    case Precision::Float32:
      return "float";
    case Precision::Extended:
      return "double";
    case Precision::DoubleDouble:
      return "mlx_precise::ff";
  }
  return "";
}

std::string name_expression(Precision p, const std::string& name, bool shared) {
  std::string e = "mlx_precise::gpu::" + name + "<" + working_type(p);
  if (name != "product_sum")
    e += shared ? ", true" : ", false";
  return e + ">";
}

const char* const kKernelNames[] = {
    "kernel_spectra",
    "conv_rows",
    "reduce_rows",
    "product_sum"};

// Every kernel of strict_kernels.cuh, compiled together at first use.
const char* const kStrictKernelNames[] = {
    "mlx_precise::gpu::addmm_norms",
    "mlx_precise::gpu::addmm_tiles<mlx_precise::gpu::DoubleWordDot>",
    "mlx_precise::gpu::pack_operand<float>",
    "mlx_precise::gpu::pack_operand<double>",
    "mlx_precise::gpu::fill_from_c",
    "mlx_precise::gpu::addmm_certify",
    "mlx_precise::gpu::addmm_recompute",
    "mlx_precise::gpu::layer_norm_rows<double>",
    "mlx_precise::gpu::layer_norm_rows<mlx_precise::ff>",
    "mlx_precise::gpu::layer_norm_grad_rows<double>",
    "mlx_precise::gpu::layer_norm_grad_rows<mlx_precise::ff>",
    "mlx_precise::gpu::layer_norm_param_grads<double>",
    "mlx_precise::gpu::layer_norm_param_grads<mlx_precise::ff>"};

// Every kernel of pair_kernels.cuh, compiled together at first use.
const char* const kPairKernelNames[] = {
    "mlx_precise::gpu::pair_elementwise",
    "mlx_precise::gpu::pair_layer_norm_rows",
    "mlx_precise::gpu::pair_pack_operand",
    "mlx_precise::gpu::pair_addmm_finish"};

struct Module {
  CUmodule module = nullptr;
  std::map<std::string, CUfunction> kernels; // by name expression
};

// The kernels `names` (name expressions) of one source, compiled for the
// device's architecture. --fmad=false: no contraction of a*b+c anywhere (the
// double arithmetic of "extended" included); the float operations use
// __fadd_rn & co. as well.
Module compile_module(
    int device,
    const JitSource& main,
    const std::vector<std::string>& names) {
  CUdevice dev;
  check(cuDeviceGet(&dev, device), "cuDeviceGet");
  int major = 0, minor = 0;
  check(
      cuDeviceGetAttribute(
          &major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev),
      "cuDeviceGetAttribute");
  check(
      cuDeviceGetAttribute(
          &minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev),
      "cuDeviceGetAttribute");

  std::vector<const char*> header_texts, header_names;
  for (int i = 0; i < kJitHeaderCount; ++i) {
    header_texts.push_back(kJitHeaders[i].text);
    header_names.push_back(kJitHeaders[i].name);
  }
  nvrtcProgram prog;
  check(
      nvrtcCreateProgram(
          &prog,
          main.text,
          main.name,
          kJitHeaderCount,
          header_texts.data(),
          header_names.data()),
      "nvrtcCreateProgram");
  struct Destroy {
    nvrtcProgram* p;
    ~Destroy() {
      nvrtcDestroyProgram(p);
    }
  } destroy{&prog};

  for (const auto& n : names)
    check(nvrtcAddNameExpression(prog, n.c_str()), "nvrtcAddNameExpression");

  const std::string arch =
      "--gpu-architecture=sm_" + std::to_string(major) + std::to_string(minor);
  const char* options[] = {
      arch.c_str(),
      "--std=c++17",
      "--fmad=false",
      "--prec-div=true",
      "--prec-sqrt=true",
      "--ftz=false"};
  nvrtcResult r = nvrtcCompileProgram(prog, 6, options);
  if (r != NVRTC_SUCCESS) {
    size_t size = 0;
    nvrtcGetProgramLogSize(prog, &size);
    std::string log(size, '\0');
    nvrtcGetProgramLog(prog, log.data());
    throw std::runtime_error(
        std::string("mlx-precise: compiling the CUDA kernels of ") + main.name +
        " failed:\n" + log);
  }
  size_t cubin_size = 0;
  check(nvrtcGetCUBINSize(prog, &cubin_size), "nvrtcGetCUBINSize");
  std::vector<char> cubin(cubin_size);
  check(nvrtcGetCUBIN(prog, cubin.data()), "nvrtcGetCUBIN");

  Module m;
  check(cuModuleLoadData(&m.module, cubin.data()), "cuModuleLoadData");
  int max_shared = device_info(device).max_shared_per_block;
  for (const auto& n : names) {
    const char* lowered = nullptr;
    check(
        nvrtcGetLoweredName(prog, n.c_str(), &lowered), "nvrtcGetLoweredName");
    CUfunction f;
    check(cuModuleGetFunction(&f, m.module, lowered), "cuModuleGetFunction");
    // Dynamic shared memory may use what the kernel's static shared variables
    // (the snap decision's row summaries) leave of the per-block maximum.
    int static_shared = 0;
    check(
        cuFuncGetAttribute(
            &static_shared, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, f),
        "cuFuncGetAttribute");
    check(
        cuFuncSetAttribute(
            f,
            CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            max_shared - static_shared),
        "cuFuncSetAttribute");
    m.kernels[n] = f;
  }
  return m;
}

} // namespace

CUfunction
get_kernel(int device, Precision p, const std::string& name, bool shared) {
  static std::mutex mutex;
  static std::map<std::pair<int, Precision>, Module> modules;
  std::lock_guard<std::mutex> lock(mutex);
  auto key = std::make_pair(device, p);
  auto it = modules.find(key);
  if (it == modules.end()) {
    std::vector<std::string> names;
    for (const char* k : kKernelNames) {
      names.push_back(name_expression(p, k, true));
      if (std::string(k) != "product_sum")
        names.push_back(name_expression(p, k, false));
    }
    it = modules.emplace(key, compile_module(device, kJitMainSource, names))
             .first;
  }
  return it->second.kernels.at(name_expression(p, name, shared));
}

namespace {

// The modules of one source, per device: every kernel of `names` compiled
// together at the first request on that device, cached for the process.
template <size_t N>
CUfunction cached_kernel(
    const JitSource& source,
    const char* const (&names)[N],
    int device,
    const std::string& name_expression) {
  static std::mutex mutex;
  static std::map<std::pair<const JitSource*, int>, Module> modules;
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(&source, device);
  auto it = modules.find(key);
  if (it == modules.end()) {
    const std::vector<std::string> all(names, names + N);
    it = modules.emplace(key, compile_module(device, source, all)).first;
  }
  return it->second.kernels.at(name_expression);
}

} // namespace

CUfunction get_strict_kernel(int device, const std::string& name_expression) {
  return cached_kernel(
      kJitStrictSource, kStrictKernelNames, device, name_expression);
}

CUfunction get_pair_kernel(int device, const std::string& name_expression) {
  return cached_kernel(
      kJitPairSource, kPairKernelNames, device, name_expression);
}

const DeviceInfo& device_info(int device) {
  static std::mutex mutex;
  static std::map<int, DeviceInfo> infos;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = infos.find(device);
  if (it != infos.end())
    return it->second;
  CUdevice dev;
  check(cuDeviceGet(&dev, device), "cuDeviceGet");
  DeviceInfo info{};
  check(
      cuDeviceGetAttribute(
          &info.multiprocessors, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev),
      "cuDeviceGetAttribute");
  check(
      cuDeviceGetAttribute(
          &info.max_shared_per_block,
          CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
          dev),
      "cuDeviceGetAttribute");
  return infos.emplace(device, info).first->second;
}

CUdeviceptr upload_constant(const void* data, size_t bytes) {
  CUdeviceptr ptr;
  check(cuMemAlloc(&ptr, bytes > 0 ? bytes : 1), "cuMemAlloc");
  if (bytes > 0)
    check(cuMemcpyHtoD(ptr, data, bytes), "cuMemcpyHtoD");
  return ptr;
}

int max_dynamic_shared(CUfunction kernel) {
  int n = 0;
  check(
      cuFuncGetAttribute(
          &n, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, kernel),
      "cuFuncGetAttribute");
  return n;
}

int max_block_threads(CUfunction kernel) {
  int n = 0;
  check(
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
  check(
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
