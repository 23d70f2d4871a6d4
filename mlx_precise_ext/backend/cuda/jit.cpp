// The extension's kernel compiler: NVRTC on the sources embedded at build time
// (libmlx does not export MLX's cu::JitModule; inside MLX this file is replaced
// by an adapter that compiles through it).
#include "backend/cuda/jit.h"

#include <nvrtc.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string_view>
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

// A compiled module: the cubin and the lowered (mangled) name of each name
// expression, all that loading it needs.
struct Compiled {
  std::vector<char> cubin;
  std::map<std::string, std::string> lowered;
};

// --fmad=false: no contraction of a*b+c anywhere (the double arithmetic of
// "extended" included); the float operations use __fadd_rn & co. as well.
// --device-as-default-execution-space: the shared kernels/ headers carry no
// __device__ on their helpers and lambdas (the same text is C++ and Metal);
// NVRTC 13.0 otherwise rejects the lambdas as host functions.
std::vector<std::string> compile_options(int major, int minor) {
  return {
      "--gpu-architecture=sm_" + std::to_string(major) + std::to_string(minor),
      "--std=c++17",
      "--fmad=false",
      "--prec-div=true",
      "--prec-sqrt=true",
      "--ftz=false",
      "--device-as-default-execution-space"};
}

Compiled compile(
    const JitSource& main,
    const std::vector<std::string>& names,
    const std::vector<std::string>& option_strings) {
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
  std::vector<const char*> options;
  for (const auto& o : option_strings)
    options.push_back(o.c_str());
  nvrtcResult r = nvrtcCompileProgram(prog, options.size(), options.data());
  if (r != NVRTC_SUCCESS) {
    size_t size = 0;
    nvrtcGetProgramLogSize(prog, &size);
    std::string log(size, '\0');
    nvrtcGetProgramLog(prog, log.data());
    throw std::runtime_error(
        std::string("mlx-precise: compiling the CUDA kernels of ") + main.name +
        " failed:\n" + log);
  }
  Compiled c;
  size_t cubin_size = 0;
  check(nvrtcGetCUBINSize(prog, &cubin_size), "nvrtcGetCUBINSize");
  c.cubin.resize(cubin_size);
  check(nvrtcGetCUBIN(prog, c.cubin.data()), "nvrtcGetCUBIN");
  for (const auto& n : names) {
    const char* lowered = nullptr;
    check(
        nvrtcGetLoweredName(prog, n.c_str(), &lowered), "nvrtcGetLoweredName");
    c.lowered[n] = lowered;
  }
  return c;
}

// The on-disk cache of compiled modules. NVRTC takes tens of seconds for the
// float64 row kernels (about a minute a module on an H200 host), once per
// process without it, as MLX's own kernels would without its PTX cache.
// MLX_PRECISE_KERNEL_CACHE_DIR names the directory ("" turns the cache off);
// the default is $XDG_CACHE_HOME/mlx_precise/kernels, else
// ~/.cache/mlx_precise/kernels: a per-user directory, since a cubin found there
// is loaded and run. A file is named by a hash of everything the cubin depends
// on (source and header texts, name expressions, options, NVRTC version) and
// repeats the whole key, so a collision or a stale or damaged file is
// recompiled, never loaded.
std::filesystem::path cache_directory() {
  if (const char* dir = std::getenv("MLX_PRECISE_KERNEL_CACHE_DIR"))
    return dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg)
    return std::filesystem::path(xdg) / "mlx_precise" / "kernels";
  if (const char* home = std::getenv("HOME"); home && *home)
    return std::filesystem::path(home) / ".cache" / "mlx_precise" / "kernels";
  return {};
}

// FNV-1a: a stable file name across processes and builds (std::hash is not
// required to be).
uint64_t fnv1a(std::string_view text) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char ch : text) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

// Built with std::string alone: the extension links libstdc++ statically, and
// its iostreams crashed in the locale's codecvt when loaded into Python on the
// H200 host.
std::string cache_key(
    const JitSource& main,
    const std::vector<std::string>& names,
    const std::vector<std::string>& options) {
  int nvrtc_major = 0, nvrtc_minor = 0;
  check(nvrtcVersion(&nvrtc_major, &nvrtc_minor), "nvrtcVersion");
  std::string key;
  auto field = [&](std::string_view text) {
    key += std::to_string(text.size());
    key += ':';
    key += text;
    key += '\n';
  };
  field(
      "mlx-precise cubin 1, NVRTC " + std::to_string(nvrtc_major) + "." +
      std::to_string(nvrtc_minor));
  for (const auto& o : options)
    field(o);
  for (const auto& n : names)
    field(n);
  field(main.name);
  field(main.text);
  for (int i = 0; i < kJitHeaderCount; ++i) {
    field(kJitHeaders[i].name);
    field(kJitHeaders[i].text);
  }
  return key;
}

