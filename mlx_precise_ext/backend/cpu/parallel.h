// How the CPU kernels spread their independent rows over threads: the one
// place that differs between this extension and the ops inside MLX (whose CPU
// backend starts no threads of its own and runs them serially on the stream's
// thread). Every kernel gives each row or chunk the same operations whichever
// thread runs it, so the bits do not depend on the thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <vector>

namespace mlx_precise::cpu {

// Threads for one evaluation: MLX_PRECISE_NUM_THREADS, else the hardware's.
inline int num_threads() {
  if (const char* env = std::getenv("MLX_PRECISE_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1)
      return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

// Runs fn(c) for c in [0, count) on up to num_threads threads (the calling
// thread included), each taking the next unclaimed c.
template <class Fn>
void parallel_for(int64_t count, int num_threads, Fn fn) {
  const int workers =
      static_cast<int>(std::min<int64_t>(std::max(num_threads, 1), count));
  if (workers <= 1) {
    for (int64_t i = 0; i < count; ++i)
      fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  auto work = [&]() {
    for (int64_t i = next++; i < count; i = next++)
      fn(i);
  };
  std::vector<std::thread> threads;
  for (int w = 1; w < workers; ++w)
    threads.emplace_back(work);
  work();
  for (auto& t : threads)
    t.join();
}

// Runs fn(begin, end) over [0, count) in chunks of `grain`.
template <class Fn>
void parallel_chunks(int64_t count, int64_t grain, int num_threads, Fn fn) {
  parallel_for((count + grain - 1) / grain, num_threads, [&](int64_t c) {
    fn(c * grain, std::min(count, (c + 1) * grain));
  });
}

} // namespace mlx_precise::cpu
