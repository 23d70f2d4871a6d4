// CUDA entry points of rfft_conv, compiled at run time by NVRTC (jit.cpp)
// together with the shared kernel headers, once per working precision T.
// kShared: the block's rows live in dynamic shared memory; otherwise in the
// block's slot of a global workspace (rows too long for shared memory), and
// the grid is limited to the blocks that can be resident at once.
#include "rfft_conv_rows.h"

namespace mlx_precise::gpu {

extern __shared__ __align__(16) unsigned char shared_rows[];

// `buffers` rows of h complex values: (re, im) arrays of h entries each.
template <class T, bool kShared>
__device__ __forceinline__ T* row_storage(T* workspace, int buffers, int h) {
  if (kShared)
    return reinterpret_cast<T*>(shared_rows);
  return workspace + static_cast<MP_INT64>(blockIdx.x) * buffers * 2 * h;
}

template <class T>
__device__ __forceinline__ void
fft_forward(T* re, T* im, const FFTShape& fs, const cpx<T>* tw) {
  for (int s = 0; s < fs.num_stages; ++s) {
    fft_stage<false, T>(re, im, fs, s, tw, threadIdx.x, blockDim.x);
    __syncthreads();
  }
}

template <class T>
__device__ __forceinline__ void
fft_inverse(T* re, T* im, const FFTShape& fs, const cpx<T>* tw) {
  for (int s = fs.num_stages - 1; s >= 0; --s) {
    fft_stage<true, T>(re, im, fs, s, tw, threadIdx.x, blockDim.x);
    __syncthreads();
  }
}

// Spectra of the kernel rows (operand B, outer index = kernel row), scaled by
// 1/(4N), in pair order; for the precisions that snap, also each kernel row's
// snap summary, so that conv_rows need not re-read the row for every output.
template <class T, bool kShared>
__global__ void kernel_spectra(
    const float* b,
    const RowIndex ix,
    const ConvShape g,
    const FFTShape fs,
    const cpx<T>* tw,
    const cpx<T>* split_tw,
    const IndexPair* pairs,
    cpx<T>* spectra,
    RowSummary* summaries,
    T* workspace) {
  const int h = fs.n_half;
  T* re = row_storage<T, kShared>(workspace, 1, h);
  T* im = re + h;
  __shared__ unsigned int summary_max;
  __shared__ int summary_quantum;
  const bool snaps = snap_roundoff_exp(T{}) < 0;
  if (snaps && threadIdx.x == 0)
    summary_reset(&summary_max, &summary_quantum, 0);
  __syncthreads();
  for (MP_INT64 kk = blockIdx.x; kk < ix.outer_count; kk += gridDim.x) {
    const RowSummary part = load_real_row<T, true>(
        re,
        im,
        b + row_offset(ix, kOperandB, kk, 0),
        ix.time_stride[kOperandB],
        g.b_len,
        false,
        h,
        threadIdx.x,
        blockDim.x);
    if (snaps)
      summary_publish(&summary_max, &summary_quantum, 0, part);
    __syncthreads();
    // Other threads publish again only after the barrier that ends this row.
    if (snaps && threadIdx.x == 0) {
      summaries[kk] = summary_read(&summary_max, &summary_quantum, 0);
      summary_reset(&summary_max, &summary_quantum, 0);
    }
    fft_forward<T>(re, im, fs, tw);
    store_spectrum<T>(
        re,
        im,
        pairs,
        split_tw,
        g.spectrum_scale,
        spectra + kk * 2 * fs.num_pairs,
        fs.num_pairs,
        threadIdx.x,
        blockDim.x);
    __syncthreads();
  }
}

// One output row per (outer = kernel row, inner) pair: y = conv(a, k) (+ a *
// bias). Work item = (kernel row, split); a block runs the rows j = split,
// split + S, ... of its kernel row, so blocks that share a spectrum run close
// together and read it from L2.
template <class T, bool kShared>
__global__ void conv_rows(
    const float* a,
    const float* b,
    const float* bias,
    float* out,
    const RowIndex ix,
    const ConvShape g,
    const FFTShape fs,
    const cpx<T>* tw,
    const cpx<T>* split_tw,
    const IndexPair* pairs,
    const cpx<T>* spectra,
    const RowSummary* b_summaries,
    T* workspace) {
  const int h = fs.n_half;
  T* re = row_storage<T, kShared>(workspace, 1, h);
  T* im = re + h;
  const MP_INT64 splits = g.rows_per_group_split;
  const MP_INT64 items = ix.outer_count * splits;
  __shared__ unsigned int summary_max[kSummarySlots];
  __shared__ int summary_quantum[kSummarySlots];
  const bool snaps = snap_roundoff_exp(T{}) < 0;
  // Slots are reset before the first row and at the end of each row, before
  // the barrier that precedes the next row's publishes.
  if (snaps && threadIdx.x < kSummarySlots)
    summary_reset(summary_max, summary_quantum, threadIdx.x);
  __syncthreads();
  for (MP_INT64 item = blockIdx.x; item < items; item += gridDim.x) {
    const MP_INT64 kk = item / splits;
    const cpx<T>* spectrum = spectra + kk * 2 * fs.num_pairs;
    for (MP_INT64 j = item % splits; j < ix.inner_count; j += splits) {
      const float* a_row = a + row_offset(ix, kOperandA, kk, j);
      const MP_INT64 a_step = ix.time_stride[kOperandA];
      const float* bias_row =
          bias + (g.has_bias ? row_offset(ix, kOperandBias, kk, j) : 0);
      const MP_INT64 bias_step = ix.time_stride[kOperandBias];
      const RowSummary a_part = load_real_row<T, true>(
          re,
          im,
          a_row,
          a_step,
          g.a_len,
          g.a_reversed,
          h,
          threadIdx.x,
          blockDim.x);
      if (snaps) {
        summary_publish(summary_max, summary_quantum, kSummaryA, a_part);
        if (g.has_bias) {
          summary_publish(
              summary_max,
              summary_quantum,
              kSummaryBias,
              summarize_part(
                  bias_row, bias_step, g.out_len, threadIdx.x, blockDim.x));
        }
      }
      __syncthreads();
      int snap = kNoSnap;
      if (snaps) {
        snap = snap_from_summaries<T>(
            summary_read(summary_max, summary_quantum, kSummaryA),
            b_summaries[kk],
            g.has_bias,
            summary_read(summary_max, summary_quantum, kSummaryBias),
            g,
            1);
      }
      fft_forward<T>(re, im, fs, tw);
      multiply_by_spectrum<T>(
          re,
          im,
          pairs,
          split_tw,
          spectrum,
          fs.num_pairs,
          threadIdx.x,
          blockDim.x);
      __syncthreads();
      fft_inverse<T>(re, im, fs, tw);
      float* out_row = out + row_offset(ix, kOperandOut, kk, j);
      for (MP_INT64 t = threadIdx.x; t < g.out_len; t += blockDim.x) {
        const T v = gather_output<T>(re, im, g, t);
        out_row[t] = g.has_bias
            ? finish_output(
                  v, true, a_row[t * a_step], bias_row[t * bias_step], snap)
            : finish_output(v, false, 0.0f, 0.0f, snap);
      }
      if (snaps && threadIdx.x < kSummarySlots)
        summary_reset(summary_max, summary_quantum, threadIdx.x);
      __syncthreads();
    }
  }
}

// Gradient rows: target (outer) = sum over inner of corr/conv(a, b) + sum of
// a * bias, accumulated spectrally in the block's slot of `acc` and inverted
// once. The grid never exceeds the resident blocks (acc has one slot each).
template <class T, bool kShared>
__global__ void reduce_rows(
    const float* a,
    const float* b,
    const float* bias,
    float* out,
    const RowIndex ix,
    const ConvShape g,
    const FFTShape fs,
    const cpx<T>* tw,
    const cpx<T>* split_tw,
    const IndexPair* pairs,
    cpx<T>* acc_slots,
    T* workspace) {
  const int h = fs.n_half;
  T* a_re = row_storage<T, kShared>(workspace, 2, h);
  T* a_im = a_re + h;
  T* b_re = a_im + h;
  T* b_im = b_re + h;
  cpx<T>* acc =
      acc_slots + static_cast<MP_INT64>(blockIdx.x) * 2 * fs.num_pairs;
  const T tag{};
  __shared__ unsigned int summary_max[kSummarySlots];
  __shared__ int summary_quantum[kSummarySlots];
  const bool snaps = snap_roundoff_exp(T{}) < 0;
  for (MP_INT64 target = blockIdx.x; target < ix.outer_count;
       target += gridDim.x) {
    if (snaps) {
      if (threadIdx.x < kSummarySlots)
        summary_reset(summary_max, summary_quantum, threadIdx.x);
      __syncthreads();
      for (MP_INT64 j = 0; j < ix.inner_count; ++j) {
        summary_publish(
            summary_max,
            summary_quantum,
            kSummaryA,
            summarize_part(
                a + row_offset(ix, kOperandA, target, j),
                ix.time_stride[kOperandA],
                g.a_len,
                threadIdx.x,
                blockDim.x));
        summary_publish(
            summary_max,
            summary_quantum,
            kSummaryB,
            summarize_part(
                b + row_offset(ix, kOperandB, target, j),
                ix.time_stride[kOperandB],
                g.b_len,
                threadIdx.x,
                blockDim.x));
        if (g.has_bias) {
          summary_publish(
              summary_max,
              summary_quantum,
              kSummaryBias,
              summarize_part(
                  bias + row_offset(ix, kOperandBias, target, j),
                  ix.time_stride[kOperandBias],
                  g.out_len,
                  threadIdx.x,
                  blockDim.x));
        }
      }
    }
    for (MP_INT64 j = 0; j < ix.inner_count; ++j) {
      load_real_row<T>(
          a_re,
          a_im,
          a + row_offset(ix, kOperandA, target, j),
          ix.time_stride[kOperandA],
          g.a_len,
          g.a_reversed,
          h,
          threadIdx.x,
          blockDim.x);
      load_real_row<T>(
          b_re,
          b_im,
          b + row_offset(ix, kOperandB, target, j),
          ix.time_stride[kOperandB],
          g.b_len,
          false,
          h,
          threadIdx.x,
          blockDim.x);
      __syncthreads();
      fft_forward<T>(a_re, a_im, fs, tw);
      fft_forward<T>(b_re, b_im, fs, tw);
      accumulate_product<T>(
          a_re,
          a_im,
          b_re,
          b_im,
          pairs,
          split_tw,
          acc,
          j == 0,
          fs.num_pairs,
          threadIdx.x,
          blockDim.x);
      __syncthreads();
    }
    unsplit_accumulated<T>(
        a_re,
        a_im,
        pairs,
        split_tw,
        acc,
        g.spectrum_scale,
        fs.num_pairs,
        threadIdx.x,
        blockDim.x);
    __syncthreads();
    fft_inverse<T>(a_re, a_im, fs, tw);
    float* out_row = out + row_offset(ix, kOperandOut, target, 0);
    int snap = kNoSnap;
    if (snaps) {
      const int terms = static_cast<int>(ix.inner_count * (g.has_bias ? 2 : 1));
      snap = snap_from_summaries<T>(
          summary_read(summary_max, summary_quantum, kSummaryA),
          summary_read(summary_max, summary_quantum, kSummaryB),
          g.has_bias,
          summary_read(summary_max, summary_quantum, kSummaryBias),
          g,
          terms);
    }
    for (MP_INT64 t = threadIdx.x; t < g.out_len; t += blockDim.x) {
      T v = gather_output<T>(a_re, a_im, g, t);
      if (g.has_bias) {
        for (MP_INT64 j = 0; j < ix.inner_count; ++j) {
          const float x =
              a[row_offset(ix, kOperandA, target, j) +
                t * ix.time_stride[kOperandA]];
          const float d = bias
              [row_offset(ix, kOperandBias, target, j) +
               t * ix.time_stride[kOperandBias]];
          v = r_add(v, r_prod(tag, x, d));
        }
      }
      if (snap != kNoSnap)
        v = r_snap(v, snap);
      out_row[t] = r_round(v);
    }
    __syncthreads();
  }
}

// Bias gradient: out = sum over inner rows of a * b (exact products), one
// rounding; per time step, or over time too when the bias is broadcast along
// it. Sequential per output in the CPU's order (rows, then time).
template <class T>
__global__ void product_sum(
    const float* a,
    const float* b,
    float* out,
    const RowIndex ix,
    MP_INT64 len,
    int sum_over_time) {
  const MP_INT64 per_target = sum_over_time ? 1 : len;
  const MP_INT64 id =
      static_cast<MP_INT64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= ix.outer_count * per_target)
    return;
  const MP_INT64 target = id / per_target, t0 = id % per_target;
  const MP_INT64 a_step = ix.time_stride[kOperandA],
                 b_step = ix.time_stride[kOperandB];
  const T tag{};
  T acc{};
  for (MP_INT64 j = 0; j < ix.inner_count; ++j) {
    const float* a_row = a + row_offset(ix, kOperandA, target, j);
    const float* b_row = b + row_offset(ix, kOperandB, target, j);
    if (sum_over_time) {
      for (MP_INT64 t = 0; t < len; ++t)
        acc = r_add(acc, r_prod(tag, a_row[t * a_step], b_row[t * b_step]));
    } else {
      acc = r_add(acc, r_prod(tag, a_row[t0 * a_step], b_row[t0 * b_step]));
    }
  }
  out[row_offset(ix, kOperandOut, target, 0) + t0] = r_round(acc);
}

} // namespace mlx_precise::gpu