// "<bytes> <hash>" of a cubin, checked before the driver sees it.
std::string cubin_stamp(std::string_view cubin) {
  return std::to_string(cubin.size()) + ' ' + std::to_string(fnv1a(cubin));
}

// The whole file, or nothing.
std::optional<std::string> read_file(const std::filesystem::path& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(
      std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f)
    return std::nullopt;
  std::string bytes;
  char buffer[1 << 16];
  size_t got;
  while ((got = std::fread(buffer, 1, sizeof(buffer), f.get())) > 0)
    bytes.append(buffer, got);
  if (std::ferror(f.get()))
    return std::nullopt;
  return bytes;
}

// The file: the key, then per name "name\tlowered\n", then the cubin's stamp
// line and the cubin.
bool read_cached(
    const std::filesystem::path& path,
    const std::string& key,
    const std::vector<std::string>& names,
    Compiled& out) {
  const std::optional<std::string> bytes = read_file(path);
  if (!bytes || bytes->compare(0, key.size(), key) != 0)
    return false;
  size_t at = key.size();
  Compiled c;
  for (const auto& n : names) {
    const size_t tab = bytes->find('\t', at);
    const size_t end = bytes->find('\n', at);
    if (tab == std::string::npos || end == std::string::npos || tab > end ||
        bytes->compare(at, tab - at, n) != 0 || end == tab + 1)
      return false;
    c.lowered[n] = bytes->substr(tab + 1, end - tab - 1);
    at = end + 1;
  }
  // The cubin's length and hash: the driver does not check a cubin's extent,
  // and a truncated one crashed cuModuleLoadData on the H200 host.
  const size_t end = bytes->find('\n', at);
  if (end == std::string::npos)
    return false;
  const std::string_view cubin = std::string_view(*bytes).substr(end + 1);
  if (bytes->compare(at, end - at, cubin_stamp(cubin)) != 0 || cubin.empty())
    return false;
  c.cubin.assign(cubin.begin(), cubin.end());
  out = std::move(c);
  return true;
}

// Written to a temporary name and renamed, so concurrent processes (pytest
// workers) never read a partial file. A cache that cannot be written is
// skipped: it only saves time.
void write_cached(
    const std::filesystem::path& path,
    const std::string& key,
    const std::vector<std::string>& names,
    const Compiled& c) {
  std::error_code error;
  std::filesystem::create_directories(path.parent_path(), error);
  if (error)
    return;
  std::string bytes = key;
  for (const auto& n : names)
    bytes += n + '\t' + c.lowered.at(n) + '\n';
  const std::string_view cubin(c.cubin.data(), c.cubin.size());
  bytes += cubin_stamp(cubin) + '\n';
  bytes.append(cubin);
  const std::string temporary =
      path.string() + ".tmp" + std::to_string(static_cast<long>(getpid()));
  FILE* f = std::fopen(temporary.c_str(), "wb");
  if (!f)
    return;
  const bool written =
      std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  if (std::fclose(f) != 0 || !written) {
    std::filesystem::remove(temporary, error);
    return;
  }
  std::filesystem::rename(temporary, path, error);
  if (error)
    std::filesystem::remove(temporary, error);
}

// Loads a compiled module and looks up its kernels: the driver's result,
// CUDA_SUCCESS or the first failure (a cached cubin the driver refuses is
// compiled again).
CUresult load_module(
    int device,
    const Compiled& compiled,
    const std::vector<std::string>& names,
    Module& m) {
  if (CUresult r = cuModuleLoadData(&m.module, compiled.cubin.data());
      r != CUDA_SUCCESS)
    return r;
  for (const auto& n : names) {
    CUfunction f;
    if (CUresult r =
            cuModuleGetFunction(&f, m.module, compiled.lowered.at(n).c_str());
        r != CUDA_SUCCESS) {
      cuModuleUnload(m.module);
      return r;
    }
    allow_dynamic_shared(f, device);
    m.kernels[n] = f;
  }
  return CUDA_SUCCESS;
}

// The kernels `names` (name expressions) of one source, compiled for the
// device's architecture, or read from the cache.
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
  const auto options = compile_options(major, minor);

  Module m;
  const auto directory = cache_directory();
  if (directory.empty()) {
    check_driver(
        load_module(device, compile(main, names, options), names, m),
        "loading the compiled kernels");
    return m;
  }
  const std::string key = cache_key(main, names, options);
  char file[32];
  std::snprintf(
      file,
      sizeof(file),
      "%016llx.cubin",
      static_cast<unsigned long long>(fnv1a(key)));
  const auto path = directory / file;
  Compiled cached;
  if (read_cached(path, key, names, cached) &&
      load_module(device, cached, names, m) == CUDA_SUCCESS)
    return m;
  m = Module{};
  Compiled compiled = compile(main, names, options);
  write_cached(path, key, names, compiled);
  check_driver(
      load_module(device, compiled, names, m), "loading the compiled kernels");
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
