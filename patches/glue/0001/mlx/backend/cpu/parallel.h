// How the CPU kernels of rfft_conv and the strict ops spread their rows. MLX's
// CPU backend starts no threads of its own, so they run serially on the
// stream's thread. Every row or chunk gets the same operations whichever
// thread runs it, so the bits do not depend on this choice.
#pragma once

#include <algorithm>
#include <cstdint>

namespace mlx::core::cpu {

inline int num_threads() {
  return 1;
}

// Runs fn(c) for c in [0, count).
template <class Fn>
void parallel_for(int64_t count, int /* num_threads */, Fn fn) {
  for (int64_t i = 0; i < count; ++i)
    fn(i);
}

// Runs fn(begin, end) over [0, count) in chunks of `grain`.
template <class Fn>
void parallel_chunks(int64_t count, int64_t grain, int, Fn fn) {
  for (int64_t begin = 0; begin < count; begin += grain)
    fn(begin, std::min(count, begin + grain));
}

} // namespace mlx::core::cpu
