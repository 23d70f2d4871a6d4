// Parameters of the GPU rfft_conv kernels. The host (C++) fills these structs
// and the kernels (CUDA, Metal) read them, so the layout is written once here
// with fixed-size fields only.
#pragma once

#include "portability.h"

namespace mlx_precise {

// Enumerators rather than constexpr variables: Metal allows program-scope
// variables only in the constant address space.
enum : int { kMaxBatchDims = 8, kMaxFFTStages = 16 };

// Row operands of one launch. A = the transformed signal (u or g), B = the
// second factor (k, or u for the kernel gradient), BIAS, OUT.
enum : int {
  kOperandA = 0,
  kOperandB = 1,
  kOperandBias = 2,
  kOperandOut = 3,
  kNumOperands = 4
};

// Rows of the broadcast batch are numbered by two indices: `outer` runs over
// the dims that select a group (the kernel row, or the gradient's target row),
// `inner` over the remaining dims, in row-major order within each. The element
// offset of an operand's row is the sum of coordinate * stride over both; a
// broadcast dim has stride 0.
struct RowIndex {
  int outer_ndim;
  int inner_ndim;
  MP_INT64 outer_count;
  MP_INT64 inner_count;
  MP_INT64 outer_shape[kMaxBatchDims];
  MP_INT64 inner_shape[kMaxBatchDims];
  MP_INT64 outer_stride[kNumOperands][kMaxBatchDims];
  MP_INT64 inner_stride[kNumOperands][kMaxBatchDims];
  MP_INT64 time_stride[kNumOperands];
};

// The stage list of the host plan (fft_plan.h) for the complex length H.
struct FFTShape {
  int n_half;
  int num_pairs; // split pairs, see IndexPair
  int num_stages;
  int twiddle_count; // butterfly indices j of all stages: triplets w1, w2, w3
  int stage_radix[kMaxFFTStages];
  int stage_log2_quarter[kMaxFFTStages];
  int stage_tw_offset[kMaxFFTStages]; // first triplet of the stage
};

// Positions p and q = partner(p) of the packed spectrum, handled together by
// one thread in the split, the spectral product and the unsplit. Pair 0 holds
// the two self-partnered positions: p = 0 (the DC/Nyquist pair) and q = the
// position of frequency H/2 (q < 0 when H = 1).
struct IndexPair {
  int p;
  int q;
};

// Which entries of the cyclic convolution form the output (see
// conv_geometry.h).
struct ConvShape {
  MP_INT64 fft_size;
  MP_INT64 period;
  MP_INT64 a_len;
  MP_INT64 b_len;
  MP_INT64 out_len;
  MP_INT64 out_origin;
  int fold;
  int a_reversed;
  int out_reversed;
  int has_bias;
  float spectrum_scale; // 1 / (4N), exact
  int rows_per_group_split; // work items per outer index (shared-kernel launch)
  int rows_per_block; // rows a block transforms together (CUDA conv_rows)
};

// ConvolveSum (the jvp with several terms, primitives.h): output row r (row r
// of a RowIndex whose dims are all outer) is the sum over conv terms i of
// conv(a_i, b_i) plus the sum over bias terms j of c_j * d_j, rounded once.
// The operands are numbered as the primitive's inputs: a_0, b_0, a_1, b_1,
// ..., then c_0, d_0, ...; operand k's row r is at the sum over the dims of
// coordinate * outer_stride[k][d], its element t at t * time_stride[k].
enum : int { kMaxSumTerms = 2, kMaxSumOperands = 4 * kMaxSumTerms };

struct SumOperands {
  int conv_terms;
  int bias_terms;
  MP_INT64 outer_stride[kMaxSumOperands][kMaxBatchDims];
  MP_INT64 time_stride[kMaxSumOperands];
};

// The operands' data, numbered as in SumOperands.
struct SumData {
  const MP_DEVICE float* operand[kMaxSumOperands];
};

#if MP_HAS_DOUBLE
// Outputs that did not certify (kernels/certify.h step 2), one bit each at
// e = row * out_len + t (row: the launch's output row number), for the
// recompute pass. The certified precisions need double, which Metal lacks.
struct OpenList {
  unsigned* bits; // bit e % 32 of word e / 32: output e did not certify
  MP_INT64 words;
};

// Threads per block of the kernels that recompute the listed outputs (their
// shared memory is sized for it), the most per block of CUDA's
// recompute_open[_sum] (the host picks 128-512 by the staged rows' shared
// memory), and the bitmap words each of their threads reads at once.
enum : int {
  kRecomputeThreads = 256,
  kRecomputeMaxThreads = 512,
  kOpenWordsPerThread = 4
};

// CUDA's recompute_open_windows (rows of one term too long for shared
// memory): a work item is a window of kWindowOutputs outputs of a row, whose
// marked outputs take their products kWindowChunk entries of b at a time,
// the chunk (as double) and the span of a that it meets (as float,
// kWindowStagedA entries: chunk + window - 1 for the plain layout, plus the
// 16-byte alignment of its start) staged in shared memory; 80 KiB, two
// blocks per SM. A batch of fewer than kWindowStageMin marked outputs reads
// device memory instead (staging a chunk reads as much as two outputs'
// products in it).
enum : int {
  kWindowChunk = 4096,
  kWindowOutputs = 8192,
  kWindowStagedA = kWindowChunk + kWindowOutputs + 4,
  kWindowStageMin = 4
};
#endif

} // namespace mlx_precise
