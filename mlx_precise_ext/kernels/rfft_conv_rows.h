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

// Element offset of row `index` (< the product of the shape) of a row-major
// batch of `ndim` dims. What is left of the index at the outermost dim is its
// coordinate there: no division for it (none at all for one dim, the usual
// case, where a 64-bit remainder per row cost the float kernels ~30
// instructions).
MP_INLINE MP_INT64 batch_offset(
    int ndim,
    MP_CONSTANT const MP_INT64* shape,
    MP_CONSTANT const MP_INT64* stride,
    MP_INT64 index) {
  if (ndim == 0)
    return 0;
  MP_INT64 offset = 0;
  for (int d = ndim - 1; d > 0; --d) {
    offset += (index % shape[d]) * stride[d];
    index /= shape[d];
  }
  return offset + index * stride[0];
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

// z[m] = x[2m] + i x[2m+1] of the real row x (zero from len on), the packed
// point m of the transform's input.
template <class T>
MP_INLINE cpx<T> packed_point(DeviceRow x, int m) {
  const T tag{};
  const MP_INT64 i0 = 2 * static_cast<MP_INT64>(m), i1 = i0 + 1;
  cpx<T> z{T{}, T{}};
  if (i0 < x.len)
    z.re = r_from_float(tag, x(i0));
  if (i1 < x.len)
    z.im = r_from_float(tag, x(i1));
  return z;
}

// A real row of even length 2 pairs and unit stride, read front to back from
// an 8-byte-aligned address: the common layout of the operands. Packed point
// m, (x[2m], x[2m+1]), is then one 8-byte load on CUDA (predicated: no
// branch) with 32-bit index math, and the same values as DeviceRow's.
struct ContiguousRow {
  const MP_DEVICE float* data;
  int pairs;
};

template <class T>
MP_INLINE cpx<T> packed_point(ContiguousRow x, int m) {
  const T tag{};
  MP_FLOAT_PAIR v{0.0f, 0.0f};
  if (m < x.pairs)
    v = MP_LOAD_FLOAT_PAIR(x.data, m);
  return cpx<T>{r_from_float(tag, v.x), r_from_float(tag, v.y)};
}

// The packed points of the real row x = row[0..len) (back to front when
// reversed), zero-padded to the complex length h.
template <class T, class Ptr>
MP_INLINE void load_real_row(
    Ptr re,
    Ptr im,
    const MP_DEVICE float* row,
    MP_INT64 stride,
    MP_INT64 len,
    bool reversed,
    int h,
    int tid,
    int nthreads) {
  const DeviceRow x{row, stride, len, reversed};
  for (int m = tid; m < h; m += nthreads)
    put_point(re, im, m, packed_point<T>(x, m));
}

// load_real_row for a row of pairs (pair_rfft_conv and its gradients, back
// to front when reversed): element i is hi[i] + lo[i] in T, as the CPU's
// load_pair_row reads it.
template <class T, class Ptr>
MP_INLINE void load_pair_row(
    Ptr re,
    Ptr im,
    const MP_DEVICE float* hi,
    MP_INT64 hi_stride,
    const MP_DEVICE float* lo,
    MP_INT64 lo_stride,
    MP_INT64 len,
    bool reversed,
    int h,
    int tid,
    int nthreads) {
  const T tag{};
  for (int m = tid; m < h; m += nthreads) {
    const MP_INT64 i0 = 2 * static_cast<MP_INT64>(m), i1 = i0 + 1;
    // Where elements i0 and i1 lie in the row.
    const MP_INT64 j0 = reversed ? len - 1 - i0 : i0;
    const MP_INT64 j1 = reversed ? len - 1 - i1 : i1;
    re[m] = i0 < len ? r_from_pair(tag, hi[j0 * hi_stride], lo[j0 * lo_stride])
                     : T{};
    im[m] = i1 < len ? r_from_pair(tag, hi[j1 * hi_stride], lo[j1 * lo_stride])
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
  const int lq = fs.stage_log2_quarter[s], q = 1 << lq;
  const MP_DEVICE cpx<T>* w = tw + 3 * fs.stage_tw_offset[s];
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
      const cpx<T> w1 = w[3 * j], w2 = w[3 * j + 1], w3 = w[3 * j + 2];
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

// ------------------------------------------------------- register passes
// ---- The stages of fft_stage grouped into passes: a pass covers up to two
// consecutive radix-4 stages and the radix-2 stage, so a thread loads a group
// of P = 16, 8, 4 or 2 points into registers, runs every butterfly of those
// stages on them and stores them back in place: one round trip through group
// memory (and one barrier) per pass instead of per stage. The points of a
// group are those a stage-by-stage transform combines: within a block of the
// pass's first stage, the positions congruent modulo the last stage's quarter.
// Every butterfly is fft_stage's own call on the same operands with the same
// twiddles, so the result is bitwise that of the stages one by one.

// A row in group memory, position i stored at i ^ ((i / 16) mod 32): a
// permutation inside each aligned block of 32 positions (the identity below
// 32), under which the passes' accesses, 16 consecutive points per thread
// included, and the steps' consecutive accesses fall into distinct banks for
// 4- and 8-byte values.
template <class P>
struct SwizzledRow {
  P data;
  MP_INLINE auto& operator[](int i) const {
    return data[i ^ ((i >> 4) & 31)];
  }
};

// A row in group memory with the real and the imaginary part of each slot
// side by side (SwizzledRow's slots, 2 values each): `part` 0 reads the
// real parts, 1 the imaginary ones. A point is then one 8-byte access at
// one address (float rows on CUDA: an LDS.64/STS.64 instead of two accesses
// at two addresses). Rows of h points are stored back to back, 2h values
// each, as the (re, im) arrays of h values are.
template <class P>
struct InterleavedRow {
  P data;
  int part;
  MP_INLINE auto& operator[](int i) const {
    return data[2 * (i ^ ((i >> 4) & 31)) + part];
  }
};

// The storage index (slot) of position i of a row: i itself, or
// SwizzledRow's (InterleavedRow's) permutation. Both maps are linear under XOR,
// slot(x ^ y) = slot(x) ^ slot(y), which fft_pass_groups uses to address its
// points.
template <class P>
MP_INLINE int row_slot(P, int i) {
  return i;
}
template <class P>
MP_INLINE int row_slot(SwizzledRow<P>, int i) {
  return i ^ ((i >> 4) & 31);
}
template <class P>
MP_INLINE int row_slot(InterleavedRow<P>, int i) {
  return i ^ ((i >> 4) & 31);
}

// The entry of a row at a slot (not a position).
template <class P>
MP_INLINE auto& at_slot(P row, int slot) {
  return row[slot];
}
template <class P>
MP_INLINE auto& at_slot(SwizzledRow<P> row, int slot) {
  return row.data[slot];
}
template <class P>
MP_INLINE auto& at_slot(InterleavedRow<P> row, int slot) {
  return row.data[2 * slot + row.part];
}

// The slots of the positions base + (c << lq), c < kPoints, in a row laid out
// as `row`, where base has no bits in [lq, lq + log2 kPoints) (a pass's
// group): position c is base ^ (c << lq), so its slot is that of the position
// c - low (low = c's lowest bit) XOR slot(low << lq), one XOR per point
// instead of a shift, an add and the permutation's three operations.
template <int kPoints, class P>
MP_INLINE void group_slots(P row, int base, int lq, MP_THREAD int* slot) {
  slot[0] = row_slot(row, base);
  MP_UNROLL
  for (int c = 1; c < kPoints; ++c) {
    const int low = c & -c;
    slot[c] = slot[c - low] ^ row_slot(row, low << lq);
  }
}

// Points per thread in the widest pass; the kernels run h / kPassPoints
// threads per row.
enum : int { kPassPoints = 16 };

MP_INLINE int fft_radix4_stages(MP_CONSTANT const FFTShape& fs) {
  const bool radix2 =
      fs.num_stages > 0 && fs.stage_radix[fs.num_stages - 1] == 2;
  return fs.num_stages - (radix2 ? 1 : 0);
}

// Wide passes hold up to 16 points per group; narrow ones run one stage
// each (4 or 2 points per group: fewer registers, for the double kernels
// whose rows are in shared memory).
MP_INLINE int fft_pass_count(MP_CONSTANT const FFTShape& fs, bool wide) {
  if (!wide)
    return fs.num_stages;
  const int r4 = fft_radix4_stages(fs);
  const bool radix2 = r4 < fs.num_stages;
  return r4 / 2 + ((r4 % 2 != 0 || radix2) ? 1 : 0);
}

// Where a pass reads its points: the row in group memory, or (the forward
// transform's first pass) the real row in device memory, packed as
// load_real_row packs it: z[m] = x[2m] + i x[2m+1], zero from len on.
template <class Ptr>
struct GroupRow {
  Ptr re;
  Ptr im;
};

template <class T, class Ptr>
MP_INLINE cpx<T> packed_point(GroupRow<Ptr> row, int m) {
  return get_point<T>(row.re, row.im, m);
}

// Point m of a pass's source, whose slot in the layout of
// slot_layout(source) is `slot`: a row in group memory is read at the slot,
// other sources (rows in device memory) by position.
struct PositionLayout {};

template <class Source>
MP_INLINE PositionLayout slot_layout(Source) {
  return PositionLayout{};
}
template <class Ptr>
MP_INLINE Ptr slot_layout(GroupRow<Ptr> row) {
  return row.re;
}

template <class T, class Source>
MP_INLINE cpx<T> source_point(Source source, int m, int) {
  return packed_point<T>(source, m);
}
template <class T, class Ptr>
MP_INLINE cpx<T> source_point(GroupRow<Ptr> row, int, int slot) {
  return cpx<T>{at_slot(row.re, slot), at_slot(row.im, slot)};
}

// One radix-4 butterfly of a pass on the points i0 + k step (k = 0..3),
// forward or inverse, with the twiddles w1..w3, or with kUnit none (the
// unit butterflies; w1..w3 unused).
template <bool kInverse, bool kUnit, class T>
MP_INLINE void pass_butterfly(
    MP_THREAD cpx<T>* x,
    int i0,
    int step,
    cpx<T> w1,
    cpx<T> w2,
    cpx<T> w3) {
  MP_THREAD cpx<T>& x0 = x[i0];
  MP_THREAD cpx<T>& x1 = x[i0 + step];
  MP_THREAD cpx<T>& x2 = x[i0 + 2 * step];
  MP_THREAD cpx<T>& x3 = x[i0 + 3 * step];
  if (kUnit && kInverse)
    dit4_inverse_unit(x0, x1, x2, x3);
  else if (kUnit)
    dif4_unit(x0, x1, x2, x3);
  else if (kInverse)
    dit4_inverse(x0, x1, x2, x3, w1, w2, w3);
  else
    dif4(x0, x1, x2, x3, w1, w2, w3);
}

// The radix-4 stage s on a pass's registers: kCount butterflies, butterfly u
// on the points u kStart + k kStep (k = 0..3), at index j + u index_step of
// the stage's quarter (kSameIndex: index_step is 0, one twiddle triplet for
// all of them, loaded once). Unit twiddles where fft_stage uses them (the
// stage's quarter is 1), decided once for the stage, not per butterfly.
template <
    bool kInverse,
    int kCount,
    int kStart,
    int kStep,
    bool kSameIndex,
    class T>
MP_INLINE void pass_stage(
    MP_THREAD cpx<T>* x,
    MP_CONSTANT const FFTShape& fs,
    int s,
    const MP_DEVICE cpx<T>* tw,
    int j,
    int index_step) {
  if (fs.stage_log2_quarter[s] == 0) {
    const cpx<T> one{};
    MP_UNROLL
    for (int u = 0; u < kCount; ++u)
      pass_butterfly<kInverse, true>(x, u * kStart, kStep, one, one, one);
    return;
  }
  const MP_DEVICE cpx<T>* w = tw + 3 * (fs.stage_tw_offset[s] + j);
  cpx<T> w1 = w[0], w2 = w[1], w3 = w[2];
  MP_UNROLL
  for (int u = 0; u < kCount; ++u) {
    if (!kSameIndex && u > 0) {
      const int at = 3 * u * index_step;
      w1 = w[at];
      w2 = w[at + 1];
      w3 = w[at + 2];
    }
    pass_butterfly<kInverse, false>(x, u * kStart, kStep, w1, w2, w3);
  }
}

// The radix-2 stage (block 2): consecutive pairs.
template <int kPoints, class T>
MP_INLINE void pass_stage_radix2(MP_THREAD cpx<T>* x) {
  MP_UNROLL
  for (int c = 0; c < kPoints; c += 2)
    butterfly2(x[c], x[c + 1]);
}

// The butterflies of the stages [s0, s0 + kRadix4) (and the radix-2 stage)
// on every group of P = 4^kRadix4 (x 2) points, forward (DIF) or inverse.
template <
    bool kInverse,
    int kRadix4,
    bool kRadix2,
    class T,
    class Source,
    class Ptr>
MP_INLINE void fft_pass_groups(
    Source source,
    Ptr re,
    Ptr im,
    MP_CONSTANT const FFTShape& fs,
    int s0,
    const MP_DEVICE cpx<T>* tw,
    int tid,
    int nthreads) {
  constexpr int kLog2Points = 2 * kRadix4 + (kRadix2 ? 1 : 0);
  constexpr int kPoints = 1 << kLog2Points;
  // log2 of the block of stage s0, and of the distance between a group's
  // points (the last stage's quarter).
  const int log2_block = kRadix4 > 0 ? fs.stage_log2_quarter[s0] + 2 : 1;
  const int lq = log2_block - kLog2Points;
  const int groups = fs.n_half >> kLog2Points;
  for (int g = tid; g < groups; g += nthreads) {
    const int j = g & ((1 << lq) - 1);
    const int base = ((g >> lq) << log2_block) + j;
    int source_slot[kPoints], slot[kPoints];
    group_slots<kPoints>(slot_layout(source), base, lq, source_slot);
    group_slots<kPoints>(re, base, lq, slot);
    cpx<T> x[kPoints];
    MP_UNROLL
    for (int c = 0; c < kPoints; ++c)
      x[c] = source_point<T>(source, base + (c << lq), source_slot[c]);
    // Stage s0: butterflies u on the points u + k kPoints/4, at index
    // j + u 2^lq. Stage s0 + 1 (16 points): four blocks of four consecutive
    // points, all at index j.
    constexpr int kQuarter = kPoints / 4;
    if (!kInverse) {
      if (kRadix4 >= 1)
        pass_stage<false, kQuarter, 1, kQuarter, false>(
            x, fs, s0, tw, j, 1 << lq);
      if (kRadix4 == 2)
        pass_stage<false, 4, 4, 1, true>(x, fs, s0 + 1, tw, j, 0);
      if (kRadix2)
        pass_stage_radix2<kPoints>(x);
    } else {
      if (kRadix2)
        pass_stage_radix2<kPoints>(x);
      if (kRadix4 == 2)
        pass_stage<true, 4, 4, 1, true>(x, fs, s0 + 1, tw, j, 0);
      if (kRadix4 >= 1)
        pass_stage<true, kQuarter, 1, kQuarter, false>(
            x, fs, s0, tw, j, 1 << lq);
    }
    MP_UNROLL
    for (int c = 0; c < kPoints; ++c) {
      at_slot(re, slot[c]) = x[c].re;
      at_slot(im, slot[c]) = x[c].im;
    }
  }
}

// Pass `pass` (wide or narrow: fft_pass_count) of the forward transform, or
// with kInverse pass `pass` of the
// inverse, which runs the forward passes in reverse order (call it for
// pass = fft_pass_count(fs) - 1 down to 0), reading its points from
// `source` and writing them to (re, im). The source is the row in group
// memory, GroupRow{re, im}, or for the forward transform's first pass the
// real row in device memory (DeviceRow, or ContiguousRow where it applies:
// load_real_row and pass 0 in one step). The caller separates passes with
// MP_BARRIER().
template <bool kInverse, bool kWide, class T, class Source, class Ptr>
MP_INLINE void fft_pass(
    Source source,
    Ptr re,
    Ptr im,
    MP_CONSTANT const FFTShape& fs,
    int pass,
    const MP_DEVICE cpx<T>* tw,
    int tid,
    int nthreads) {
  const int r4 = fft_radix4_stages(fs);
  const bool radix2 = r4 < fs.num_stages;
  const int s0 = kWide ? 2 * pass : pass,
            left = kWide ? r4 - s0 : (pass < r4 ? 1 : 0);
  if (kWide && left >= 2)
    fft_pass_groups<kInverse, 2, false, T>(
        source, re, im, fs, s0, tw, tid, nthreads);
  else if (kWide && left == 1 && radix2)
    fft_pass_groups<kInverse, 1, true, T>(
        source, re, im, fs, s0, tw, tid, nthreads);
  else if (left == 1)
    fft_pass_groups<kInverse, 1, false, T>(
        source, re, im, fs, s0, tw, tid, nthreads);
  else
    fft_pass_groups<kInverse, 0, true, T>(
        source, re, im, fs, s0, tw, tid, nthreads);
}

// The passes of a transform of the row (re, im), each followed by a group
// barrier: the forward passes from `begin` on, or the inverse ones (all).
// Threads [0, nthreads) of a part of the group transform the row; every
// thread of the group calls it (the barriers), `active` false where its part
// has no row.
template <bool kInverse, bool kWide, class T, class Ptr>
MP_INLINE void fft_passes(
    Ptr re,
    Ptr im,
    MP_CONSTANT const FFTShape& fs,
    const MP_DEVICE cpx<T>* tw,
    int begin,
    int tid,
    int nthreads,
    bool active) {
  const int count = fft_pass_count(fs, kWide);
  for (int k = begin; k < count; ++k) {
    if (active)
      fft_pass<kInverse, kWide, T>(
          GroupRow<Ptr>{re, im},
          re,
          im,
          fs,
          kInverse ? count - 1 - k : k,
          tw,
          tid,
          nthreads);
    MP_BARRIER();
  }
}

// The whole transform of a row held by the group in narrow passes (one
// stage each), forward or inverse, each pass followed by a group barrier:
// the Metal kernels' and the CUDA pair kernels' transforms.
template <bool kInverse, class T, class Ptr>
MP_INLINE void fft_rows(
    Ptr re,
    Ptr im,
    MP_CONSTANT const FFTShape& fs,
    const MP_DEVICE cpx<T>* tw,
    int tid,
    int nthreads) {
  fft_passes<kInverse, false, T>(re, im, fs, tw, 0, tid, nthreads, true);
}

// The split twiddles of the pair i's positions (read once for every row
// that the pair's step visits).
template <class T>
struct PairTwiddles {
  cpx<T> p;
  cpx<T> q;
};

template <class T>
MP_INLINE PairTwiddles<T>
pair_twiddles(const MP_DEVICE cpx<T>* split_tw, IndexPair pr, int i) {
  PairTwiddles<T> w{cpx<T>{T{}, T{}}, cpx<T>{T{}, T{}}};
  if (i != 0)
    w.p = split_tw[pr.p];
  if (pr.q >= 0)
    w.q = split_tw[pr.q];
  return w;
}

// Forward split of the pair i: the packed spectrum values at p and q.
template <class T, class Ptr>
MP_INLINE void split_pair(
    Ptr re,
    Ptr im,
    IndexPair pr,
    int i,
    PairTwiddles<T> w,
    MP_THREAD cpx<T>& xp,
    MP_THREAD cpx<T>& xq) {
  if (i == 0) {
    xp = rfft_split_dc(get_point<T>(re, im, 0));
    if (pr.q >= 0) {
      const cpx<T> z = get_point<T>(re, im, pr.q);
      xq = rfft_split(z, z, w.q);
    }
    return;
  }
  const cpx<T> zp = get_point<T>(re, im, pr.p), zq = get_point<T>(re, im, pr.q);
  xp = rfft_split(zp, zq, w.p);
  xq = rfft_split(zq, zp, w.q);
}

// Inverse split of the pair i from the products yp, yq, written back in place.
template <class T, class Ptr>
MP_INLINE void unsplit_pair(
    Ptr re,
    Ptr im,
    IndexPair pr,
    int i,
    PairTwiddles<T> w,
    cpx<T> yp,
    cpx<T> yq) {
  if (i == 0) {
    put_point(re, im, 0, rfft_unsplit_dc(yp));
    if (pr.q >= 0)
      put_point(re, im, pr.q, rfft_unsplit(yq, yq, w.q));
    return;
  }
  put_point(re, im, pr.p, rfft_unsplit(yp, yq, w.p));
  put_point(re, im, pr.q, rfft_unsplit(yq, yp, w.q));
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
    split_pair<T>(re, im, pr, i, pair_twiddles(split_tw, pr, i), xp, xq);
    spectrum[2 * i] = c_scale(xp, scale);
    if (pr.q >= 0)
      spectrum[2 * i + 1] = c_scale(xq, scale);
  }
}

// The row that starts `offset` entries after `row` (rows stored back to
// back), for a plain or a swizzled pointer.
template <class P>
MP_INLINE P row_at(P row, int offset) {
  return row + offset;
}
template <class P>
MP_INLINE SwizzledRow<P> row_at(SwizzledRow<P> row, int offset) {
  return SwizzledRow<P>{row.data + offset};
}
template <class P>
MP_INLINE InterleavedRow<P> row_at(InterleavedRow<P> row, int offset) {
  return InterleavedRow<P>{row.data + offset, row.part};
}

// The pair i's spectrum values xp, xq times sp, sq (a kernel spectrum's),
// inverse-split into (re, im).
template <class T, class Ptr>
MP_INLINE void unsplit_product(
    Ptr re,
    Ptr im,
    IndexPair pr,
    int i,
    PairTwiddles<T> w,
    cpx<T> xp,
    cpx<T> xq,
    cpx<T> sp,
    cpx<T> sq) {
  const cpx<T> yp = packed_mul(xp, sp, i == 0);
  const cpx<T> yq = pr.q >= 0 ? packed_mul(xq, sq, false) : xq;
  unsplit_pair<T>(re, im, pr, i, w, yp, yq);
}

// acc's entries of the pair i (+)= the products of a's values ap, aq and
// b's bp, bq; `first` starts from zero, as the CPU's accumulator does.
template <class T>
MP_INLINE void accumulate_pair(
    MP_DEVICE cpx<T>* acc,
    IndexPair pr,
    int i,
    cpx<T> ap,
    cpx<T> aq,
    cpx<T> bp,
    cpx<T> bq,
    bool first) {
  const cpx<T> zero{T{}, T{}};
  acc[2 * i] = c_add(first ? zero : acc[2 * i], packed_mul(ap, bp, i == 0));
  if (pr.q >= 0)
    acc[2 * i + 1] =
        c_add(first ? zero : acc[2 * i + 1], packed_mul(aq, bq, false));
}

// Forward split, product with a stored kernel spectrum, inverse split, on
// `rows` rows stored back to back (row r: re + 2 r h, im + 2 r h); each
// pair's tables and spectrum values are read once for all of them.
template <class T, class Ptr>
MP_INLINE void multiply_rows_by_spectrum(
    Ptr re,
    Ptr im,
    int h,
    int rows,
    const MP_DEVICE IndexPair* pairs,
    const MP_DEVICE cpx<T>* split_tw,
    const MP_DEVICE cpx<T>* spectrum,
    int num_pairs,
    int tid,
    int nthreads) {
  for (int i = tid; i < num_pairs; i += nthreads) {
    const IndexPair pr = pairs[i];
    const PairTwiddles<T> w = pair_twiddles(split_tw, pr, i);
    const cpx<T> sp = spectrum[2 * i];
    const cpx<T> sq = pr.q >= 0 ? spectrum[2 * i + 1] : cpx<T>{T{}, T{}};
    for (int r = 0; r < rows; ++r) {
      const Ptr row_re = row_at(re, 2 * r * h), row_im = row_at(im, 2 * r * h);
      cpx<T> xp, xq{};
      split_pair<T>(row_re, row_im, pr, i, w, xp, xq);
      unsplit_product<T>(row_re, row_im, pr, i, w, xp, xq, sp, sq);
    }
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
  for (int i = tid; i < num_pairs; i += nthreads) {
    const IndexPair pr = pairs[i];
    cpx<T> ap, aq{}, bp, bq{};
    const PairTwiddles<T> w = pair_twiddles(split_tw, pr, i);
    split_pair<T>(a_re, a_im, pr, i, w, ap, aq);
    split_pair<T>(b_re, b_im, pr, i, w, bp, bq);
    accumulate_pair(acc, pr, i, ap, aq, bp, bq, first);
  }
}

// Both gradients' spectral steps from one transform of a cotangent row G:
// acc (+)= G U, the kernel gradient's term (accumulate_product's operations
// with a = G, b = U), and G times a stored kernel spectrum, inverse-split
// into G's row in place (multiply_rows_by_spectrum's), for the input
// gradient. U may lie elsewhere than G (a device slot). mass(v) sees each
// accumulated value v (the certified bound's accumulation_error).
template <class T, class Ptr, class UPtr, class Mass>
MP_INLINE void multiply_gradient_spectra(
    Ptr g_re,
    Ptr g_im,
    UPtr u_re,
    UPtr u_im,
    const MP_DEVICE IndexPair* pairs,
    const MP_DEVICE cpx<T>* split_tw,
    const MP_DEVICE cpx<T>* spectrum,
    MP_DEVICE cpx<T>* acc,
    bool first,
    int num_pairs,
    int tid,
    int nthreads,
    Mass mass) {
  for (int i = tid; i < num_pairs; i += nthreads) {
    const IndexPair pr = pairs[i];
    const PairTwiddles<T> w = pair_twiddles(split_tw, pr, i);
    cpx<T> gp, gq{}, up, uq{};
    split_pair<T>(g_re, g_im, pr, i, w, gp, gq);
    split_pair<T>(u_re, u_im, pr, i, w, up, uq);
    accumulate_pair(acc, pr, i, gp, gq, up, uq, first);
    mass(acc[2 * i]);
    if (pr.q >= 0)
      mass(acc[2 * i + 1]);
    const cpx<T> sq = pr.q >= 0 ? spectrum[2 * i + 1] : cpx<T>{T{}, T{}};
    unsplit_product<T>(g_re, g_im, pr, i, w, gp, gq, spectrum[2 * i], sq);
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
    unsplit_pair<T>(re, im, pr, i, pair_twiddles(split_tw, pr, i), yp, yq);
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

// Output entry t of the cyclic convolution whose entry i is entry(i).
template <class T, class Entry>
MP_INLINE T
gather_entries(MP_CONSTANT const ConvShape& g, MP_INT64 t, Entry entry) {
  const GatherIndex idx = output_entries(g, t);
  T v{};
  if (idx.first >= 0)
    v = entry(idx.first);
  if (idx.second >= 0)
    v = r_add(v, entry(idx.second));
  return v;
}

// Entry i of the cyclic convolution held in (re, im).
template <class T, class Ptr>
struct PackedEntries {
  Ptr re;
  Ptr im;
  MP_INLINE T operator()(MP_INT64 i) const {
    return time_sample<T>(re, im, i);
  }
};

// Output entry t of the cyclic convolution held in (re, im).
template <class T, class Ptr>
MP_INLINE T
gather_output(Ptr re, Ptr im, MP_CONSTANT const ConvShape& g, MP_INT64 t) {
  return gather_entries<T>(g, t, PackedEntries<T, Ptr>{re, im});
}

// Whether output t is entry t of the cyclic convolution for every t <
// out_len (no fold, no reversal, every output inside the support): the
// causal form. gather_output then returns entry t itself.
MP_INLINE bool outputs_are_entries(MP_CONSTANT const ConvShape& g) {
  const MP_INT64 support = g.a_len + g.b_len - 1;
  const MP_INT64 limit = support < g.fft_size ? support : g.fft_size;
  return g.fold == 0 && g.out_reversed == 0 && g.out_len <= limit;
}

// emit(t, v) for the outputs t = tid, tid + nthreads, ... (t < out_len) of
// the cyclic convolution held in (re, im), v = gather_output(t). Where
// outputs are entries, a thread takes the two outputs 2m, 2m + 1 of packed
// point m, with 32-bit index math; each v is the same value either way.
template <class T, class Ptr, class Emit>
MP_INLINE void for_each_output(
    Ptr re,
    Ptr im,
    MP_CONSTANT const ConvShape& g,
    int tid,
    int nthreads,
    Emit emit) {
  if (outputs_are_entries(g)) {
    const int out_len = static_cast<int>(g.out_len); // <= fft_size
    for (int m = tid; 2 * m < out_len; m += nthreads) {
      const cpx<T> z = get_point<T>(re, im, m);
      emit(static_cast<MP_INT64>(2 * m), z.re);
      if (2 * m + 1 < out_len)
        emit(static_cast<MP_INT64>(2 * m + 1), z.im);
    }
    return;
  }
  for (MP_INT64 t = tid; t < g.out_len; t += nthreads)
    emit(t, gather_output<T>(re, im, g, t));
}

// ------------------------------------------------------------ split rows
// ---- A size-N cyclic convolution x of rows a, b with at most N/2 entries
// each, in two halves of half the memory (for rows too long for group
// memory): modulo z^N - 1 = (z^(N/2) - 1)(z^(N/2) + 1), x[t] = (c[t] +
// g[t]) / 2 and x[t + N/2] = (c[t] - g[t]) / 2 for t < N/2, with c the
// cyclic and g the negacyclic convolution of length N/2 (the even and the
// odd bins of the size-N transform). c is the ordinary real transform of
// size N/2 (a complex transform of M = N/4 points). g by the right-angle
// transform: modulo z^(N/2) + 1 = (z^M + i)(z^M - i) and, the rows being
// real, the first factor alone: a mod z^M + i = a[0:M] - i a[M:2M], and with
// z = w y, w = exp(-2 pi i / N) (w^M = -i) the product mod z^M + i is the
// cyclic one of the twisted rows w^j (a[j] - i a[j + M]) in y, so r =
// IFFT(FFT(twisted a) FFT(twisted b)) w^-j = g[0:M] - i g[M:2M]. Both halves
// run on the same M-point complex transform (the tables of size N/2) in M
// complex values of group memory; c waits in a device slot of N/2 values
// (stash) while g is computed. The kernel spectra are scaled so that the
// halves come out as c/2 and g/2 (1/(4N) and 2/N, powers of two: exact). The
// bound: certify.h, split_entry_error.

// Entries per kernel row of the split spectra: the cyclic half's packed
// spectrum (pair order), then the negacyclic half's M values (position
// order).
MP_INLINE MP_INT64 split_spectrum_stride(MP_CONSTANT const FFTShape& fs) {
  return 2 * static_cast<MP_INT64>(fs.num_pairs) + fs.n_half;
}

// Point j of the negacyclic half's input: w^j (x[j] - i x[j + M]), the row
// zero from its length on.
template <class U>
struct TwistedRow {
  DeviceRow x;
  const MP_DEVICE cpx<U>* twist;
  int quarter; // M
};

template <class T, class U>
MP_INLINE cpx<T> packed_point(TwistedRow<U> row, int j) {
  const T tag{};
  const MP_INT64 upper = static_cast<MP_INT64>(j) + row.quarter;
  cpx<T> z{T{}, T{}};
  if (j < row.x.len)
    z.re = r_from_float(tag, row.x(j));
  if (upper < row.x.len)
    z.im = r_neg(r_from_float(tag, row.x(upper)));
  return c_mul(z, row.twist[j]);
}

// The forward transform of a row read from `source` by the first pass
// (packed_point), in passes separated by group barriers.
template <bool kWide, class T, class Source, class Ptr>
MP_INLINE void forward_from(
    Source source,
    Ptr re,
    Ptr im,
    MP_CONSTANT const FFTShape& fs,
    const MP_DEVICE cpx<T>* tw,
    int tid,
    int nthreads) {
  if (fft_pass_count(fs, kWide) == 0) {
    for (int m = tid; m < fs.n_half; m += nthreads)
      put_point(re, im, m, packed_point<T>(source, m));
  } else {
    fft_pass<false, kWide, T>(source, re, im, fs, 0, tw, tid, nthreads);
  }
  MP_BARRIER();
  fft_passes<false, kWide, T>(re, im, fs, tw, 1, tid, nthreads, true);
}

// The kernel row b of up to N taps reduced modulo z^(N/2) - 1 (kFold =
// +1: b[i] + b[i + N/2]) or z^(N/2) + 1 (-1: b[i] - b[i + N/2]), i < N/2,
// each entry one rounding in T.
template <int kFold>
struct FoldedRow {
  DeviceRow x;
  MP_INT64 half; // N/2

  template <class T>
  MP_INLINE T at(MP_INT64 i) const {
    const T tag{};
    T v{};
    if (i < x.len)
      v = r_from_float(tag, x(i));
    if (i + half < x.len) {
      const T upper = r_from_float(tag, x(i + half));
      v = kFold > 0 ? r_add(v, upper) : r_sub(v, upper);
    }
    return v;
  }
};

// Packed point m of the folded cyclic row: (b'[2m], b'[2m + 1]).
template <class T>
MP_INLINE cpx<T> packed_point(FoldedRow<1> row, int m) {
  const MP_INT64 i = 2 * static_cast<MP_INT64>(m);
  return cpx<T>{row.template at<T>(i), row.template at<T>(i + 1)};
}

// The negacyclic half's input point j of the folded row b'': w^j (b''[j] -
// i b''[j + M]) (Row: any row with at<T>(i), the deep split's twice folded
// rows too).
template <class U, class Row = FoldedRow<-1>>
struct TwistedFoldedRow {
  Row x;
  const MP_DEVICE cpx<U>* twist;
  int quarter; // M
};

template <class T, class U, class Row>
MP_INLINE cpx<T> packed_point(TwistedFoldedRow<U, Row> row, int j) {
  const cpx<T> z{
      row.x.template at<T>(j),
      r_neg(row.x.template at<T>(static_cast<MP_INT64>(j) + row.quarter))};
  return c_mul(z, row.twist[j]);
}

// The split spectra of the kernel row b (split_spectrum_stride entries), of
// its folds b' (cyclic) and b'' (negacyclic): the cyclic half's, scaled by
// `scale` (1/(4N): c/2), and the negacyclic half's, scaled by 8 scale (2/N:
// g/2). Ends with a group barrier.
template <bool kWide, class T, class Ptr>
MP_INLINE void split_kernel_spectrum(
    DeviceRow b,
    Ptr re,
    Ptr im,
    MP_CONSTANT const FFTShape& fs,
    const MP_DEVICE cpx<T>* tw,
    const MP_DEVICE cpx<T>* split_tw,
    const MP_DEVICE IndexPair* pairs,
    const MP_DEVICE cpx<T>* twist,
    float scale,
    MP_DEVICE cpx<T>* spectrum,
    int tid,
    int nthreads) {
  const MP_INT64 half = 2 * static_cast<MP_INT64>(fs.n_half);
  forward_from<kWide, T>(FoldedRow<1>{b, half}, re, im, fs, tw, tid, nthreads);
  store_spectrum<T>(
      re, im, pairs, split_tw, scale, spectrum, fs.num_pairs, tid, nthreads);
  MP_BARRIER();
  forward_from<kWide, T>(
      TwistedFoldedRow<T>{FoldedRow<-1>{b, half}, twist, fs.n_half},
      re,
      im,
      fs,
      tw,
      tid,
      nthreads);
  MP_DEVICE cpx<T>* negacyclic = spectrum + 2 * fs.num_pairs;
  for (int p = tid; p < fs.n_half; p += nthreads)
    negacyclic[p] = c_scale(get_point<T>(re, im, p), 8.0f * scale);
  MP_BARRIER();
}

// Entry i < N of the cyclic convolution from the halves: the cyclic half c/2
// in the stash (c[2p] = c_re[p], c[2p + 1] = c_im[p]) and the negacyclic
// half's inverse transform R in (g_re, g_im): g[j] = Re(R[j] conj w^j) and
// g[j + M] = -Im(R[j] conj w^j).
template <class T, class Ptr>
struct SplitEntries {
  const MP_DEVICE T* c_re;
  const MP_DEVICE T* c_im;
  Ptr g_re;
  Ptr g_im;
  const MP_DEVICE cpx<T>* twist;
  int quarter; // M

  MP_INLINE T operator()(MP_INT64 i) const {
    const int half = 2 * quarter;
    const bool upper = i >= half;
    const int k = static_cast<int>(upper ? i - half : i);
    const int j = k < quarter ? k : k - quarter;
    const T c = (k & 1) ? c_im[k >> 1] : c_re[k >> 1];
    const cpx<T> r = c_mul_conj(get_point<T>(g_re, g_im, j), twist[j]);
    const T g = k < quarter ? r.re : r_neg(r.im);
    return upper ? r_sub(c, g) : r_add(c, g);
  }
};

// The convolution of the row a with the kernel's split spectra
// (split_kernel_spectrum) by the halves, then emit(t, v) for the outputs t =
// tid, tid + nthreads, ... < out_len (v = gather_entries of SplitEntries).
// stash: N/2 values of device memory, c_re then c_im. Ends with a group
// barrier.
template <bool kWide, class T, class Ptr, class Emit>
MP_INLINE void split_conv_row(
    DeviceRow a,
    Ptr re,
    Ptr im,
    MP_DEVICE T* stash,
    MP_CONSTANT const ConvShape& g,
    MP_CONSTANT const FFTShape& fs,
    const MP_DEVICE cpx<T>* tw,
    const MP_DEVICE cpx<T>* split_tw,
    const MP_DEVICE IndexPair* pairs,
    const MP_DEVICE cpx<T>* twist,
    const MP_DEVICE cpx<T>* spectrum,
    int tid,
    int nthreads,
    Emit emit) {
  const int m = fs.n_half;
  // The cyclic half; its last inverse pass writes the stash.
  forward_from<kWide, T>(a, re, im, fs, tw, tid, nthreads);
  multiply_rows_by_spectrum<T>(
      re, im, m, 1, pairs, split_tw, spectrum, fs.num_pairs, tid, nthreads);
  MP_BARRIER();
  const int count = fft_pass_count(fs, kWide);
  for (int k = 0; k + 1 < count; ++k) {
    fft_pass<true, kWide, T>(
        GroupRow<Ptr>{re, im}, re, im, fs, count - 1 - k, tw, tid, nthreads);
    MP_BARRIER();
  }
  fft_pass<true, kWide, T>(
      GroupRow<Ptr>{re, im}, stash, stash + m, fs, 0, tw, tid, nthreads);
  MP_BARRIER();
  // The negacyclic half, left in (re, im).
  forward_from<kWide, T>(
      TwistedRow<T>{a, twist, m}, re, im, fs, tw, tid, nthreads);
  const MP_DEVICE cpx<T>* negacyclic = spectrum + 2 * fs.num_pairs;
  for (int p = tid; p < m; p += nthreads)
    put_point(re, im, p, c_mul(get_point<T>(re, im, p), negacyclic[p]));
  MP_BARRIER();
  fft_passes<true, kWide, T>(re, im, fs, tw, 0, tid, nthreads, true);
  const SplitEntries<T, Ptr> entries{stash, stash + m, re, im, twist, m};
  for (MP_INT64 t = tid; t < g.out_len; t += nthreads)
    emit(t, gather_entries<T>(g, t, entries));
  MP_BARRIER();
}

// ---------------------------------------------------- split gradient rows
// ---- Both gradients of y = conv(u, k) (RFFTConvGradients) by split rows:
// grad u's row is split_conv_row's convolution of the reversed cotangent
// row g with k's split spectra, and grad k's row (the sum over the target's
// rows j of corr(g_j, u_j)) is summed spectrally in each half: acc (+)= G_c
// U_c in the cyclic half (pair order, accumulate_pair's products) and
// G_n U_n in the negacyclic half (position order), each inverted once after
// the last row. Both rows lie within their first N/2 entries, so the halves'
// inputs are the rows themselves (no folds). Per row the group holds one
// half in group memory; U's half waits in the second half of a stash of N
// values while G's is transformed, the cyclic half of grad u in the first
// half while the negacyclic one is computed. The bound of grad k:
// split_sum_certificate.

// Entries per target of the split accumulator: the cyclic half's (pair
// order), then the negacyclic half's.
MP_INLINE MP_INT64 split_accumulator_stride(MP_CONSTANT const FFTShape& fs) {
  return split_spectrum_stride(fs);
}

// forward_from with the last pass writing (out_re, out_im), a device slot,
// instead of the row in group memory.
template <bool kWide, class T, class Source, class Ptr, class Out>
MP_INLINE void forward_to(
    Source source,
    Ptr re,
    Ptr im,
    Out out_re,
    Out out_im,
    MP_CONSTANT const FFTShape& fs,
    const MP_DEVICE cpx<T>* tw,
    int tid,
    int nthreads) {
  const int count = fft_pass_count(fs, kWide);
  if (count == 0) {
    for (int m = tid; m < fs.n_half; m += nthreads)
      put_point(out_re, out_im, m, packed_point<T>(source, m));
  } else if (count == 1) {
    fft_pass<false, kWide, T>(source, out_re, out_im, fs, 0, tw, tid, nthreads);
  } else {
    fft_pass<false, kWide, T>(source, re, im, fs, 0, tw, tid, nthreads);
  }
  MP_BARRIER();
  for (int k = 1; k < count; ++k) {
    if (k + 1 < count)
      fft_pass<false, kWide, T>(
          GroupRow<Ptr>{re, im}, re, im, fs, k, tw, tid, nthreads);
    else
      fft_pass<false, kWide, T>(
          GroupRow<Ptr>{re, im}, out_re, out_im, fs, k, tw, tid, nthreads);
    MP_BARRIER();
  }
}

// The inverse transform of the row in group memory, its last pass writing
// (out_re, out_im), a device slot (at least one pass).
template <bool kWide, class T, class Ptr, class Out>
MP_INLINE void inverse_to(
    Ptr re,
    Ptr im,
    Out out_re,
    Out out_im,
    MP_CONSTANT const FFTShape& fs,
    const MP_DEVICE cpx<T>* tw,
    int tid,
    int nthreads) {
  const int count = fft_pass_count(fs, kWide);
  for (int k = 0; k + 1 < count; ++k) {
    fft_pass<true, kWide, T>(
        GroupRow<Ptr>{re, im}, re, im, fs, count - 1 - k, tw, tid, nthreads);
    MP_BARRIER();
  }
  fft_pass<true, kWide, T>(
      GroupRow<Ptr>{re, im}, out_re, out_im, fs, 0, tw, tid, nthreads);
  MP_BARRIER();
}

// The negacyclic halves' spectral steps: acc (+)= G U (`first` starting from
// zero; mass(v) sees each accumulated value) and G times the kernel's
// negacyclic spectrum, in place.
template <class T, class Ptr, class Mass>
MP_INLINE void multiply_negacyclic_gradient(
    Ptr g_re,
    Ptr g_im,
    const MP_DEVICE T* u_re,
    const MP_DEVICE T* u_im,
    const MP_DEVICE cpx<T>* spectrum,
    MP_DEVICE cpx<T>* acc,
    bool first,
    int m,
    int tid,
    int nthreads,
    Mass mass) {
  const cpx<T> zero{T{}, T{}};
  for (int p = tid; p < m; p += nthreads) {
    const cpx<T> x = get_point<T>(g_re, g_im, p);
    const cpx<T> sum =
        c_add(first ? zero : acc[p], c_mul(x, cpx<T>{u_re[p], u_im[p]}));
    acc[p] = sum;
    mass(sum);
    put_point(g_re, g_im, p, c_mul(x, spectrum[p]));
  }
}

// The outputs t = tid, tid + nthreads, ... < out_len from the cyclic half
// c/2 in stash[0, N/2) and the negacyclic half's inverse in (re, im):
// emit(t, v), v = gather_entries of SplitEntries. Ends with a group barrier.
template <class T, class Ptr, class Emit>
MP_INLINE void emit_split_outputs(
    Ptr re,
    Ptr im,
    const MP_DEVICE T* stash,
    MP_CONSTANT const ConvShape& g,
    const MP_DEVICE cpx<T>* twist,
    int m,
    int tid,
    int nthreads,
    Emit emit) {
  const SplitEntries<T, Ptr> entries{stash, stash + m, re, im, twist, m};
  for (MP_INT64 t = tid; t < g.out_len; t += nthreads)
    emit(t, gather_entries<T>(g, t, entries));
  MP_BARRIER();
}

// Row j of a target: grad u's row from the reversed cotangent row g and the
// kernel's split spectra (split_kernel_spectrum), emit(t, v) for its outputs
// as split_conv_row emits them, and the row's terms added to the target's
// split accumulator acc (split_accumulator_stride entries; `first` starts
// from zero; mass(half, v) sees each accumulated value v of the cyclic (half
// 0) and the negacyclic (1) half). stash: N values of device memory. Ends with
// a group barrier.
template <bool kWide, class T, class Ptr, class Mass, class Emit>
MP_INLINE void split_gradient_row(
    DeviceRow g_row,
    DeviceRow u_row,
    Ptr re,
    Ptr im,
    MP_DEVICE T* stash,
    MP_DEVICE cpx<T>* acc,
    bool first,
    MP_CONSTANT const ConvShape& gu,
    MP_CONSTANT const FFTShape& fs,
    const MP_DEVICE cpx<T>* tw,
    const MP_DEVICE cpx<T>* split_tw,
    const MP_DEVICE IndexPair* pairs,
    const MP_DEVICE cpx<T>* twist,
    const MP_DEVICE cpx<T>* spectrum,
    int tid,
    int nthreads,
    Mass mass,
    Emit emit) {
  const int m = fs.n_half;
  MP_DEVICE T* u_re = stash + 2 * m;
  MP_DEVICE T* u_im = u_re + m;
  // The cyclic halves; grad u's waits in stash[0, N/2).
  forward_to<kWide, T>(u_row, re, im, u_re, u_im, fs, tw, tid, nthreads);
  forward_from<kWide, T>(g_row, re, im, fs, tw, tid, nthreads);
  multiply_gradient_spectra<T>(
      re,
      im,
      u_re,
      u_im,
      pairs,
      split_tw,
      spectrum,
      acc,
      first,
      fs.num_pairs,
      tid,
      nthreads,
      [&](cpx<T> v) { mass(0, v); });
  MP_BARRIER();
  inverse_to<kWide, T>(re, im, stash, stash + m, fs, tw, tid, nthreads);
  // The negacyclic halves.
  forward_to<kWide, T>(
      TwistedRow<T>{u_row, twist, m},
      re,
      im,
      u_re,
      u_im,
      fs,
      tw,
      tid,
      nthreads);
  forward_from<kWide, T>(
      TwistedRow<T>{g_row, twist, m}, re, im, fs, tw, tid, nthreads);
  multiply_negacyclic_gradient<T>(
      re,
      im,
      u_re,
      u_im,
      spectrum + 2 * fs.num_pairs,
      acc + 2 * fs.num_pairs,
      first,
      m,
      tid,
      nthreads,
      [&](cpx<T> v) { mass(1, v); });
  MP_BARRIER();
  fft_passes<true, kWide, T>(re, im, fs, tw, 0, tid, nthreads, true);
  emit_split_outputs<T>(re, im, stash, gu, twist, m, tid, nthreads, emit);
}

// grad k's row from a target's split accumulator (after its last row): the
// cyclic half scaled by 1/(4N) (c/2) and inverted into stash[0, N/2), the
// negacyclic half scaled by 2/N (g/2) and inverted in (re, im), then
// emit(t, v) for its outputs. Ends with a group barrier.
template <bool kWide, class T, class Ptr, class Emit>
MP_INLINE void split_accumulated_row(
    Ptr re,
    Ptr im,
    MP_DEVICE T* stash,
    const MP_DEVICE cpx<T>* acc,
    MP_CONSTANT const ConvShape& gk,
    MP_CONSTANT const FFTShape& fs,
    const MP_DEVICE cpx<T>* tw,
    const MP_DEVICE cpx<T>* split_tw,
    const MP_DEVICE IndexPair* pairs,
    const MP_DEVICE cpx<T>* twist,
    int tid,
    int nthreads,
    Emit emit) {
  const int m = fs.n_half;
  unsplit_accumulated<T>(
      re,
      im,
      pairs,
      split_tw,
      acc,
      gk.spectrum_scale,
      fs.num_pairs,
      tid,
      nthreads);
  MP_BARRIER();
  inverse_to<kWide, T>(re, im, stash, stash + m, fs, tw, tid, nthreads);
  const MP_DEVICE cpx<T>* negacyclic = acc + 2 * fs.num_pairs;
  for (int p = tid; p < m; p += nthreads)
    put_point(re, im, p, c_scale(negacyclic[p], 8.0f * gk.spectrum_scale));
  MP_BARRIER();
  fft_passes<true, kWide, T>(re, im, fs, tw, 0, tid, nthreads, true);
  emit_split_outputs<T>(re, im, stash, gk, twist, m, tid, nthreads, emit);
}

// Point p < h of the row (re, im) times spectrum[p] (position order). Ends
// with a group barrier.
template <class T, class Ptr>
MP_INLINE void multiply_points(
    Ptr re,
    Ptr im,
    const MP_DEVICE cpx<T>* spectrum,
    int h,
    int tid,
    int nthreads) {
  for (int p = tid; p < h; p += nthreads)
    put_point(re, im, p, c_mul(get_point<T>(re, im, p), spectrum[p]));
  MP_BARRIER();
}

// ------------------------------------------------------- deep split rows
// ---- The split rows one level deeper, for rows whose halves (M = N/4
// complex values) do not fit in group memory either: four pieces of P = N/8
// complex values, each on the P-point transform (the tables of size N/4).
// The cyclic half c (size N/2) splits as the convolution did: modulo
// z^(N/2) - 1 = (z^(N/4) - 1)(z^(N/4) + 1), c[t] = (c2[t] + g2[t]) / 2 and
// c[t + N/4] = (c2[t] - g2[t]) / 2 (t < N/4), c2 the cyclic and g2 the
// negacyclic convolution of length N/4 of the rows reduced modulo z^(N/4)
// -+ 1 (the row a, up to N/2 entries, now folded too): c2 by the real
// transform of size N/4 (piece A), g2 by the right-angle transform with the
// twist w^(2j) (piece B), w = exp(-2 pi i / N). The negacyclic half's
// residue r = g[0:M] - i g[M:2M] (modulo z^M + i) splits by the even and odd
// bins of its M-point transform (the size-N transform's bins 1 and 5 mod 8):
// the P-point transforms of x_k[j] = th_k^j p[j] + th_k^(j+P) q[j] (pieces 1
// and 5), p[j] = x[j] - i x[j + 2P], q[j] = x[j + P] - i x[j + 3P] of the
// negacyclic fold x, th_1 = w, th_5 = w^5; then r[j] = (conj th_1^j y_1[j
// mod P] + conj th_5^j y_5[j mod P]) / M for j < M, y_k the pieces' inverse
// transforms. Pieces A, B and 1 wait in a device slot (stash: 3 x 2P values)
// while piece 5 is computed; the kernel spectra are scaled so that the
// pieces come out as c2/4, g2/4 and r/2 (1/(4N), then 2/N: powers of two).
// The twist table (gpu::make_deep_twist_table): th_1^k, th_5^k for k < 2P,
// then w^(2j) for j < P. The bound: certify.h, deep_negacyclic_error_bound;
// docs/certification.md, "Deep split rows".

// The folded row x (N/2 entries) reduced once more modulo z^(N/4) - 1
// (kFold = +1: x[i] + x[i + N/4]) or z^(N/4) + 1 (-1), i < N/4: one more
// rounding in T.
template <int kFold>
struct TwiceFoldedRow {
  FoldedRow<1> x;
  MP_INT64 quarter; // N/4

  template <class T>
  MP_INLINE T at(MP_INT64 i) const {
    const T lo = x.template at<T>(i), hi = x.template at<T>(i + quarter);
    return kFold > 0 ? r_add(lo, hi) : r_sub(lo, hi);
  }
};

// Packed point m of piece A's row: (x_A[2m], x_A[2m + 1]).
template <class T>
MP_INLINE cpx<T> packed_point(TwiceFoldedRow<1> row, int m) {
  const MP_INT64 i = 2 * static_cast<MP_INT64>(m);
  return cpx<T>{row.template at<T>(i), row.template at<T>(i + 1)};
}

// Point j of piece 1's or 5's input: th^j p[j] + th^(j+P) q[j] of the
// negacyclic fold x; twist: th^k, k < 2P.
template <class U>
struct EighthTwistedRow {
  FoldedRow<-1> x;
  const MP_DEVICE cpx<U>* twist;
  int eighth; // P
};

template <class T, class U>
MP_INLINE cpx<T> packed_point(EighthTwistedRow<U> row, int j) {
  const MP_INT64 i = j, p = row.eighth;
  const cpx<T> lo{
      row.x.template at<T>(i), r_neg(row.x.template at<T>(i + 2 * p))};
  const cpx<T> hi{
      row.x.template at<T>(i + p), r_neg(row.x.template at<T>(i + 3 * p))};
  return c_add(c_mul(lo, row.twist[j]), c_mul(hi, row.twist[j + row.eighth]));
}

// The sources of the pieces' forward transforms for the row x of up to N
// entries (the row a has at most N/2: its first folds are itself).
MP_INLINE TwiceFoldedRow<1> deep_piece_a(DeviceRow x, int p) {
  return TwiceFoldedRow<1>{
      FoldedRow<1>{x, 4 * static_cast<MP_INT64>(p)},
      2 * static_cast<MP_INT64>(p)};
}
template <class U>
MP_INLINE TwistedFoldedRow<U, TwiceFoldedRow<-1>>
deep_piece_b(DeviceRow x, const MP_DEVICE cpx<U>* twist, int p) {
  return TwistedFoldedRow<U, TwiceFoldedRow<-1>>{
      TwiceFoldedRow<-1>{
          FoldedRow<1>{x, 4 * static_cast<MP_INT64>(p)},
          2 * static_cast<MP_INT64>(p)},
      twist + 4 * p,
      p};
}
// Piece 1 (k = 0) or 5 (k = 1).
template <class U>
MP_INLINE EighthTwistedRow<U>
deep_piece_g(DeviceRow x, const MP_DEVICE cpx<U>* twist, int p, int k) {
  return EighthTwistedRow<U>{
      FoldedRow<-1>{x, 4 * static_cast<MP_INT64>(p)}, twist + 2 * k * p, p};
}

// Entries per kernel row of the deep split spectra: piece A's packed
// spectrum (pair order), then pieces B, 1 and 5's P values each (position
// order).
MP_INLINE MP_INT64 deep_split_spectrum_stride(MP_CONSTANT const FFTShape& fs) {
  return 2 * static_cast<MP_INT64>(fs.num_pairs) + 3 * fs.n_half;
}

// Doubles per kernel row of the deep split norms (DeepNorms: x_A's norm and
// spectrum bound, ||x_B||, ||x'||, ||x''||).
enum : int { kDeepNorms = 5 };

// The deep split spectra of the kernel row b (deep_split_spectrum_stride
// entries): piece A's scaled by `scale` (1/(4N): c2/4), the others by 8 scale
// (2/N: g2/4, r/2). Ends with a group barrier.
template <bool kWide, class T, class Ptr>
MP_INLINE void deep_split_kernel_spectrum(
    DeviceRow b,
    Ptr re,
    Ptr im,
    MP_CONSTANT const FFTShape& fs,
    const MP_DEVICE cpx<T>* tw,
    const MP_DEVICE cpx<T>* split_tw,
    const MP_DEVICE IndexPair* pairs,
    const MP_DEVICE cpx<T>* twist,
    float scale,
    MP_DEVICE cpx<T>* spectrum,
    int tid,
    int nthreads) {
  const int p = fs.n_half;
  forward_from<kWide, T>(deep_piece_a(b, p), re, im, fs, tw, tid, nthreads);
  store_spectrum<T>(
      re, im, pairs, split_tw, scale, spectrum, fs.num_pairs, tid, nthreads);
  MP_BARRIER();
  MP_DEVICE cpx<T>* piece = spectrum + 2 * fs.num_pairs;
  for (int k = 0; k < 3; ++k) {
    if (k == 0)
      forward_from<kWide, T>(
          deep_piece_b(b, twist, p), re, im, fs, tw, tid, nthreads);
    else
      forward_from<kWide, T>(
          deep_piece_g(b, twist, p, k - 1), re, im, fs, tw, tid, nthreads);
    for (int j = tid; j < p; j += nthreads)
      piece[k * p + j] = c_scale(get_point<T>(re, im, j), 8.0f * scale);
    MP_BARRIER();
  }
}

// Entry i < N of the cyclic convolution from the pieces: A (c2/4, packed),
// B (the inverse transform of g2's twisted row, /4) and y_1 in the stash
// (2P values each, real parts then imaginary ones), y_5 in (re, im).
template <class T, class Ptr>
struct DeepSplitEntries {
  const MP_DEVICE T* stash;
  Ptr re;
  Ptr im;
  const MP_DEVICE cpx<T>* twist;
  int eighth; // P

  MP_INLINE T operator()(MP_INT64 i) const {
    const int p = eighth, quarter = 2 * p, half = 4 * p;
    const bool upper = i >= half;
    const int k = static_cast<int>(upper ? i - half : i); // < N/2
    // c/2 at k: c2/4 -+ g2/4 at k2 = k mod N/4.
    const int k2 = k < quarter ? k : k - quarter;
    const T c2 = stash[(k2 & 1) * p + (k2 >> 1)];
    const int j2 = k2 < p ? k2 : k2 - p;
    const cpx<T> r2 = c_mul_conj(
        cpx<T>{stash[2 * p + j2], stash[3 * p + j2]}, twist[2 * quarter + j2]);
    const T g2 = k2 < p ? r2.re : r_neg(r2.im);
    const T c = k < quarter ? r_add(c2, g2) : r_sub(c2, g2);
    // g/2 at k: r[j] / 2, j = k mod M.
    const int j = k < quarter ? k : k - quarter;
    const int jp = j < p ? j : j - p;
    const cpx<T> r = c_add(
        c_mul_conj(cpx<T>{stash[4 * p + jp], stash[5 * p + jp]}, twist[j]),
        c_mul_conj(get_point<T>(re, im, jp), twist[quarter + j]));
    const T g = k < quarter ? r.re : r_neg(r.im);
    return upper ? r_sub(c, g) : r_add(c, g);
  }
};

// The convolution of the row a (at most N/2 entries) with the kernel's deep
// split spectra (deep_split_kernel_spectrum) by the pieces, then emit(t, v)
// for the outputs t = tid, tid + nthreads, ... < out_len (v =
// gather_entries of DeepSplitEntries). stash: 6P values of device memory.
// Ends with a group barrier.
template <bool kWide, class T, class Ptr, class Emit>
MP_INLINE void deep_split_conv_row(
    DeviceRow a,
    Ptr re,
    Ptr im,
    MP_DEVICE T* stash,
    MP_CONSTANT const ConvShape& g,
    MP_CONSTANT const FFTShape& fs,
    const MP_DEVICE cpx<T>* tw,
    const MP_DEVICE cpx<T>* split_tw,
    const MP_DEVICE IndexPair* pairs,
    const MP_DEVICE cpx<T>* twist,
    const MP_DEVICE cpx<T>* spectrum,
    int tid,
    int nthreads,
    Emit emit) {
  const int p = fs.n_half;
  forward_from<kWide, T>(deep_piece_a(a, p), re, im, fs, tw, tid, nthreads);
  multiply_rows_by_spectrum<T>(
      re, im, p, 1, pairs, split_tw, spectrum, fs.num_pairs, tid, nthreads);
  MP_BARRIER();
  inverse_to<kWide, T>(re, im, stash, stash + p, fs, tw, tid, nthreads);
  const MP_DEVICE cpx<T>* piece = spectrum + 2 * fs.num_pairs;
  for (int k = 0; k < 3; ++k) {
    if (k == 0)
      forward_from<kWide, T>(
          deep_piece_b(a, twist, p), re, im, fs, tw, tid, nthreads);
    else
      forward_from<kWide, T>(
          deep_piece_g(a, twist, p, k - 1), re, im, fs, tw, tid, nthreads);
    multiply_points<T>(re, im, piece + k * p, p, tid, nthreads);
    MP_DEVICE T* slot = stash + 2 * (k + 1) * p;
    if (k < 2)
      inverse_to<kWide, T>(re, im, slot, slot + p, fs, tw, tid, nthreads);
  }
  // Piece 5 stays in (re, im).
  fft_passes<true, kWide, T>(re, im, fs, tw, 0, tid, nthreads, true);
  const DeepSplitEntries<T, Ptr> entries{stash, re, im, twist, p};
  for (MP_INT64 t = tid; t < g.out_len; t += nthreads)
    emit(t, gather_entries<T>(g, t, entries));
  MP_BARRIER();
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

// The thread's parts of the sums of a row (as loaded) that its bound needs:
// of the squares (each exact in double), of the entries at even and at odd
// positions; the group's parts add up to the row's sums.
MP_INLINE void
row_sums_part(DeviceRow x, int tid, int nthreads, MP_THREAD double* sums) {
  sums[0] = sums[1] = sums[2] = 0.0;
  for (MP_INT64 m = tid; m < x.len; m += nthreads) {
    const double v = static_cast<double>(x(m));
    sums[0] += v * v;
    if (m & 1)
      sums[2] += v;
    else
      sums[1] += v;
  }
}

// A row's norm and the bound on its computed packed spectrum (certify.h,
// spectrum_from_row) from the row's sums (row_sums_part) for a real
// transform of h complex points.
struct RowNorms {
  double norm;
  double spectrum;
};

MP_INLINE RowNorms row_norms(
    MP_THREAD const TransformErrors& errors,
    int h,
    MP_INT64 len,
    MP_THREAD const double* sums) {
  const double norm = sqrt(sums[0]);
  return RowNorms{
      norm, spectrum_from_row(errors, h, len, norm, sums[1], sums[2])};
}

// The thread's parts of the sums of a kernel row's folds (FoldedRow, i <
// N/2) that the split bound needs: of the squares of b', of its entries at
// even and at odd positions, and of the squares of b''.
MP_INLINE void folded_row_sums_part(
    DeviceRow b,
    MP_INT64 half,
    int tid,
    int nthreads,
    MP_THREAD double* sums) {
  const FoldedRow<1> cyclic{b, half};
  const FoldedRow<-1> negacyclic{b, half};
  const MP_INT64 len = b.len < half ? b.len : half;
  sums[0] = sums[1] = sums[2] = sums[3] = 0.0;
  for (MP_INT64 m = tid; m < len; m += nthreads) {
    const double v = cyclic.at<double>(m), w = negacyclic.at<double>(m);
    sums[0] += v * v;
    if (m & 1)
      sums[2] += v;
    else
      sums[1] += v;
    sums[3] += w * w;
  }
}

// A kernel row's norms for the split bound: its cyclic fold's norm and
// spectrum bound (row_norms of the fold, h = N/4) and its negacyclic fold's
// norm.
struct SplitKernelNorms {
  RowNorms cyclic;
  double negacyclic;
};

MP_INLINE SplitKernelNorms split_kernel_norms(
    MP_THREAD const TransformErrors& cyclic,
    int h,
    MP_INT64 len,
    MP_THREAD const double* sums) {
  return SplitKernelNorms{row_norms(cyclic, h, len, sums), sqrt(sums[3])};
}

// The constants of a split row's bound: the cyclic half's transform errors
// (size N/2; the norms' spectra are taken for its h = N/4) and the
// negacyclic half's kappa_g (certify.h).
struct SplitBound {
  TransformErrors cyclic;
  double negacyclic;
};

MP_INLINE SplitBound split_bound(MP_INT64 fft_size) {
  return SplitBound{
      transform_errors(fft_size / 2, 1, kUnitRoundoff64),
      negacyclic_error_bound(fft_size, 1, kUnitRoundoff64)};
}

// Step 1 for a split row (split_conv_row) of a and a kernel row b with
// folds b^', b^'' (docs/certification.md, "Split rows"): the cyclic half's
// bound from the measured spectra, plus u ||a|| ||b^'|| for the fold's
// roundings (|b^' - b'| <= u |b^'| entrywise); the negacyclic half's a
// priori (its exact spectrum's norm is sqrt(M) ||row|| for every row), plus
// the same for b^''; combined by split_entry_error with |x| <= (|c| + |g|)/2
// <= ||a|| (||b'|| + ||b''||) / 2. A zero row has both folds zero.
// bound_scale multiplies the bound (1; the CPU harness's tests shrink it to
// show that it matters).
MP_INLINE RowCertificate split_row_certificate(
    MP_THREAD const SplitBound& k,
    MP_CONSTANT const ConvShape& g,
    RowNorms a,
    SplitKernelNorms b,
    double bound_scale) {
  const double u = kUnitRoundoff64;
  const double cyclic_norms = a.norm * b.cyclic.norm;
  const double negacyclic_norms = a.norm * b.negacyclic;
  const double cyclic =
      measured_term_error(
          k.cyclic, a.norm, b.cyclic.norm, a.spectrum, b.cyclic.spectrum) +
      u * cyclic_norms;
  const double negacyclic = (k.negacyclic + u) * negacyclic_norms;
  const double largest =
      0.5 * (cyclic_norms + negacyclic_norms) * (1.0 + 2.0 * u);
  return certificate_from_bound(
      bound_scale * split_entry_error(cyclic, negacyclic, largest),
      g.fold != 0,
      largest,
      1,
      g.has_bias ? 1 : 0);
}

// The rounding of a target's spectral accumulation acc_j = fl(acc_(j-1) +
// p_j) over its rows j (complex additions, each part rounded once: |error|
// <= u |exact sum| <= u / (1 - u) |acc_j|), propagated to an output with at
// most `weight` per unit of the accumulator's 1-norm: mass = the sum over the
// rows and the entries of |Re acc_j| + |Im acc_j| (>= the moduli). A running
// bound in place of gamma_terms sum_j ||P^_j||_1 (docs/certification.md,
// "Running accumulation bound"): ||acc_j||_1 grows like sqrt(j) for terms of
// random phase, not like j.
MP_INLINE double accumulation_error(double mass, double weight) {
  const double u = kUnitRoundoff64;
  return u / (1.0 - u) * mass * weight * (1.0 + 1.0 / 1024.0);
}

// The bound of grad k's row from split gradient rows (split_accumulated_row;
// docs/certification.md, "Split gradient rows"): `terms` rows j summed in
// each half, the rows within N/2 (no folds). The cyclic half: cyclic_terms =
// the sum over j of measured_term_error (transform_errors(N/2, 1), the
// spectra bounded from the rows, h = N/4), plus accumulation_error(cyclic
// mass, 2/N); the
// negacyclic half negacyclic_error_bound(N, 1) per unit of norm_products =
// sum_j ||g_j|| ||u_j|| plus accumulation_error(negacyclic mass, 4/N).
// Combined by split_entry_error with |x| <= (|c| + |g|) / 2 <= norm_products
// (Cauchy-Schwarz per term). masses: the halves' accumulation masses
// (cyclic, negacyclic). bound_scale multiplies the bound (1; the CPU
// harness's tests shrink it).
MP_INLINE RowCertificate split_sum_certificate(
    MP_CONSTANT const ConvShape& g,
    double cyclic_terms,
    MP_THREAD const double* masses,
    double norm_products,
    MP_INT64 terms,
    double bound_scale) {
  const double n = static_cast<double>(g.fft_size);
  const double cyclic = cyclic_terms + accumulation_error(masses[0], 2.0 / n);
  const double negacyclic =
      negacyclic_error_bound(g.fft_size, 1, kUnitRoundoff64) * norm_products +
      accumulation_error(masses[1], 4.0 / n);
  return certificate_from_bound(
      bound_scale * split_entry_error(cyclic, negacyclic, norm_products),
      g.fold != 0,
      norm_products,
      terms,
      0);
}

// The thread's parts of the sums of a row's folds (N/2 = 2 quarter) that
// the deep split bound needs, each entry as the pieces load it: of the
// squares of x_A and x_B (the cyclic fold x' reduced modulo z^(N/4) -+ 1),
// of x_A's entries at even and at odd positions, and of the squares of x'
// and of the negacyclic fold x''.
MP_INLINE void deep_folded_sums_part(
    DeviceRow x,
    MP_INT64 quarter,
    int tid,
    int nthreads,
    MP_THREAD double* sums) {
  const FoldedRow<1> cyclic{x, 2 * quarter};
  const FoldedRow<-1> negacyclic{x, 2 * quarter};
  const MP_INT64 len = x.len < quarter ? x.len : quarter;
  for (int k = 0; k < 6; ++k)
    sums[k] = 0.0;
  for (MP_INT64 m = tid; m < len; m += nthreads) {
    const double lo = cyclic.at<double>(m), hi = cyclic.at<double>(m + quarter);
    const double v = r_add(lo, hi), w = r_sub(lo, hi);
    const double n0 = negacyclic.at<double>(m),
                 n1 = negacyclic.at<double>(m + quarter);
    sums[0] += v * v;
    if (m & 1)
      sums[2] += v;
    else
      sums[1] += v;
    sums[3] += w * w;
    sums[4] += lo * lo + hi * hi;
    sums[5] += n0 * n0 + n1 * n1;
  }
}

// A row's norms for the deep split bound (from deep_folded_sums_part): x_A's
// norm and spectrum bound (row_norms, h = P = N/8), ||x_B||, ||x'||, ||x''||.
struct DeepNorms {
  RowNorms piece_a;
  double piece_b;
  double cyclic;
  double negacyclic;
};

MP_INLINE DeepNorms deep_norms(
    MP_THREAD const TransformErrors& piece_a,
    int p,
    MP_INT64 len,
    MP_THREAD const double* sums) {
  return DeepNorms{
      row_norms(piece_a, p, len < 2 * p ? len : 2 * p, sums),
      sqrt(sums[3]),
      sqrt(sums[4]),
      sqrt(sums[5])};
}

// The constants of a deep split row's bound: piece A's transform errors
// (size N/4), piece B's kappa (negacyclic_error_bound at N/2) and the
// negacyclic half's (deep_negacyclic_error_bound).
struct DeepSplitBound {
  TransformErrors piece_a;
  double piece_b;
  double negacyclic;
};

MP_INLINE DeepSplitBound deep_split_bound(MP_INT64 fft_size) {
  return DeepSplitBound{
      transform_errors(fft_size / 4, 1, kUnitRoundoff64),
      negacyclic_error_bound(fft_size / 2, 1, kUnitRoundoff64),
      deep_negacyclic_error_bound(fft_size, 1, kUnitRoundoff64)};
}

// What convolving the computed folds a^, b^ (norms norm_a, norm_b, off by at
// most fold_a, fold_b in 2-norm) instead of the exact ones adds to an entry
// (Cauchy-Schwarz).
MP_INLINE double
folded_term_error(double norm_a, double fold_a, double norm_b, double fold_b) {
  return fold_a * norm_b + (norm_a + fold_a) * fold_b;
}

// Step 1 for a deep split row (deep_split_conv_row) of a and a kernel row b
// (docs/certification.md, "Deep split rows"): piece A's bound from its rows'
// spectra (measured_term_error at N/4), B's and the negacyclic half's a
// priori, each plus its folds' errors (||x^_A - x_A|| <= u (||x^_A|| +
// sqrt 2 ||x^'||), the same for B, ||x^'' - x''|| <= u ||x^''||); the pieces
// come out as c2/4, g2/4, g/2, and an entry as fl(fl(c2/4 -+ g2/4) -+ g/2),
// |c/2| <= ||a'|| ||b'|| / 2, |x| <= that plus ||a''|| ||b''|| / 2.
MP_INLINE RowCertificate deep_row_certificate(
    MP_THREAD const DeepSplitBound& k,
    MP_CONSTANT const ConvShape& g,
    MP_THREAD const DeepNorms& a,
    MP_THREAD const DeepNorms& b,
    double bound_scale) {
  const double u = kUnitRoundoff64, sqrt2 = 1.4142135623730951;
  const double a_cyclic = u * sqrt2 * a.cyclic, b_cyclic = u * sqrt2 * b.cyclic;
  const double na = a.piece_a.norm, nb = b.piece_a.norm;
  const double piece_a =
      measured_term_error(
          k.piece_a, na, nb, a.piece_a.spectrum, b.piece_a.spectrum) +
      folded_term_error(na, u * na + a_cyclic, nb, u * nb + b_cyclic);
  const double piece_b = k.piece_b * a.piece_b * b.piece_b +
      folded_term_error(a.piece_b,
                        u * a.piece_b + a_cyclic,
                        b.piece_b,
                        u * b.piece_b + b_cyclic);
  const double negacyclic =
      k.negacyclic * a.negacyclic * b.negacyclic +
      folded_term_error(
          a.negacyclic, u * a.negacyclic, b.negacyclic, u * b.negacyclic);
  const double norms = (1.0 + u) * (1.0 + u);
  const double cyclic_half = 0.5 * a.cyclic * b.cyclic * norms;
  const double largest =
      cyclic_half + 0.5 * a.negacyclic * b.negacyclic * norms;
  const double quarters = 0.25 * (piece_a + piece_b);
  const double pieces =
      quarters + 0.5 * negacyclic + u * (cyclic_half + quarters);
  return certificate_from_bound(
      bound_scale * (pieces * (1.0 + u) + u * largest) * (1.0 + 1.0 / 1024.0),
      g.fold != 0,
      largest,
      1,
      g.has_bias ? 1 : 0);
}

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
