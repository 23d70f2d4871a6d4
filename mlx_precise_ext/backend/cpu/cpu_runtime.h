// Run-time choices shared by every CPU primitive of mlx-precise: which
// instruction-set build runs a kernel, and handing the work to MLX's CPU
// stream (threads: parallel.h).
#pragma once

#include <algorithm>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <mlx/allocator.h>
#include <mlx/array.h>
#include <mlx/backend/cpu/encoder.h>

#include "backend/cpu/parallel.h"

namespace mlx_precise::cpu {

// Both builds compute identical bits; MLX_PRECISE_CPU_ISA=base forces the
// baseline build (the tests use it to show exactly that).
inline bool use_avx2() {
#if defined(__x86_64__)
  const char* env = std::getenv("MLX_PRECISE_CPU_ISA");
  if (env && std::string(env) == "base")
    return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// Allocates the outputs and runs body(inputs, outputs) on the stream's CPU
// encoder, which keeps the inputs alive until it has run.
template <class Body>
void dispatch_outputs(
    mlx::core::Stream stream,
    const std::vector<mlx::core::array>& inputs,
    std::vector<mlx::core::array>& outputs,
    Body body) {
  auto& encoder = mlx::core::cpu::get_command_encoder(stream);
  for (const auto& x : inputs)
    encoder.set_input_array(x);
  for (auto& o : outputs) {
    o.set_data(mlx::core::allocator::malloc(o.nbytes()));
    encoder.set_output_array(o);
  }
  encoder.dispatch(
      [inputs, outputs, body]() mutable { body(inputs, outputs); });
}

template <class Body>
void dispatch(
    mlx::core::Stream stream,
    const std::vector<mlx::core::array>& inputs,
    mlx::core::array& out,
    Body body) {
  std::vector<mlx::core::array> outputs{out};
  dispatch_outputs(
      stream,
      inputs,
      outputs,
      [body](
          const std::vector<mlx::core::array>& in,
          std::vector<mlx::core::array>& outs) mutable { body(in, outs[0]); });
}

} // namespace mlx_precise::cpu
