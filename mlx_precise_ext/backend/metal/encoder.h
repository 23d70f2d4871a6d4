// Encoding mlx-precise's kernels on MLX's Metal command encoder, shared by the
// Metal eval_gpu files: pipelines of the extension's libraries, temporary
// buffers, the certified kernels' open bitmaps and one-thread-per-element
// dispatches.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include <mlx/allocator.h>
#include <mlx/backend/metal/device.h>

namespace mlx_precise::metal {

namespace mx = mlx::core;

// One of the extension's kernel libraries: its name in the device's library
// cache and its source (kernel_sources.h).
struct KernelLibrary {
  const char* name;
  const char* (*source)();
};

// The library, compiled from its source by the device at first use.
inline MTL::Library* library(mx::metal::Device& d, const KernelLibrary& lib) {
  return d.get_library(
      lib.name, [source = lib.source] { return std::string(source()); });
}

// The pipeline of the entry point `name` of the library.
inline MTL::ComputePipelineState* kernel(
    mx::metal::Device& d,
    const KernelLibrary& lib,
    const std::string& name) {
  return d.get_kernel(name, library(d, lib));
}

// A device buffer of at least `bytes` that lives until the command buffer
// that uses it has run.
inline mx::array scratch(mx::metal::CommandEncoder& enc, size_t bytes) {
  mx::array buffer(
      {static_cast<int>((std::max<size_t>(bytes, 1) + 7) / 8)},
      mx::uint64,
      nullptr,
      {});
  buffer.set_data(mx::allocator::malloc(buffer.nbytes()));
  enc.add_temporary(buffer);
  return buffer;
}

// One thread per element of a grid of `total`, up to 256 per threadgroup.
inline void dispatch_elements(
    mx::metal::CommandEncoder& enc,
    MTL::ComputePipelineState* k,
    int64_t total) {
  const int64_t threads = std::min<int64_t>(
      256, static_cast<int64_t>(k->maxTotalThreadsPerThreadgroup()));
  enc.dispatch_threads(MTL::Size(total, 1, 1), MTL::Size(threads, 1, 1));
}

// A bitmap of one bit per output for the certified kernels to mark the
// outputs that do not certify, cleared by `clear` (which takes the bitmap at
// buffer bits_slot and its length in words at words_slot).
inline mx::array open_bitmap(
    mx::metal::CommandEncoder& enc,
    MTL::ComputePipelineState* clear,
    int64_t outputs,
    int bits_slot,
    int words_slot) {
  const int64_t words = (outputs + 31) / 32;
  mx::array bits = scratch(enc, words * sizeof(uint32_t));
  enc.set_compute_pipeline_state(clear);
  enc.set_output_array(bits, bits_slot);
  enc.set_bytes(words, words_slot);
  dispatch_elements(enc, clear, words);
  return bits;
}

} // namespace mlx_precise::metal
