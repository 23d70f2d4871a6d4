// The work of one rfft_conv evaluation on the CPU, described as rows of
// float32 data (any stride) so that views and broadcasts need no copies.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/common/conv_geometry.h"
#include "precision.h"

namespace mlx_precise::cpu {

// Element i of the row is data[i * stride]; stride 0 repeats one value. A
// row of pairs (the inputs of pair_rfft_conv) also has lo parts: element i is
// data[i * stride] + lo[i * lo_stride].
struct RealRow {
  const float* data = nullptr;
  int64_t stride = 1;
  const float* lo = nullptr;
  int64_t lo_stride = 1;
};

using mlx_precise::ConvGeometry;

// One output row per (a row, b row) pair; b rows (kernels) are shared, so
// their spectra are computed once. The bias term is a[t] * bias[t].
struct SharedKernelTask {
  struct OutRow {
    RealRow a;
    int64_t b_index;
    bool has_bias;
    RealRow bias;
    float* out;
    float* out_lo = nullptr; // pair output: out gets hi, out_lo gets lo
  };
  std::vector<RealRow> b_rows;
  std::vector<OutRow> rows;
};

// Each target row is a sum of convolutions (gradients over broadcast dims):
// target = sum_terms conv(a, b) + sum_bias_terms a * bias, accumulated in the
// working precision and rounded once.
struct ReduceTask {
  struct Term {
    RealRow a;
    RealRow b;
  };
  struct BiasTerm {
    RealRow a;
    RealRow bias;
  };
  struct Target {
    float* out;
    std::vector<Term> terms;
    std::vector<BiasTerm> bias_terms;
  };
  std::vector<Target> targets;
};

// out[t] = sum over the target's rows of a[t] * b[t], one rounding (the
// gradient of the bias summed over its broadcast dimensions). Rows of length
// len; a bias broadcast along time sums over t too, see rfft_conv.cpp.
struct ProductSumTask {
  struct Target {
    float* out;
    bool sum_over_time; // the bias is broadcast along time: one output value
    std::vector<RealRow> a;
    std::vector<RealRow> b;
  };
  std::vector<Target> targets;
};

// Whether extended/dd rfft_conv outputs are certified (the default). Off only
// through mlx_precise._ext.testing, so that benchmarks can time the cost of
// certification side by side in one process: the outputs are then the float64
// engine's values rounded once, not necessarily correctly rounded.
bool rfft_conv_certification_enabled();
void set_rfft_conv_certification(bool enabled);

// One implementation per instruction-set build (see CMakeLists.txt); both
// perform identical IEEE operations in identical order.
#define MP_DECLARE_CPU_KERNELS(isa) \
  namespace isa {                   \
  void run_shared_kernel(           \
      Precision,                    \
      const ConvGeometry&,          \
      const SharedKernelTask&,      \
      int num_threads);             \
  void run_reduce(                  \
      Precision,                    \
      const ConvGeometry&,          \
      const ReduceTask&,            \
      int num_threads);             \
  void run_product_sum(             \
      Precision,                    \
      const ProductSumTask&,        \
      int64_t len,                  \
      int num_threads);             \
  }

MP_DECLARE_CPU_KERNELS(base)
MP_DECLARE_CPU_KERNELS(avx2)

} // namespace mlx_precise::cpu
