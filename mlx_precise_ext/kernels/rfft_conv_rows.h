// The steps of rfft_conv for one row held by one GPU thread group (CUDA block,
// Metal threadgroup): load, FFT stages, split + spectral product + unsplit,
// gather. Written once for CUDA and Metal against portability.h: every step
// takes the thread's index and the group's size, and the caller separates
// steps with MP_BARRIER(). The row lives in fast group memory, or in a slot of
// a device workspace when it does not fit; `Ptr` is that pointer type.
//
// Each step performs the same operations in the same order as the CPU engine
// (backend/cpu/rfft_conv_kernels.cpp); which thread performs an operation
// never changes its result. Where double exists (CUDA) the outputs are then
// certified (the section "certification" below), so that they equal the
// CPU's correctly rounded bits.
#pragma once

#include "certify.h"
#include "conv_params.h"
#include "rfft_conv_core.h"

namespace mlx_precise {

// Element offset of row `index` of a row-major batch of `ndim` dims.
MP_INLINE MP_INT64 batch_offset(
    int ndim,
    MP_CONSTANT const MP_INT64* shape,
    MP_CONSTANT const MP_INT64* stride,
    MP_INT64 index) {
  MP_INT64 offset = 0;
  for (int d = ndim - 1; d >= 0; --d) {
    offset += (index % shape[d]) * stride[d];
    index /= shape[d];
  }
  return offset;
}

// Element offset of row (outer, inner) of operand `op`.
MP_INLINE MP_INT64 row_offset(
    MP_CONSTANT const RowIndex& ix,
    int op,
    MP_INT64 outer,
    MP_INT64 inner) {
  return batch_offset(
             ix.outer_ndim, ix.outer_shape, ix.outer_stride[op], outer) +
      batch_offset(ix.inner_ndim, ix.inner_shape, ix.inner_stride[op], inner);
}

// A row of a ConvolveSum operand: element t at data[t * stride].
struct OperandRow {
  const MP_DEVICE float* data;
  MP_INT64 stride;
};

// Row `row` of ConvolveSum operand k (conv_params.h).
MP_INLINE OperandRow sum_operand_row(
    SumData data,
    MP_CONSTANT const RowIndex& ix,
    MP_CONSTANT const SumOperands& s,
    int k,
    MP_INT64 row) {
  return OperandRow{
      data.operand[k] +
          batch_offset(ix.outer_ndim, ix.outer_shape, s.outer_stride[k], row),
      s.time_stride[k]};
}

// The operands of conv term i and of bias term j.
MP_INLINE int sum_conv_operand(int i) {
  return 2 * i;
}
MP_INLINE int sum_bias_operand(MP_CONSTANT const SumOperands& s, int j) {
  return 2 * s.conv_terms + 2 * j;
}

template <class T, class Ptr>
MP_INLINE cpx<T> get_point(Ptr re, Ptr im, int i) {
  return cpx<T>{re[i], im[i]};
}

template <class T, class Ptr>
MP_INLINE void put_point(Ptr re, Ptr im, int i, cpx<T> v) {
  re[i] = v.re;
  im[i] = v.im;
}

// A thread's part of a row summary for the lattice snap (see the section
// "lattice snap" below): max |bits| and min lowest-bit exponent.
struct RowSummary {
  unsigned int max_bits;
  int quantum;
};

MP_INLINE void summary_fold(MP_THREAD RowSummary& s, float x) {
  const unsigned int bits = MP_FLOAT_BITS(x);
  const unsigned int abs_bits = bits & 0x7fffffffu;
  s.max_bits = abs_bits > s.max_bits ? abs_bits : s.max_bits;
  if (abs_bits != 0u && abs_bits < 0x7f800000u) {
    const int q = lowest_bit_exponent(bits);
    s.quantum = q < s.quantum ? q : s.quantum;
  }
}

// z[m] = x[2m] + i x[2m+1] for the real row x = row[0..len) (back to front
// when reversed), zero-padded to the complex length h. With kSummarize, also
// the thread's summary of the values it read (the threads together read
// every entry once, so their summaries combine to the row's).
template <class T, bool kSummarize = false, class Ptr>
MP_INLINE RowSummary load_real_row(
    Ptr re,
    Ptr im,
    const MP_DEVICE float* row,
    MP_INT64 stride,
    MP_INT64 len,
    bool reversed,
    int h,
    int tid,
    int nthreads) {
  const T tag{};
  RowSummary summary{0u, kNoSnap};
  for (int m = tid; m < h; m += nthreads) {
    const MP_INT64 i0 = 2 * static_cast<MP_INT64>(m), i1 = i0 + 1;
    T v0{}, v1{};
    if (i0 < len) {
      const float x = row[(reversed ? len - 1 - i0 : i0) * stride];
      if (kSummarize)
        summary_fold(summary, x);
      v0 = r_from_float(tag, x);
    }
    if (i1 < len) {
      const float x = row[(reversed ? len - 1 - i1 : i1) * stride];
      if (kSummarize)
        summary_fold(summary, x);
      v1 = r_from_float(tag, x);
    }
    re[m] = v0;
    im[m] = v1;
  }
  return summary;
}

// load_real_row for a row of pairs (pair_rfft_conv, never reversed):
// element i is hi[i] + lo[i] in T, as the CPU's load_pair_row reads it.
template <class T, class Ptr>
MP_INLINE void load_pair_row(
    Ptr re,
    Ptr im,
    const MP_DEVICE float* hi,
    MP_INT64 hi_stride,
    const MP_DEVICE float* lo,
    MP_INT64 lo_stride,
    MP_INT64 len,
    int h,
    int tid,
    int nthreads) {
  const T tag{};
  for (int m = tid; m < h; m += nthreads) {
    const MP_INT64 i0 = 2 * static_cast<MP_INT64>(m), i1 = i0 + 1;
    re[m] = i0 < len ? r_from_pair(tag, hi[i0 * hi_stride], lo[i0 * lo_stride])
                     : T{};
    im[m] = i1 < len ? r_from_pair(tag, hi[i1 * hi_stride], lo[i1 * lo_stride])
                     : T{};
  }
}

// Stage s of the decimation-in-frequency transform (fft_plan.h), or with
// kInverse its exact inverse (conjugate twiddles) times its radix; the
// inverse transform runs the stages in reverse order.
template <bool kInverse, class T, class Ptr>
MP_INLINE void fft_stage(
    Ptr re,
    Ptr im,
    MP_CONSTANT const FFTShape& fs,
    int s,
    const MP_DEVICE cpx<T>* tw,
    int tid,
    int nthreads) {
  const int h = fs.n_half;
  if (fs.stage_radix[s] == 2) {
    for (int b = tid; b < h / 2; b += nthreads) {
      cpx<T> x0 = get_point<T>(re, im, 2 * b),
             x1 = get_point<T>(re, im, 2 * b + 1);
      butterfly2(x0, x1);
      put_point(re, im, 2 * b, x0);
      put_point(re, im, 2 * b + 1, x1);
    }
    return;
  }
  const int lq = fs.stage_log2_quarter[s], q = 1 << lq,
            count = fs.twiddle_count;
  const MP_DEVICE cpx<T>* w = tw + fs.stage_tw_offset[s];
  for (int idx = tid; idx < h / 4; idx += nthreads) {
    const int j = idx & (q - 1);
    const int base = ((idx >> lq) << (lq + 2)) + j;
    cpx<T> x0 = get_point<T>(re, im, base), x1 = get_point<T>(re, im, base + q);
    cpx<T> x2 = get_point<T>(re, im, base + 2 * q),
           x3 = get_point<T>(re, im, base + 3 * q);
    if (lq == 0) {
      if (kInverse)
        dit4_inverse_unit(x0, x1, x2, x3);
      else
        dif4_unit(x0, x1, x2, x3);
    } else {
      const cpx<T> w1 = w[j], w2 = w[count + j], w3 = w[2 * count + j];
      if (kInverse)
        dit4_inverse(x0, x1, x2, x3, w1, w2, w3);
      else
        dif4(x0, x1, x2, x3, w1, w2, w3);
    }
    put_point(re, im, base, x0);
    put_point(re, im, base + q, x1);
    put_point(re, im, base + 2 * q, x2);
    put_point(re, im, base + 3 * q, x3);
  }
}

#if defined(MP_BARRIER)
// The whole transform of a row held by the group: every stage of
// fft_stage, each followed by a group barrier (the inverse: the stages in
// reverse order). GPU code only: C++ has no group barrier.
template <class T, class Ptr>
MP_INLINE void fft_rows_forward(
    Ptr re,
    Ptr im,
    MP_CONSTANT const FFTShape& fs,
    const MP_DEVICE cpx<T>* tw,
    int tid,
    int nthreads) {
  for (int s = 0; s < fs.num_stages; ++s) {
    fft_stage<false, T>(re, im, fs, s, tw, tid, nthreads);
    MP_BARRIER();
  }
}

template <class T, class Ptr>
MP_INLINE void fft_rows_inverse(
    Ptr re,
    Ptr im,
    MP_CONSTANT const FFTShape& fs,
    const MP_DEVICE cpx<T>* tw,
    int tid,
    int nthreads) {
  for (int s = fs.num_stages - 1; s >= 0; --s) {
    fft_stage<true, T>(re, im, fs, s, tw, tid, nthreads);
    MP_BARRIER();
  }
}
#endif // MP_BARRIER

// Forward split of the pair i: the packed spectrum values at p and q.
template <class T, class Ptr>
MP_INLINE void split_pair(
    Ptr re,
    Ptr im,
    IndexPair pr,
    int i,
    const MP_DEVICE cpx<T>* split_tw,
    MP_THREAD cpx<T>& xp,
    MP_THREAD cpx<T>& xq) {
  if (i == 0) {
    xp = rfft_split_dc(get_point<T>(re, im, 0));
    if (pr.q >= 0) {
      const cpx<T> z = get_point<T>(re, im, pr.q);
      xq = rfft_split(z, z, split_tw[pr.q]);
    }
    return;
  }
  const cpx<T> zp = get_point<T>(re, im, pr.p), zq = get_point<T>(re, im, pr.q);
  xp = rfft_split(zp, zq, split_tw[pr.p]);
  xq = rfft_split(zq, zp, split_tw[pr.q]);
}

// Inverse split of the pair i from the products yp, yq, written back in place.
template <class T, class Ptr>
MP_INLINE void unsplit_pair(
    Ptr re,
    Ptr im,
    IndexPair pr,
    int i,
    const MP_DEVICE cpx<T>* split_tw,
    cpx<T> yp,
    cpx<T> yq) {
  if (i == 0) {
    put_point(re, im, 0, rfft_unsplit_dc(yp));
    if (pr.q >= 0)
      put_point(re, im, pr.q, rfft_unsplit(yq, yq, split_tw[pr.q]));
    return;
  }
  put_point(re, im, pr.p, rfft_unsplit(yp, yq, split_tw[pr.p]));
  put_point(re, im, pr.q, rfft_unsplit(yq, yp, split_tw[pr.q]));
}

// The scaled spectrum of a kernel row, in pair order: entries 2i, 2i+1 are
// the values at positions p, q of pair i.
template <class T, class Ptr>
MP_INLINE void store_spectrum(
    Ptr re,
    Ptr im,
    const MP_DEVICE IndexPair* pairs,
    const MP_DEVICE cpx<T>* split_tw,
    float scale,
    MP_DEVICE cpx<T>* spectrum,
    int num_pairs,
    int tid,
    int nthreads) {
  for (int i = tid; i < num_pairs; i += nthreads) {
    const IndexPair pr = pairs[i];
    cpx<T> xp, xq;
    split_pair<T>(re, im, pr, i, split_tw, xp, xq);
    spectrum[2 * i] = c_scale(xp, scale);
    if (pr.q >= 0)
      spectrum[2 * i + 1] = c_scale(xq, scale);
  }
}

// Forward split, product with a stored kernel spectrum, inverse split.
template <class T, class Ptr>
MP_INLINE void multiply_by_spectrum(
    Ptr re,
    Ptr im,
    const MP_DEVICE IndexPair* pairs,
    const MP_DEVICE cpx<T>* split_tw,
    const MP_DEVICE cpx<T>* spectrum,
    int num_pairs,
    int tid,
    int nthreads) {
  for (int i = tid; i < num_pairs; i += nthreads) {
    const IndexPair pr = pairs[i];
    cpx<T> xp, xq{};
    split_pair<T>(re, im, pr, i, split_tw, xp, xq);
    const cpx<T> yp = packed_mul(xp, spectrum[2 * i], i == 0);
    const cpx<T> yq =
        pr.q >= 0 ? packed_mul(xq, spectrum[2 * i + 1], false) : xq;
    unsplit_pair<T>(re, im, pr, i, split_tw, yp, yq);
  }
}

// acc += (spectrum of a) * (spectrum of b), in pair order; `first` starts
// from zero, as the CPU's accumulator does.
template <class T, class Ptr>
MP_INLINE void accumulate_product(
    Ptr a_re,
    Ptr a_im,
    Ptr b_re,
    Ptr b_im,
    const MP_DEVICE IndexPair* pairs,
    const MP_DEVICE cpx<T>* split_tw,
    MP_DEVICE cpx<T>* acc,
    bool first,
    int num_pairs,
    int tid,
    int nthreads) {
  const cpx<T> zero{T{}, T{}};
  for (int i = tid; i < num_pairs; i += nthreads) {
    const IndexPair pr = pairs[i];
    cpx<T> ap, aq{}, bp, bq{};
    split_pair<T>(a_re, a_im, pr, i, split_tw, ap, aq);
    split_pair<T>(b_re, b_im, pr, i, split_tw, bp, bq);
    acc[2 * i] = c_add(first ? zero : acc[2 * i], packed_mul(ap, bp, i == 0));
    if (pr.q >= 0)
      acc[2 * i + 1] =
          c_add(first ? zero : acc[2 * i + 1], packed_mul(aq, bq, false));
  }
}

// Scales the accumulated spectrum and inverse-splits it into (re, im).
template <class T, class Ptr>
MP_INLINE void unsplit_accumulated(
    Ptr re,
    Ptr im,
    const MP_DEVICE IndexPair* pairs,
    const MP_DEVICE cpx<T>* split_tw,
    const MP_DEVICE cpx<T>* acc,
    float scale,
    int num_pairs,
    int tid,
    int nthreads) {
  for (int i = tid; i < num_pairs; i += nthreads) {
    const IndexPair pr = pairs[i];
    const cpx<T> yp = c_scale(acc[2 * i], scale);
    const cpx<T> yq = pr.q >= 0 ? c_scale(acc[2 * i + 1], scale) : yp;
    unsplit_pair<T>(re, im, pr, i, split_tw, yp, yq);
  }
}

template <class T, class Ptr>
MP_INLINE T time_sample(Ptr re, Ptr im, MP_INT64 i) {
  return (i & 1) ? im[i >> 1] : re[i >> 1];
}

// The entries of the cyclic convolution that form output t: the fold, the
// reversal and the support rule of gather_index (rfft_conv_core.h).
MP_INLINE GatherIndex
output_entries(MP_CONSTANT const ConvShape& g, MP_INT64 t) {
  return gather_index(
      t,
      g.fft_size,
      g.period,
      g.fold != 0,
      g.out_reversed != 0,
      g.out_origin,
      g.a_len + g.b_len - 1);
}

// Output entry t of the cyclic convolution held in (re, im).
template <class T, class Ptr>
MP_INLINE T
gather_output(Ptr re, Ptr im, MP_CONSTANT const ConvShape& g, MP_INT64 t) {
  const GatherIndex idx = output_entries(g, t);
  T v{};
  if (idx.first >= 0)
    v = time_sample<T>(re, im, idx.first);
  if (idx.second >= 0)
    v = r_add(v, time_sample<T>(re, im, idx.second));
  return v;
}

// ------------------------------------------------------------ lattice snap
// ---- The snap decision of rfft_conv_core.h from row summaries: each thread
// folds its strided part of a row into (max |bits|, min lowest-bit exponent),
// the group combines them with atomics on group memory, and every thread then
// evaluates the same integer decision. The CPU stops its quantum scan early
// once a row cannot be certified; a full minimum reaches the same decision.
MP_INLINE RowSummary summarize_part(
    const MP_DEVICE float* row,
    MP_INT64 stride,
    MP_INT64 len,
    int tid,
    int nthreads) {
  RowSummary s{0u, kNoSnap};
  for (MP_INT64 i = tid; i < len; i += nthreads)
    summary_fold(s, row[i * stride]);
  return s;
}

template <class UPtr, class IPtr>
MP_INLINE void summary_reset(UPtr max_bits, IPtr quantum, int slot) {
  MP_GROUP_STORE(max_bits + slot, 0u);
  MP_GROUP_STORE(quantum + slot, kNoSnap);
}

template <class UPtr, class IPtr>
MP_INLINE void
summary_publish(UPtr max_bits, IPtr quantum, int slot, RowSummary s) {
  MP_GROUP_MAX(max_bits + slot, s.max_bits);
  MP_GROUP_MIN(quantum + slot, s.quantum);
}

template <class UPtr, class IPtr>
MP_INLINE RowSummary summary_read(UPtr max_bits, IPtr quantum, int slot) {
  return RowSummary{
      MP_GROUP_LOAD(max_bits + slot), MP_GROUP_LOAD(quantum + slot)};
}

// Slots of the three summarised operands.
enum : int {
  kSummaryA = 0,
  kSummaryB = 1,
  kSummaryBias = 2,
  kSummarySlots = 3
};

template <class T>
MP_INLINE int snap_from_summaries(
    RowSummary a,
    RowSummary b,
    bool has_bias,
    RowSummary d,
    MP_CONSTANT const ConvShape& g,
    int terms) {
  bool exact_zero = false;
  const int required = snap_required(
      row_magnitude(a.max_bits),
      row_magnitude(b.max_bits),
      has_bias,
      row_magnitude(d.max_bits),
      g.a_len,
      g.b_len,
      g.fft_size,
      snap_roundoff_exp(T{}),
      terms,
      &exact_zero);
  if (exact_zero)
    return 0;
  if (required == kNoSnap)
    return kNoSnap;
  return snap_decision(required, a.quantum, b.quantum, has_bias, d.quantum);
}

#if MP_HAS_DOUBLE
// ----------------------------------------------------------- certification
// ---- The steps of kernels/certify.h for the double engine (extended, and
// dd, which runs it too, as on the CPU). Every output comes out correctly
// rounded, so which thread computes it, and in which order, never matters.

// The working precisions whose outputs are certified.
template <class T>
struct Certified {
  static constexpr bool value = false;
};
template <>
struct Certified<double> {
  static constexpr bool value = true;
};

// The thread's part of the sum of squares of row[0..len) (each square exact
// in double); the group's parts add up to ||row||_2^2.
MP_INLINE double square_sum_part(
    const MP_DEVICE float* row,
    MP_INT64 stride,
    MP_INT64 len,
    int tid,
    int nthreads) {
  double sum = 0.0;
  for (MP_INT64 i = tid; i < len; i += nthreads) {
    const double x = static_cast<double>(row[i * stride]);
    sum += x * x;
  }
  return sum;
}

// Element m of a row as the transform loaded it (back to front when
// reversed).
struct DeviceRow {
  const MP_DEVICE float* data;
  MP_INT64 stride;
  MP_INT64 len;
  bool reversed;
  MP_INLINE float operator()(MP_INT64 m) const {
    return data[(reversed ? len - 1 - m : m) * stride];
  }
};

// Step 2 for one output: value is the transform's value plus the bias
// products (each exact in double), magnitude |transform| + sum |products|.
// Writes the float to *out; false when the output must be recomputed. A row
// with a NaN/Inf input keeps float(value).
MP_INLINE bool certify_output(
    MP_THREAD const RowCertificate& c,
    double value,
    double magnitude,
    MP_DEVICE float* out) {
  float rounded = static_cast<float>(value);
  const bool done = !c.finite ||
      certified_round(
          zero_as_positive(value), c.conv_err + c.rel * magnitude, &rounded);
  *out = rounded;
  return done;
}

// The products of output t of conv(a, b): the cyclic convolution entries
// that gather_output reads, as ranges for correctly_rounded_sum (or a GPU's
// parallel form of it).
template <class Range>
MP_INLINE void for_each_term_range(
    OperandRow a,
    OperandRow b,
    MP_CONSTANT const ConvShape& g,
    MP_INT64 t,
    Range range) {
  const GatherIndex idx = output_entries(g, t);
  const DeviceRow a_loaded{a.data, a.stride, g.a_len, g.a_reversed != 0};
  const DeviceRow b_row{b.data, b.stride, g.b_len, false};
  for (int e = 0; e < 2; ++e) {
    const MP_INT64 i = e == 0 ? idx.first : idx.second;
    if (i >= 0)
      for_each_cyclic_range(
          g.a_len,
          g.b_len,
          g.fft_size,
          i,
          [&](MP_INT64 m0, MP_INT64 j0, MP_INT64 count) {
            range(a_loaded, b_row, m0, j0, count);
          });
  }
}

// The bias product c[t] * d[t] as a range.
template <class Range>
MP_INLINE void bias_range(OperandRow c, OperandRow d, MP_INT64 t, Range range) {
  range(
      DeviceRow{c.data, c.stride, t + 1, false},
      DeviceRow{d.data, d.stride, t + 1, false},
      t,
      t,
      1);
}

// Step 3: the products of output t of the rows (outer, j), j in [j_begin,
// j_end), summed over them, as ranges for correctly_rounded_sum (or a GPU's
// parallel form of it): the cyclic convolution entries that gather_output
// reads, then the bias products a[t] bias[t].
template <class Range>
MP_INLINE void for_each_output_range(
    const MP_DEVICE float* a,
    const MP_DEVICE float* b,
    const MP_DEVICE float* bias,
    MP_CONSTANT const RowIndex& ix,
    MP_CONSTANT const ConvShape& g,
    MP_INT64 outer,
    MP_INT64 j_begin,
    MP_INT64 j_end,
    MP_INT64 t,
    Range range) {
  const MP_INT64 a_step = ix.time_stride[kOperandA],
                 b_step = ix.time_stride[kOperandB],
                 d_step = ix.time_stride[kOperandBias];
  for (MP_INT64 j = j_begin; j < j_end; ++j) {
    const MP_DEVICE float* a_row = a + row_offset(ix, kOperandA, outer, j);
    for_each_term_range(
        OperandRow{a_row, a_step},
        OperandRow{b + row_offset(ix, kOperandB, outer, j), b_step},
        g,
        t,
        range);
    if (g.has_bias)
      bias_range(
          OperandRow{a_row, a_step},
          OperandRow{bias + row_offset(ix, kOperandBias, outer, j), d_step},
          t,
          range);
  }
}

// Step 3 for output t of row `row` of a ConvolveSum: the products of every
// conv term, then of every bias term.
template <class Range>
MP_INLINE void for_each_sum_range(
    SumData data,
    MP_CONSTANT const RowIndex& ix,
    MP_CONSTANT const SumOperands& s,
    MP_CONSTANT const ConvShape& g,
    MP_INT64 row,
    MP_INT64 t,
    Range range) {
  for (int i = 0; i < s.conv_terms; ++i) {
    const int k = sum_conv_operand(i);
    for_each_term_range(
        sum_operand_row(data, ix, s, k, row),
        sum_operand_row(data, ix, s, k + 1, row),
        g,
        t,
        range);
  }
  for (int j = 0; j < s.bias_terms; ++j) {
    const int k = sum_bias_operand(s, j);
    bias_range(
        sum_operand_row(data, ix, s, k, row),
        sum_operand_row(data, ix, s, k + 1, row),
        t,
        range);
  }
}

// Output t of the rows (outer, j), correctly rounded from its products.
MP_INLINE float recompute_output(
    const MP_DEVICE float* a,
    const MP_DEVICE float* b,
    const MP_DEVICE float* bias,
    MP_CONSTANT const RowIndex& ix,
    MP_CONSTANT const ConvShape& g,
    MP_INT64 outer,
    MP_INT64 j_begin,
    MP_INT64 j_end,
    MP_INT64 t) {
  return correctly_rounded_sum([&](auto range) {
    for_each_output_range(a, b, bias, ix, g, outer, j_begin, j_end, t, range);
  });
}

// Bias gradient: sum over j < rows of a_j[t] b_j[t], t in [t_begin, t_end),
// correctly rounded. a is read back to front so that the products are ranges
// a(m0 - k) b(j0 + k) with m0 - k = t_begin + k.
MP_INLINE float recompute_product_sum(
    const MP_DEVICE float* a,
    const MP_DEVICE float* b,
    MP_CONSTANT const RowIndex& ix,
    MP_INT64 outer,
    MP_INT64 len,
    MP_INT64 t_begin,
    MP_INT64 t_end) {
  return correctly_rounded_sum([&](auto range) {
    for (MP_INT64 j = 0; j < ix.inner_count; ++j)
      range(
          DeviceRow{
              a + row_offset(ix, kOperandA, outer, j),
              ix.time_stride[kOperandA],
              len,
              true},
          DeviceRow{
              b + row_offset(ix, kOperandB, outer, j),
              ix.time_stride[kOperandB],
              len,
              false},
          len - 1 - t_begin,
          t_begin,
          t_end - t_begin);
  });
}
#endif // MP_HAS_DOUBLE

} // namespace mlx_precise
