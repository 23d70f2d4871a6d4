// The extension's kernel compiler: NVRTC on the sources embedded at build time
// (libmlx does not export MLX's cu::JitModule; inside MLX this file is replaced
// by an adapter that compiles through it).
#include "backend/cuda/jit.h"

#include <nvrtc.h>

#include <iterator>
#include <map>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "backend/cuda/jit_sources.h"

namespace mlx_precise::cuda {

namespace {

void check(nvrtcResult r, const char* what) {
  if (r != NVRTC_SUCCESS) {
    throw std::runtime_error(
        std::string("mlx-precise NVRTC: ") + what +
        " failed: " + nvrtcGetErrorString(r));
  }
}

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
  check_driver(cuDeviceGet(&dev, device), "cuDeviceGet");
  int major = 0, minor = 0;
  check_driver(
      cuDeviceGetAttribute(
          &major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev),
      "cuDeviceGetAttribute");
  check_driver(
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
  // --device-as-default-execution-space: the shared kernels/ headers carry no
  // __device__ on their helpers and lambdas (the same text is C++ and Metal);
  // NVRTC 13.0 otherwise rejects the lambdas as host functions.
  const char* options[] = {
      arch.c_str(),
      "--std=c++17",
      "--fmad=false",
      "--prec-div=true",
      "--prec-sqrt=true",
      "--ftz=false",
      "--device-as-default-execution-space"};
  nvrtcResult r = nvrtcCompileProgram(prog, std::size(options), options);
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
  check_driver(cuModuleLoadData(&m.module, cubin.data()), "cuModuleLoadData");
  for (const auto& n : names) {
    const char* lowered = nullptr;
    check(
        nvrtcGetLoweredName(prog, n.c_str(), &lowered), "nvrtcGetLoweredName");
    CUfunction f;
    check_driver(
        cuModuleGetFunction(&f, m.module, lowered), "cuModuleGetFunction");
    allow_dynamic_shared(f, device);
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
    it = modules
             .emplace(
                 key,
                 compile_module(device, kJitMainSource, conv_kernel_names(p)))
             .first;
  }
  return it->second.kernels.at(conv_kernel_name(p, name, shared));
}

namespace {

// The modules of one source, per device: every kernel of `names()` compiled
// together at the first request on that device, cached for the process.
CUfunction cached_kernel(
    const JitSource& source,
    std::vector<std::string> (*names)(),
    int device,
    const std::string& name_expression) {
  static std::mutex mutex;
  static std::map<std::pair<const JitSource*, int>, Module> modules;
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(&source, device);
  auto it = modules.find(key);
  if (it == modules.end())
    it = modules.emplace(key, compile_module(device, source, names())).first;
  return it->second.kernels.at(name_expression);
}

} // namespace

CUfunction get_strict_kernel(int device, const std::string& name_expression) {
  return cached_kernel(
      kJitStrictSource, strict_kernel_names, device, name_expression);
}

CUfunction get_pair_kernel(int device, const std::string& name_expression) {
  return cached_kernel(
      kJitPairSource, pair_kernel_names, device, name_expression);
}

} // namespace mlx_precise::cuda
