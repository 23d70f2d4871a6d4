// Metal entry points of rfft_conv, compiled at run time by MLX's Metal device
// (rfft_conv.cpp builds the library from this file and the shared kernel
// headers, embedded at build time). The same block-level steps as the CUDA
// kernels (rfft_conv_rows.h). Metal has no float64, so "extended" and "dd"
// run float-pair kernels, certified as the CPU's and CUDA's outputs are
// (kernels/certify_pair.h): certified_spectra / certified_conv_rows,
// certified_reduce_rows and certified_sum_rows mark the outputs that do not
// certify, recompute_open_rows / recompute_open_sum sum those exactly, and
// the bias gradient is an exact sum. kGroup: rows in threadgroup memory;
// otherwise in the threadgroup's slot of a device workspace.
#include "kernels/certify_pair.h"

namespace mlx_precise {

template <class T, class Ptr>
void spectra_body(Ptr re, Ptr im, const device float* b, constant const RowIndex& ix,
                  constant const ConvShape& g, constant const FFTShape& fs,
                  const device cpx<T>* tw, const device cpx<T>* split_tw,
                  const device IndexPair* pairs, device cpx<T>* spectra, uint tid, uint nt,
                  uint group, uint groups) {
  const int h = fs.n_half;
  for (long kk = group; kk < ix.outer_count; kk += groups) {
    load_real_row<T>(re, im, b + row_offset(ix, kOperandB, kk, 0), ix.time_stride[kOperandB],
                     g.b_len, false, h, tid, nt);
    MP_BARRIER();
    fft_rows<false, T>(re, im, fs, tw, tid, nt);
    store_spectrum<T>(re, im, pairs, split_tw, g.spectrum_scale,
                      spectra + kk * 2 * fs.num_pairs, fs.num_pairs, tid, nt);
    MP_BARRIER();
  }
}

// float32 rows (extended and dd: certified_conv_body).
template <class T, class Ptr>
void conv_body(Ptr re, Ptr im, const device float* a, const device float* b,
               const device float* bias, device float* out, constant const RowIndex& ix,
               constant const ConvShape& g, constant const FFTShape& fs,
               const device cpx<T>* tw, const device cpx<T>* split_tw,
               const device IndexPair* pairs, const device cpx<T>* spectra, uint tid, uint nt,
               uint group, uint groups) {
  const int h = fs.n_half;
  const long splits = g.rows_per_group_split;
  for (long item = group; item < ix.outer_count * splits; item += groups) {
    const long kk = item / splits;
    const device cpx<T>* spectrum = spectra + kk * 2 * fs.num_pairs;
    for (long j = item % splits; j < ix.inner_count; j += splits) {
      const device float* a_row = a + row_offset(ix, kOperandA, kk, j);
      const long a_step = ix.time_stride[kOperandA];
      const device float* bias_row = bias + (g.has_bias ? row_offset(ix, kOperandBias, kk, j) : 0);
      const long bias_step = ix.time_stride[kOperandBias];
      load_real_row<T>(re, im, a_row, a_step, g.a_len, g.a_reversed, h, tid, nt);
      MP_BARRIER();
      fft_rows<false, T>(re, im, fs, tw, tid, nt);
      multiply_rows_by_spectrum<T>(re, im, h, 1, pairs, split_tw, spectrum, fs.num_pairs, tid, nt);
      MP_BARRIER();
      fft_rows<true, T>(re, im, fs, tw, tid, nt);
      device float* out_row = out + row_offset(ix, kOperandOut, kk, j);
      for (long t = tid; t < g.out_len; t += nt) {
        const T v = gather_output<T>(re, im, g, t);
        out_row[t] = g.has_bias
                         ? finish_output(v, true, a_row[t * a_step], bias_row[t * bias_step])
                         : finish_output(v, false, 0.0f, 0.0f);
      }
      MP_BARRIER();
    }
  }
}

// ---- Certified float pairs (extended, dd: kernels/certify_pair.h): each row
// scaled by a power of two, transformed in float pairs, each output certified
// against the float-pair bound or marked in open_bits for recompute_open_rows.

// The scale of row[0..len) over the group (certify_pair.h: the max |bits|,
// then the sum of squares of the scaled row by SIMD groups and their sums in
// order). Every thread must call it and gets the same value.
inline PairRowScale group_row_scale(const device float* row, long stride, long len,
                                    threadgroup MP_GROUP_UINT* max_bits,
                                    threadgroup float* simd_sums, uint tid, uint nt) {
  if (tid == 0) MP_GROUP_STORE(max_bits, 0u);
  MP_BARRIER();
  MP_GROUP_MAX(max_bits, max_abs_bits_part(row, stride, len, int(tid), int(nt)));
  MP_BARRIER();
  PairRowScale s;
  s.max_abs_bits = MP_GROUP_LOAD(max_bits);
  s.exponent = pair_scale_exponent(s.max_abs_bits);
  const float part = metal::simd_sum(
      scaled_square_sum_part(row, stride, len, s.exponent, int(tid), int(nt)));
  if (tid % 32 == 0) simd_sums[tid / 32] = part;
  MP_BARRIER();
  float sum = 0.0f;
  for (uint w = 0; w < (nt + 31) / 32; ++w) sum = MP_ADDF(sum, simd_sums[w]);
  s.norm = pair_norm_bound(sum, pair_norm_roundings(len, int(nt)));
  MP_BARRIER(); // max_bits and simd_sums are free again
  return s;
}

// Spectra of the scaled kernel rows, and each row's scale.
template <class T, class Ptr>
void certified_spectra_body(Ptr re, Ptr im, const device float* b, constant const RowIndex& ix,
                            constant const ConvShape& g, constant const FFTShape& fs,
                            const device cpx<T>* tw, const device cpx<T>* split_tw,
                            const device IndexPair* pairs, device cpx<T>* spectra,
                            device PairRowScale* scales, threadgroup MP_GROUP_UINT* max_bits,
                            threadgroup float* simd_sums, uint tid, uint nt, uint group,
                            uint groups) {
  const int h = fs.n_half;
  const long stride = ix.time_stride[kOperandB];
  for (long kk = group; kk < ix.outer_count; kk += groups) {
    const device float* b_row = b + row_offset(ix, kOperandB, kk, 0);
    const PairRowScale s = group_row_scale(b_row, stride, g.b_len, max_bits, simd_sums, tid, nt);
    if (tid == 0) scales[kk] = s;
    load_scaled_row<T>(re, im, b_row, stride, g.b_len, false, s.exponent, h, int(tid), int(nt));
    MP_BARRIER();
    fft_rows<false, T>(re, im, fs, tw, tid, nt);
    store_spectrum<T>(re, im, pairs, split_tw, g.spectrum_scale,
                      spectra + kk * 2 * fs.num_pairs, fs.num_pairs, tid, nt);
    MP_BARRIER();
  }
}

// The output rows of conv_body, certified: output t of row r = kk *
// inner_count + j that does not certify sets bit r * out_len + t.
template <class T, class Ptr>
void certified_conv_body(Ptr re, Ptr im, const device float* a, const device float* bias,
                         device float* out, constant const RowIndex& ix,
                         constant const ConvShape& g, constant const FFTShape& fs,
                         const device cpx<T>* tw, const device cpx<T>* split_tw,
                         const device IndexPair* pairs, const device cpx<T>* spectra,
                         const device PairRowScale* scales,
                         constant const PairBoundConstants& bound,
                         device metal::atomic_uint* open_bits,
                         threadgroup MP_GROUP_UINT* max_bits, threadgroup float* simd_sums,
                         uint tid, uint nt, uint group, uint groups) {
  const int h = fs.n_half;
  const long splits = g.rows_per_group_split;
  const long a_step = ix.time_stride[kOperandA], bias_step = ix.time_stride[kOperandBias];
  for (long item = group; item < ix.outer_count * splits; item += groups) {
    const long kk = item / splits;
    const device cpx<T>* spectrum = spectra + kk * 2 * fs.num_pairs;
    const PairRowScale b_scale = scales[kk];
    for (long j = item % splits; j < ix.inner_count; j += splits) {
      const device float* a_row = a + row_offset(ix, kOperandA, kk, j);
      const device float* bias_row = bias + (g.has_bias ? row_offset(ix, kOperandBias, kk, j) : 0);
      const PairCertificate cert = pair_certificate(
          bound.kappa, bound.absolute,
          group_row_scale(a_row, a_step, g.a_len, max_bits, simd_sums, tid, nt), b_scale,
          g.fold != 0, g.has_bias != 0);
      load_scaled_row<T>(re, im, a_row, a_step, g.a_len, g.a_reversed != 0, cert.a_exponent, h,
                         int(tid), int(nt));
      MP_BARRIER();
      fft_rows<false, T>(re, im, fs, tw, tid, nt);
      multiply_rows_by_spectrum<T>(re, im, h, 1, pairs, split_tw, spectrum, fs.num_pairs, tid, nt);
      MP_BARRIER();
      fft_rows<true, T>(re, im, fs, tw, tid, nt);
      device float* out_row = out + row_offset(ix, kOperandOut, kk, j);
      const long first = (kk * ix.inner_count + j) * g.out_len;
      for (long t = tid; t < g.out_len; t += nt) {
        float y;
        const bool done = certify_pair_output(
            cert, gather_output<T>(re, im, g, t), g.has_bias != 0,
            g.has_bias ? a_row[t * a_step] : 0.0f, g.has_bias ? bias_row[t * bias_step] : 0.0f,
            &y);
        out_row[t] = y;
        if (!done) {
          const long e = first + t;
          metal::atomic_fetch_or_explicit(open_bits + (e >> 5), 1u << (e & 31),
                                          metal::memory_order_relaxed);
        }
      }
      MP_BARRIER();
    }
  }
}

// One term of a reduced row (see the CUDA twin): acc (+)= the product of the
// spectra of the rows a and b, `first` starting from zero.
template <class T, class Ptr>
void accumulate_term(Ptr a_re, Ptr a_im, Ptr b_re, Ptr b_im, OperandRow a, OperandRow b,
                     constant const ConvShape& g, constant const FFTShape& fs,
                     const device cpx<T>* tw, const device cpx<T>* split_tw,
                     const device IndexPair* pairs, device cpx<T>* acc, bool first, uint tid,
                     uint nt) {
  const int h = fs.n_half;
  load_real_row<T>(a_re, a_im, a.data, a.stride, g.a_len, g.a_reversed, h, tid, nt);
  load_real_row<T>(b_re, b_im, b.data, b.stride, g.b_len, false, h, tid, nt);
  MP_BARRIER();
  fft_rows<false, T>(a_re, a_im, fs, tw, tid, nt);
  fft_rows<false, T>(b_re, b_im, fs, tw, tid, nt);
  accumulate_product<T>(a_re, a_im, b_re, b_im, pairs, split_tw, acc, first, fs.num_pairs, tid,
                        nt);
  MP_BARRIER();
}

// The accumulated spectrum, scaled, back in the time domain in (re, im).
template <class T, class Ptr>
void invert_accumulated(Ptr re, Ptr im, constant const ConvShape& g, constant const FFTShape& fs,
                        const device cpx<T>* tw, const device cpx<T>* split_tw,
                        const device IndexPair* pairs, const device cpx<T>* acc, uint tid,
                        uint nt) {
  unsplit_accumulated<T>(re, im, pairs, split_tw, acc, g.spectrum_scale, fs.num_pairs, tid, nt);
  MP_BARRIER();
  fft_rows<true, T>(re, im, fs, tw, tid, nt);
}

template <class T, class Ptr>
void reduce_body(Ptr a_re, Ptr a_im, Ptr b_re, Ptr b_im, const device float* a,
                 const device float* b, const device float* bias, device float* out,
                 constant const RowIndex& ix, constant const ConvShape& g,
                 constant const FFTShape& fs, const device cpx<T>* tw,
                 const device cpx<T>* split_tw, const device IndexPair* pairs,
                 device cpx<T>* acc, uint tid, uint nt, uint group, uint groups) {
  const T tag{};
  const long a_step = ix.time_stride[kOperandA], b_step = ix.time_stride[kOperandB],
             bias_step = ix.time_stride[kOperandBias];
  for (long target = group; target < ix.outer_count; target += groups) {
    for (long j = 0; j < ix.inner_count; ++j) {
      accumulate_term<T>(a_re, a_im, b_re, b_im,
                         OperandRow{a + row_offset(ix, kOperandA, target, j), a_step},
                         OperandRow{b + row_offset(ix, kOperandB, target, j), b_step}, g, fs, tw,
                         split_tw, pairs, acc, j == 0, tid, nt);
    }
    invert_accumulated<T>(a_re, a_im, g, fs, tw, split_tw, pairs, acc, tid, nt);
    device float* out_row = out + row_offset(ix, kOperandOut, target, 0);
    for (long t = tid; t < g.out_len; t += nt) {
      T v = gather_output<T>(a_re, a_im, g, t);
      if (g.has_bias) {
        for (long j = 0; j < ix.inner_count; ++j) {
          const float x = a[row_offset(ix, kOperandA, target, j) + t * a_step];
          const float d = bias[row_offset(ix, kOperandBias, target, j) + t * bias_step];
          v = r_add(v, r_prod(tag, x, d));
        }
      }
      out_row[t] = r_round(v);
    }
    MP_BARRIER();
  }
}

// ConvolveSum rows (the jvp, conv_params.h), as reduce_body sums a target's
// rows.
template <class T, class Ptr>
void sum_body(Ptr a_re, Ptr a_im, Ptr b_re, Ptr b_im, SumData data, device float* out,
              constant const RowIndex& ix, constant const SumOperands& s,
              constant const ConvShape& g, constant const FFTShape& fs, const device cpx<T>* tw,
              const device cpx<T>* split_tw, const device IndexPair* pairs, device cpx<T>* acc,
              uint tid, uint nt, uint group, uint groups) {
  const T tag{};
  for (long row = group; row < ix.outer_count; row += groups) {
    for (int i = 0; i < s.conv_terms; ++i) {
      const int k = sum_conv_operand(i);
      accumulate_term<T>(a_re, a_im, b_re, b_im, sum_operand_row(data, ix, s, k, row),
                         sum_operand_row(data, ix, s, k + 1, row), g, fs, tw, split_tw, pairs,
                         acc, i == 0, tid, nt);
    }
    invert_accumulated<T>(a_re, a_im, g, fs, tw, split_tw, pairs, acc, tid, nt);
    device float* out_row = out + row_offset(ix, kOperandOut, row, 0);
    OperandRow bias_rows[2 * kMaxSumTerms];
    for (int j = 0; j < 2 * s.bias_terms; ++j)
      bias_rows[j] = sum_operand_row(data, ix, s, sum_bias_operand(s, 0) + j, row);
    for (long t = tid; t < g.out_len; t += nt) {
      T v = gather_output<T>(a_re, a_im, g, t);
      for (int j = 0; j < s.bias_terms; ++j) {
        const OperandRow c = bias_rows[2 * j], d = bias_rows[2 * j + 1];
        v = r_add(v, r_prod(tag, c.data[t * c.stride], d.data[t * d.stride]));
      }
      out_row[t] = r_round(v);
    }
    MP_BARRIER();
  }
}

// Buffer indices shared with rfft_conv.cpp.
#define MP_ROW_KERNEL_ARGS                                                              \
  const device float* a [[buffer(0)]], const device float* b [[buffer(1)]],            \
      const device float* bias [[buffer(2)]], device float* out [[buffer(3)]],         \
      constant const RowIndex& ix [[buffer(4)]], constant const ConvShape& g [[buffer(5)]], \
      constant const FFTShape& fs [[buffer(6)]], const device cpx<T>* tw [[buffer(7)]],  \
      const device cpx<T>* split_tw [[buffer(8)]],                                       \
      const device IndexPair* pairs [[buffer(9)]], device cpx<T>* spectra [[buffer(10)]], \
      device T* workspace [[buffer(11)]], threadgroup T* group_rows [[threadgroup(0)]],  \
      uint tid [[thread_position_in_threadgroup]], uint nt [[threads_per_threadgroup]],  \
      uint group [[threadgroup_position_in_grid]], uint groups [[threadgroups_per_grid]]

// Rows in threadgroup memory (kGroup) or in this threadgroup's workspace slot.
template <class T, bool kGroup>
[[kernel]] void kernel_spectra(MP_ROW_KERNEL_ARGS) {
  const int h = fs.n_half;
  if (kGroup) {
    spectra_body<T>(group_rows, group_rows + h, b, ix, g, fs, tw, split_tw, pairs, spectra, tid,
                    nt, group, groups);
  } else {
    device T* rows = workspace + long(group) * 2 * h;
    spectra_body<T>(rows, rows + h, b, ix, g, fs, tw, split_tw, pairs, spectra, tid, nt, group,
                    groups);
  }
}

template <class T, bool kGroup>
[[kernel]] void conv_rows(MP_ROW_KERNEL_ARGS) {
  const int h = fs.n_half;
  if (kGroup) {
    conv_body<T>(group_rows, group_rows + h, a, b, bias, out, ix, g, fs, tw, split_tw, pairs,
                 spectra, tid, nt, group, groups);
  } else {
    device T* rows = workspace + long(group) * 2 * h;
    conv_body<T>(rows, rows + h, a, b, bias, out, ix, g, fs, tw, split_tw, pairs, spectra, tid,
                 nt, group, groups);
  }
}

// The certified kernels' buffers beyond the row kernels' (rfft_conv.cpp).
#define MP_CERTIFIED_ARGS                                                                 \
  MP_ROW_KERNEL_ARGS, device PairRowScale* scales [[buffer(23)]],                         \
      device metal::atomic_uint* open_bits [[buffer(24)]],                                \
      constant const PairBoundConstants& bound [[buffer(25)]]

template <class T, bool kGroup>
[[kernel]] void certified_spectra(MP_CERTIFIED_ARGS) {
  const int h = fs.n_half;
  threadgroup MP_GROUP_UINT max_bits[1];
  threadgroup float simd_sums[32];
  if (kGroup) {
    certified_spectra_body<T>(group_rows, group_rows + h, b, ix, g, fs, tw, split_tw, pairs,
                              spectra, scales, max_bits, simd_sums, tid, nt, group, groups);
  } else {
    device T* rows = workspace + long(group) * 2 * h;
    certified_spectra_body<T>(rows, rows + h, b, ix, g, fs, tw, split_tw, pairs, spectra, scales,
                              max_bits, simd_sums, tid, nt, group, groups);
  }
}

template <class T, bool kGroup>
[[kernel]] void certified_conv_rows(MP_CERTIFIED_ARGS) {
  const int h = fs.n_half;
  threadgroup MP_GROUP_UINT max_bits[1];
  threadgroup float simd_sums[32];
  if (kGroup) {
    certified_conv_body<T>(group_rows, group_rows + h, a, bias, out, ix, g, fs, tw, split_tw,
                           pairs, spectra, scales, bound, open_bits, max_bits, simd_sums, tid,
                           nt, group, groups);
  } else {
    device T* rows = workspace + long(group) * 2 * h;
    certified_conv_body<T>(rows, rows + h, a, bias, out, ix, g, fs, tw, split_tw, pairs, spectra,
                           scales, bound, open_bits, max_bits, simd_sums, tid, nt, group, groups);
  }
}

// Clears the open bits before certified_conv_rows sets them.
[[kernel]] void clear_open_bits(device uint* open_bits [[buffer(24)]],
                                constant const long& words [[buffer(12)]],
                                uint id [[thread_position_in_grid]]) {
  if (long(id) < words) open_bits[id] = 0u;
}

// Words of open bits a threadgroup lists at a time (32 outputs each).
enum : int { kRecomputeWords = 64 };


// `spectra` holds one accumulator slot per threadgroup.
template <class T, bool kGroup>
[[kernel]] void reduce_rows(MP_ROW_KERNEL_ARGS) {
  const int h = fs.n_half;
  device cpx<T>* acc = spectra + long(group) * 2 * fs.num_pairs;
  if (kGroup) {
    reduce_body<T>(group_rows, group_rows + h, group_rows + 2 * h, group_rows + 3 * h, a, b, bias,
                   out, ix, g, fs, tw, split_tw, pairs, acc, tid, nt, group, groups);
  } else {
    device T* rows = workspace + long(group) * 4 * h;
    reduce_body<T>(rows, rows + h, rows + 2 * h, rows + 3 * h, a, b, bias, out, ix, g, fs, tw,
                   split_tw, pairs, acc, tid, nt, group, groups);
  }
}

// ConvolveSum's operands (buffers 15 + k) and their strides (buffer 14);
// `spectra` holds one accumulator slot per threadgroup.
#define MP_SUM_KERNEL_ARGS                                                                 \
  device float* out [[buffer(3)]], constant const RowIndex& ix [[buffer(4)]],             \
      constant const ConvShape& g [[buffer(5)]], constant const FFTShape& fs [[buffer(6)]], \
      const device cpx<T>* tw [[buffer(7)]], const device cpx<T>* split_tw [[buffer(8)]],   \
      const device IndexPair* pairs [[buffer(9)]], device cpx<T>* spectra [[buffer(10)]],  \
      device T* workspace [[buffer(11)]], constant const SumOperands& s [[buffer(14)]],    \
      const device float* x0 [[buffer(15)]], const device float* x1 [[buffer(16)]],        \
      const device float* x2 [[buffer(17)]], const device float* x3 [[buffer(18)]],        \
      const device float* x4 [[buffer(19)]], const device float* x5 [[buffer(20)]],        \
      const device float* x6 [[buffer(21)]], const device float* x7 [[buffer(22)]],        \
      threadgroup T* group_rows [[threadgroup(0)]],                                        \
      uint tid [[thread_position_in_threadgroup]], uint nt [[threads_per_threadgroup]],    \
      uint group [[threadgroup_position_in_grid]], uint groups [[threadgroups_per_grid]]

template <class T, bool kGroup>
[[kernel]] void sum_rows(MP_SUM_KERNEL_ARGS) {
  const int h = fs.n_half;
  device cpx<T>* acc = spectra + long(group) * 2 * fs.num_pairs;
  const SumData data{{x0, x1, x2, x3, x4, x5, x6, x7}};
  if (kGroup) {
    sum_body<T>(group_rows, group_rows + h, group_rows + 2 * h, group_rows + 3 * h, data, out, ix,
                s, g, fs, tw, split_tw, pairs, acc, tid, nt, group, groups);
  } else {
    device T* rows = workspace + long(group) * 4 * h;
    sum_body<T>(rows, rows + h, rows + 2 * h, rows + 3 * h, data, out, ix, s, g, fs, tw, split_tw,
                pairs, acc, tid, nt, group, groups);
  }
}

// The certified rows of terms' view of their threadgroup (certify_pair.h).
struct MetalGroup {
  threadgroup MP_GROUP_UINT* max_bits;
  threadgroup float* simd_sums;
  device metal::atomic_uint* open_bits;
  uint tid;
  uint nt;
  PairRowScale row_scale(const device float* row, long stride, long len) {
    return group_row_scale(row, stride, len, max_bits, simd_sums, tid, nt);
  }
  void mark_open(long e) {
    metal::atomic_fetch_or_explicit(open_bits + (e >> 5), 1u << (e & 31),
                                    metal::memory_order_relaxed);
  }
};

// The terms of a gradient's target row (reduce_rows): corr/conv(a_j, b_j)
// and a_j * bias_j over the inner rows j.
struct InnerTerms {
  const device float* a;
  const device float* b;
  const device float* bias;
  constant const RowIndex* ix;
  int has_bias;
  long target;
  int conv_count() const { return int(ix->inner_count); }
  void conv_rows(int j, thread OperandRow& a_row, thread OperandRow& b_row) const {
    a_row = OperandRow{a + row_offset(*ix, kOperandA, target, j), ix->time_stride[kOperandA]};
    b_row = OperandRow{b + row_offset(*ix, kOperandB, target, j), ix->time_stride[kOperandB]};
  }
  int bias_count() const { return has_bias ? int(ix->inner_count) : 0; }
  void bias_rows(int j, thread OperandRow& c, thread OperandRow& d) const {
    c = OperandRow{a + row_offset(*ix, kOperandA, target, j), ix->time_stride[kOperandA]};
    d = OperandRow{bias + row_offset(*ix, kOperandBias, target, j), ix->time_stride[kOperandBias]};
  }
};

// The terms of a ConvolveSum row (the jvp, conv_params.h).
struct ListedTerms {
  SumData data;
  constant const RowIndex* ix;
  constant const SumOperands* s;
  long row;
  int conv_count() const { return s->conv_terms; }
  void conv_rows(int i, thread OperandRow& a, thread OperandRow& b) const {
    const int k = sum_conv_operand(i);
    a = sum_operand_row(data, *ix, *s, k, row);
    b = sum_operand_row(data, *ix, *s, k + 1, row);
  }
  int bias_count() const { return s->bias_terms; }
  void bias_rows(int j, thread OperandRow& c, thread OperandRow& d) const {
    const int k = sum_bias_operand(*s, j);
    c = sum_operand_row(data, *ix, *s, k, row);
    d = sum_operand_row(data, *ix, *s, k + 1, row);
  }
};

// Gradient rows, certified: target row r sums its inner rows' terms
// (certified_terms_row); `spectra` holds one accumulator slot per threadgroup.
template <class T, bool kGroup>
[[kernel]] void certified_reduce_rows(MP_CERTIFIED_ARGS) {
  const int h = fs.n_half;
  threadgroup MP_GROUP_UINT max_bits[1];
  threadgroup float simd_sums[32];
  MetalGroup grp{max_bits, simd_sums, open_bits, tid, nt};
  device cpx<T>* acc = spectra + long(group) * 2 * fs.num_pairs;
  device T* rows = workspace + long(group) * 4 * h;
  for (long target = group; target < ix.outer_count; target += groups) {
    const InnerTerms terms{a, b, bias, &ix, g.has_bias, target};
    device float* out_row = out + row_offset(ix, kOperandOut, target, 0);
    if (kGroup) {
      certified_terms_row<T>(group_rows, group_rows + h, group_rows + 2 * h, group_rows + 3 * h,
                             terms, g, fs, tw, split_tw, pairs, acc, bound, out_row,
                             target * g.out_len, grp, int(tid), int(nt));
    } else {
      certified_terms_row<T>(rows, rows + h, rows + 2 * h, rows + 3 * h, terms, g, fs, tw,
                             split_tw, pairs, acc, bound, out_row, target * g.out_len, grp,
                             int(tid), int(nt));
    }
  }
}

// ConvolveSum rows, certified (certified_terms_row).
template <class T, bool kGroup>
[[kernel]] void certified_sum_rows(MP_SUM_KERNEL_ARGS,
                                   device metal::atomic_uint* open_bits [[buffer(24)]],
                                   constant const PairBoundConstants& bound [[buffer(25)]]) {
  const int h = fs.n_half;
  threadgroup MP_GROUP_UINT max_bits[1];
  threadgroup float simd_sums[32];
  MetalGroup grp{max_bits, simd_sums, open_bits, tid, nt};
  device cpx<T>* acc = spectra + long(group) * 2 * fs.num_pairs;
  device T* rows = workspace + long(group) * 4 * h;
  const SumData data{{x0, x1, x2, x3, x4, x5, x6, x7}};
  for (long row = group; row < ix.outer_count; row += groups) {
    const ListedTerms terms{data, &ix, &s, row};
    device float* out_row = out + row_offset(ix, kOperandOut, row, 0);
    if (kGroup) {
      certified_terms_row<T>(group_rows, group_rows + h, group_rows + 2 * h, group_rows + 3 * h,
                             terms, g, fs, tw, split_tw, pairs, acc, bound, out_row,
                             row * g.out_len, grp, int(tid), int(nt));
    } else {
      certified_terms_row<T>(rows, rows + h, rows + 2 * h, rows + 3 * h, terms, g, fs, tw,
                             split_tw, pairs, acc, bound, out_row, row * g.out_len, grp,
                             int(tid), int(nt));
    }
  }
}

// Step 3 of certify.h for the outputs the certified kernels marked: a
// threadgroup per output row (the row's operand rows stay in cache) lists the
// row's marked outputs from its words of the bitmap, and each thread sums one
// of them exactly (ExactSum); rows.recompute(row, t) does one.
template <class Rows>
void recompute_marked(thread const Rows& rows, long row_count, long out_len,
                      const device uint* open_bits, uint tid, uint nt, uint group, uint groups) {
  threadgroup int marked[32 * kRecomputeWords];
  threadgroup MP_GROUP_UINT count[1];
  for (long row = group; row < row_count; row += groups) {
    const long first = row * out_len, end = first + out_len;
    for (long w0 = first / 32; w0 * 32 < end; w0 += kRecomputeWords) {
      if (tid == 0) MP_GROUP_STORE(count, 0u);
      MP_BARRIER();
      for (long w = w0 + long(tid); w < w0 + kRecomputeWords && w * 32 < end; w += long(nt)) {
        for (uint word = open_bits[w]; word != 0u; word &= word - 1u) {
          const long e = w * 32 + MP_CTZ(word);
          if (e >= first && e < end)
            marked[metal::atomic_fetch_add_explicit(count, 1u, metal::memory_order_relaxed)] =
                int(e - first);
        }
      }
      MP_BARRIER();
      const int n = int(MP_GROUP_LOAD(count));
      for (int i = int(tid); i < n; i += int(nt)) rows.recompute(row, marked[i]);
      MP_BARRIER();
    }
  }
}

// certified_conv_rows' rows: row kk * inner_count + j.
struct OneTermRows {
  const device float* a;
  const device float* b;
  const device float* bias;
  device float* out;
  constant const RowIndex* ix;
  constant const ConvShape* g;
  void recompute(long row, long t) const {
    const long kk = row / ix->inner_count, j = row % ix->inner_count;
    const OperandRow a_row{a + row_offset(*ix, kOperandA, kk, j), ix->time_stride[kOperandA]};
    const OperandRow b_row{b + row_offset(*ix, kOperandB, kk, 0), ix->time_stride[kOperandB]};
    const OperandRow bias_row{bias + (g->has_bias ? row_offset(*ix, kOperandBias, kk, j) : 0),
                              ix->time_stride[kOperandBias]};
    const OneTerm terms{a_row, b_row, bias_row, g->has_bias != 0};
    out[row_offset(*ix, kOperandOut, kk, j) + t] = exact_terms_output(terms, *g, t);
  }
};

// certified_reduce_rows' target rows.
struct InnerTermRows {
  const device float* a;
  const device float* b;
  const device float* bias;
  device float* out;
  constant const RowIndex* ix;
  constant const ConvShape* g;
  void recompute(long row, long t) const {
    const InnerTerms terms{a, b, bias, ix, g->has_bias, row};
    out[row_offset(*ix, kOperandOut, row, 0) + t] = exact_terms_output(terms, *g, t);
  }
};

// certified_sum_rows' rows.
struct ListedTermRows {
  SumData data;
  device float* out;
  constant const RowIndex* ix;
  constant const SumOperands* s;
  constant const ConvShape* g;
  void recompute(long row, long t) const {
    const ListedTerms terms{data, ix, s, row};
    out[row_offset(*ix, kOperandOut, row, 0) + t] = exact_terms_output(terms, *g, t);
  }
};

// one_term: certified_conv_rows' rows, else certified_reduce_rows'.
[[kernel]] void recompute_open_rows(const device float* a [[buffer(0)]],
                                    const device float* b [[buffer(1)]],
                                    const device float* bias [[buffer(2)]],
                                    device float* out [[buffer(3)]],
                                    constant const RowIndex& ix [[buffer(4)]],
                                    constant const ConvShape& g [[buffer(5)]],
                                    constant const int& one_term [[buffer(13)]],
                                    const device uint* open_bits [[buffer(24)]],
                                    uint tid [[thread_position_in_threadgroup]],
                                    uint nt [[threads_per_threadgroup]],
                                    uint group [[threadgroup_position_in_grid]],
                                    uint groups [[threadgroups_per_grid]]) {
  if (one_term) {
    const OneTermRows rows{a, b, bias, out, &ix, &g};
    recompute_marked(rows, ix.outer_count * ix.inner_count, g.out_len, open_bits, tid, nt, group,
                     groups);
  } else {
    const InnerTermRows rows{a, b, bias, out, &ix, &g};
    recompute_marked(rows, ix.outer_count, g.out_len, open_bits, tid, nt, group, groups);
  }
}

// certified_sum_rows' outputs.
[[kernel]] void recompute_open_sum(
    device float* out [[buffer(3)]], constant const RowIndex& ix [[buffer(4)]],
    constant const ConvShape& g [[buffer(5)]], constant const SumOperands& s [[buffer(14)]],
    const device float* x0 [[buffer(15)]], const device float* x1 [[buffer(16)]],
    const device float* x2 [[buffer(17)]], const device float* x3 [[buffer(18)]],
    const device float* x4 [[buffer(19)]], const device float* x5 [[buffer(20)]],
    const device float* x6 [[buffer(21)]], const device float* x7 [[buffer(22)]],
    const device uint* open_bits [[buffer(24)]], uint tid [[thread_position_in_threadgroup]],
    uint nt [[threads_per_threadgroup]], uint group [[threadgroup_position_in_grid]],
    uint groups [[threadgroups_per_grid]]) {
  const SumData data{{x0, x1, x2, x3, x4, x5, x6, x7}};
  const ListedTermRows rows{data, out, &ix, &s, &g};
  recompute_marked(rows, ix.outer_count, g.out_len, open_bits, tid, nt, group, groups);
}

// The bias gradient's sums: float32 in float arithmetic, the CPU's order;
// extended and dd exactly (ExactSum), rounded once: the CPU's and CUDA's
// correctly rounded bits.
struct FloatProductSum {
  float acc;
  void init() { acc = 0.0f; }
  void add(float a, float b) { acc = MP_ADDF(acc, MP_MULF(a, b)); }
  float result() { return acc; }
};

struct ExactProductSum {
  ExactSum sum;
  void init() { exact_sum_init(sum); }
  void add(float a, float b) { exact_sum_add_product(sum, a, b); }
  float result() { return exact_sum_round(sum); }
};

// Bias gradient (see the CUDA twin): one thread per output.
template <class Sum>
[[kernel]] void product_sum(const device float* a [[buffer(0)]],
                            const device float* b [[buffer(1)]], device float* out [[buffer(3)]],
                            constant const RowIndex& ix [[buffer(4)]],
                            constant const long& len [[buffer(12)]],
                            constant const int& sum_over_time [[buffer(13)]],
                            uint id [[thread_position_in_grid]]) {
  const long per_target = sum_over_time ? 1 : len;
  if (long(id) >= ix.outer_count * per_target) return;
  const long target = long(id) / per_target, t0 = long(id) % per_target;
  const long a_step = ix.time_stride[kOperandA], b_step = ix.time_stride[kOperandB];
  const long t_end = sum_over_time ? len : t0 + 1;
  Sum acc;
  acc.init();
  for (long j = 0; j < ix.inner_count; ++j) {
    const device float* a_row = a + row_offset(ix, kOperandA, target, j);
    const device float* b_row = b + row_offset(ix, kOperandB, target, j);
    for (long t = sum_over_time ? 0 : t0; t < t_end; ++t) acc.add(a_row[t * a_step], b_row[t * b_step]);
  }
  out[row_offset(ix, kOperandOut, target, 0) + t0] = acc.result();
}

#define MP_INSTANTIATE_ROWS(fn, T, tname)                                                 \
  template [[host_name(#fn "_" tname "_group")]] [[kernel]] decltype(fn<T, true>) \
      fn<T, true>;                                                                    \
  template [[host_name(#fn "_" tname "_device")]] [[kernel]] decltype(fn<T, false>) \
      fn<T, false>;

// float32's rows, and the certified float-pair ones (extended and dd).
MP_INSTANTIATE_ROWS(reduce_rows, float, "float32")
MP_INSTANTIATE_ROWS(sum_rows, float, "float32")
template [[host_name("product_sum_float32")]] [[kernel]] decltype(product_sum<FloatProductSum>)
    product_sum<FloatProductSum>;
template [[host_name("product_sum_dd")]] [[kernel]] decltype(product_sum<ExactProductSum>)
    product_sum<ExactProductSum>;
MP_INSTANTIATE_ROWS(kernel_spectra, float, "float32")
MP_INSTANTIATE_ROWS(conv_rows, float, "float32")
MP_INSTANTIATE_ROWS(certified_spectra, ff, "dd")
MP_INSTANTIATE_ROWS(certified_conv_rows, ff, "dd")
MP_INSTANTIATE_ROWS(certified_reduce_rows, ff, "dd")
MP_INSTANTIATE_ROWS(certified_sum_rows, ff, "dd")

} // namespace mlx_precise
