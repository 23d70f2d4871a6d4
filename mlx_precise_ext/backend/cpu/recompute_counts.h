// How many certified outputs the CPU's extended / dd addmm and rfft_conv
// wrote, and how many of those did not certify and were recomputed exactly: a
// test hook (mlx_precise._ext.testing.recompute_counts) that measures the
// exact fallback's share on real inputs
// (benchmarks/m2bert_recompute_fraction.py). One relaxed atomic addition per
// addmm block or convolution row.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

namespace mlx_precise::cpu {

enum class CertifiedOp { Addmm = 0, RFFTConv = 1 };

struct RecomputeCount {
  std::atomic<int64_t> outputs{0};
  std::atomic<int64_t> recomputed{0};
};

inline std::array<RecomputeCount, 2>& recompute_counts() {
  static std::array<RecomputeCount, 2> counts;
  return counts;
}

inline RecomputeCount& recompute_count(CertifiedOp op) {
  return recompute_counts()[static_cast<int>(op)];
}

inline void
count_recomputed(CertifiedOp op, int64_t outputs, int64_t recomputed) {
  RecomputeCount& count = recompute_count(op);
  count.outputs.fetch_add(outputs, std::memory_order_relaxed);
  count.recomputed.fetch_add(recomputed, std::memory_order_relaxed);
}

} // namespace mlx_precise::cpu
