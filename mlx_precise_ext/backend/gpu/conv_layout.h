// Host side of the GPU rfft_conv backends (CUDA, Metal): the FFT tables in
// the layout the kernels read, built from the one host plan (fft_plan.h), and
// the row numbering of a launch (conv_params.h).
#pragma once

#include <array>
#include <vector>

#include <mlx/array.h>

#include "backend/common/conv_geometry.h"
#include "kernels/conv_params.h"
#include "kernels/fft_butterflies.h"

namespace mlx_precise::gpu {

namespace mx = mlx::core;

// Tables of the real FFT of length fft_size in the working precision T.
template <class T>
struct FFTTables {
  FFTShape shape;
  // w1, w2, w3 of butterfly index j of each stage, side by side (one address
  // per butterfly): entry 3 (stage offset + j) + k - 1 is w^(k j).
  std::vector<cpx<T>> twiddles;
  std::vector<cpx<T>> split; // split twiddle of each position
  std::vector<IndexPair> pairs; // shape.num_pairs
};

template <class T>
FFTTables<T> make_fft_tables(int64_t fft_size);

// The twist of the split rows' negacyclic half (kernels/rfft_conv_rows.h,
// "split rows"): w^j, w = exp(-2 pi i / fft_size), j < fft_size / 4.
template <class T>
std::vector<cpx<T>> make_twist_table(int64_t fft_size);

// Whether the split rows can compute the geometry's size-N cyclic
// convolution: the transformed row (a) within the first N/2 entries (the
// kernel row is folded, M2-BERT's 2L taps at N = 2L included), N >= 8.
bool split_rows_apply(const ConvGeometry& g);

// Whether split gradient rows (split_gradient_row) can compute both
// gradients: grad u's geometry by split rows, and grad k's (the cotangent
// and u) with both rows within the first N/2 entries (no folds), one N.
bool split_gradients_apply(const ConvGeometry& u, const ConvGeometry& k);

// The twist of the deep split rows (kernels/rfft_conv_rows.h, "deep split
// rows"), w = exp(-2 pi i / fft_size), P = fft_size / 8: w^k, then w^(5k),
// for k < 2P, then w^(2j) for j < P.
template <class T>
std::vector<cpx<T>> make_deep_twist_table(int64_t fft_size);

// split_rows_apply, and N >= 64 (pieces of at least 8 points).
bool deep_split_rows_apply(const ConvGeometry& g);

ConvShape conv_shape(
    const ConvGeometry& g,
    bool has_bias,
    int64_t rows_per_group_split,
    int rows_per_block = 1);

// One GPU evaluation of RFFTConv: the operands, the batch whose rows are
// transformed, the geometry, and whether each output row is one full row
// (otherwise outputs sum spectrally over broadcast rows: gradients), as on
// the CPU.
struct ConvLaunch {
  const mx::array& a;
  const mx::array& b;
  const mx::array* bias; // nullptr without bias
  mx::Shape full;
  ConvGeometry geo;
  bool one_to_one;
};
ConvLaunch conv_launch(
    ConvVariant variant,
    int64_t period,
    const std::vector<mx::array>& in,
    bool has_bias,
    const mx::array& out);

// One GPU evaluation of ConvolveSum (the jvp with several terms): every
// output row is its own target (ix: outer dims only, operand Out), and the
// inputs' strides, numbered as the primitive's inputs (conv_params.h).
struct SumLaunch {
  ConvGeometry geo;
  RowIndex ix;
  SumOperands operands;
};
SumLaunch sum_launch(
    int64_t period,
    const std::vector<mx::array>& in,
    int conv_terms,
    const mx::array& out);

// Rows of the batch `full` (all but the last axis of each operand, right-
// aligned, size-1 dims broadcast): outer dims are those where `group_shape`
// has size > 1 (its last axis is time and is ignored). Missing operands are
// nullptr. Throws if more than kMaxBatchDims dims of size > 1 remain.
RowIndex make_row_index(
    const mx::Shape& full,
    const mx::Shape& group_shape,
    const std::array<const mx::array*, kNumOperands>& operands);

} // namespace mlx_precise::gpu
