// Metal entry points of the pair ops (pair_primitives.h), compiled at run time
// by MLX's Metal device (pair_ops.cpp and rfft_conv.cpp build the library from
// this file and the shared kernel headers, embedded at build time). The twins
// of backend/cuda/pair_kernels.cuh in double-word arithmetic: Metal has no
// float64, so each pair is read as the float pair hi + lo, the op runs on
// float pairs (kernels/pair_math.h's dd functions: exp, log, sin, tanh and
// GELU near 2^-46 relatively) and the result is written as a pair. The values
// agree with the CPU's and CUDA's double results to about 2^-44, not
// bitwise. Contraction is off (portability.h); MLX compiles run-time
// libraries with fast math off.
//
// Address spaces: the shared helpers take `thread` references, so layouts
// (constant) are copied into thread-local values before they are passed on.
#include "kernels/pair_grad.h"
#include "kernels/pair_math.h"
#include "kernels/rfft_conv_rows.h"
#include "kernels/strict_params.h"

namespace mlx_precise {

// ------------------------------------------------------------ elementwise ----
// out (size elements, row-major, rows of `inner`) = op(x [, y]); each operand
// at its own strides (RowsLayout). Unary ops bind x again as y, never read.
[[kernel]] void pair_elementwise(const device float* x_hi [[buffer(0)]],
                                 const device float* x_lo [[buffer(1)]],
                                 const device float* y_hi [[buffer(2)]],
                                 const device float* y_lo [[buffer(3)]],
                                 device float* out_hi [[buffer(4)]],
                                 device float* out_lo [[buffer(5)]],
                                 constant const RowsLayout* layouts [[buffer(6)]],
                                 constant const long& size [[buffer(7)]],
                                 constant const long& inner [[buffer(8)]],
                                 constant const int& op [[buffer(9)]],
                                 constant const int& binary [[buffer(10)]],
                                 uint id [[thread_position_in_grid]]) {
  const long i = long(id);
  if (i >= size) return;
  const RowsLayout xh = layouts[0], xl = layouts[1], yh = layouts[2], yl = layouts[3];
  const ff r = pair_element<ff>(PairOp(op), binary != 0, x_hi[element_offset(xh, i, inner)],
                                x_lo[element_offset(xl, i, inner)],
                                y_hi[element_offset(yh, i, inner)],
                                y_lo[element_offset(yl, i, inner)]);
  out_hi[i] = r.hi;
  out_lo[i] = r.lo;
}

// ------------------------------------------------------------- layer_norm ----
// One SIMD-group per row: lanes 0..7 sum the elements l, l + 8, ... in float
// pairs and publish the parts in the SIMD-group's threadgroup slot; every
// thread adds the parts in lane order, so all hold the same mean and variance
// (torch's: biased, about the mean, eps inside the square root), then the
// lanes share the element-wise work.
constant constexpr int kPairLanes = 8;
constant constexpr int kPairRowsPerGroup = 8;  // most SIMD-groups per threadgroup

#define MP_PAIR_SIMD_SYNC() metal::simdgroup_barrier(metal::mem_flags::mem_threadgroup)

ff pair_value(const device float* hi, const device float* lo, long hi_stride, long lo_stride,
              int i) {
  return r_from_pair(ff{}, hi[i * hi_stride], lo[i * lo_stride]);
}

// The parts of a row sum published in `parts`, added in lane order.
ff sum_parts(threadgroup ff* parts) {
  ff total = ff{0.0f, 0.0f};
  for (int l = 0; l < kPairLanes; ++l) total = dd_add(total, parts[l]);
  return total;
}

[[kernel]] void pair_layer_norm_rows(const device float* x_hi [[buffer(0)]],
                                     const device float* x_lo [[buffer(1)]],
                                     const device float* weight [[buffer(2)]],
                                     const device float* bias [[buffer(3)]],
                                     device float* out_hi [[buffer(4)]],
                                     device float* out_lo [[buffer(5)]],
                                     constant const RowsLayout& hi_layout [[buffer(6)]],
                                     constant const RowsLayout& lo_layout [[buffer(7)]],
                                     constant const LayerNormLaunch& launch [[buffer(8)]],
                                     constant const ff& eps [[buffer(9)]],
                                     uint lane [[thread_index_in_simdgroup]],
                                     uint simd_width [[threads_per_simdgroup]],
                                     uint simd [[simdgroup_index_in_threadgroup]],
                                     uint simds [[simdgroups_per_threadgroup]],
                                     uint group [[threadgroup_position_in_grid]],
                                     uint groups [[threadgroups_per_grid]]) {
  threadgroup ff parts[kPairRowsPerGroup][kPairLanes];
  const RowsLayout hl = hi_layout, ll = lo_layout;
  const LayerNormLaunch f = launch;
  const ff count = dd_from_float(float(f.dim));
  const long hs = hl.element_stride, ls = ll.element_stride;
  for (long r = long(group) * simds + simd; r < f.rows; r += long(groups) * simds) {
    const device float* hi = x_hi + row_start(hl, r);
    const device float* lo = x_lo + row_start(ll, r);
    if (lane < uint(kPairLanes)) {
      ff sum = ff{0.0f, 0.0f};
      for (int i = int(lane); i < f.dim; i += kPairLanes)
        sum = dd_add(sum, pair_value(hi, lo, hs, ls, i));
      parts[simd][lane] = sum;
    }
    MP_PAIR_SIMD_SYNC();
    const ff mean = dd_div(sum_parts(parts[simd]), count);
    MP_PAIR_SIMD_SYNC();
    if (lane < uint(kPairLanes)) {
      ff squares = ff{0.0f, 0.0f};
      for (int i = int(lane); i < f.dim; i += kPairLanes) {
        const ff centred = dd_sub(pair_value(hi, lo, hs, ls, i), mean);
        squares = dd_add(squares, dd_mul(centred, centred));
      }
      parts[simd][lane] = squares;
    }
    MP_PAIR_SIMD_SYNC();
    const ff variance = dd_div(sum_parts(parts[simd]), count);
    const ff inv_std = dd_div(dd_from_float(1.0f), dd_sqrt(dd_add(variance, eps)));
    for (int i = int(lane); i < f.dim; i += int(simd_width)) {
      ff v = dd_mul(dd_sub(pair_value(hi, lo, hs, ls, i), mean), inv_std);
      if (f.has_weight) v = dd_mul_f(v, weight[i * f.weight_stride]);
      if (f.has_bias) v = dd_add(v, dd_from_float(bias[i * f.bias_stride]));
      out_hi[r * f.dim + i] = v.hi;
      out_lo[r * f.dim + i] = v.lo;
    }
    MP_PAIR_SIMD_SYNC();  // parts is free again
  }
}

// ------------------------------------------------------------------ addmm ----
// out (batches, m, n) = a @ b + c for pairs a, b (hi_layout over their hi
// parts, lo_layout over their lo parts) and float32 c: one thread per output,
// the products summed over k in order in float pairs, then c.
[[kernel]] void pair_addmm(const device float* a_hi [[buffer(0)]],
                           const device float* a_lo [[buffer(1)]],
                           const device float* b_hi [[buffer(2)]],
                           const device float* b_lo [[buffer(3)]],
                           const device float* c [[buffer(4)]],
                           device float* out_hi [[buffer(5)]],
                           device float* out_lo [[buffer(6)]],
                           constant const AddmmLayout& hi_layout [[buffer(7)]],
                           constant const AddmmLayout& lo_layout [[buffer(8)]],
                           uint id [[thread_position_in_grid]]) {
  const AddmmLayout L = hi_layout, lo = lo_layout;
  const long e = long(id);
  const long per_batch = long(L.m) * L.n;
  if (e >= per_batch * L.batches) return;
  const long batch = e / per_batch, w = e - batch * per_batch;
  const long i = w / L.n, j = w - i * L.n;
  const device float* ah = a_hi + strided_offset(batch, L.batch_dims, L.batch_shape, L.a_batch);
  const device float* al = a_lo + strided_offset(batch, lo.batch_dims, lo.batch_shape, lo.a_batch);
  const device float* bh = b_hi + strided_offset(batch, L.batch_dims, L.batch_shape, L.b_batch);
  const device float* bl = b_lo + strided_offset(batch, lo.batch_dims, lo.batch_shape, lo.b_batch);
  ff acc = ff{0.0f, 0.0f};
  for (long k = 0; k < L.k; ++k) {
    const ff x = r_from_pair(ff{}, ah[i * L.a_row + k * L.a_col], al[i * lo.a_row + k * lo.a_col]);
    const ff y = r_from_pair(ff{}, bh[k * L.b_row + j * L.b_col], bl[k * lo.b_row + j * lo.b_col]);
    acc = dd_add(acc, dd_mul(x, y));
  }
  if (L.has_c) {
    const long at = strided_offset(batch, L.batch_dims, L.batch_shape, L.c_batch);
    acc = dd_add(acc, dd_from_float(c[at + i * L.c_row + j * L.c_col]));
  }
  out_hi[e] = acc.hi;
  out_lo[e] = acc.lo;
}

// -------------------------------------------------------------- take_rows ----
// out (count, dim) = the rows ids[i] of the pair table (rows, dim); NaN rows
// for an id outside [0, rows), as on the CPU. ids: rows of ids_inner.
[[kernel]] void pair_gather_rows(const device float* table_hi [[buffer(0)]],
                                 const device float* table_lo [[buffer(1)]],
                                 const device int* ids [[buffer(2)]],
                                 device float* out_hi [[buffer(3)]],
                                 device float* out_lo [[buffer(4)]],
                                 constant const RowsLayout* layouts [[buffer(5)]],
                                 constant const long* sizes [[buffer(6)]],
                                 uint id [[thread_position_in_grid]]) {
  // layouts: table hi, table lo, ids; sizes: ids_inner, table rows, dim, count.
  const RowsLayout hl = layouts[0], ll = layouts[1], il = layouts[2];
  const long ids_inner = sizes[0], table_rows = sizes[1], dim = sizes[2], count = sizes[3];
  const long e = long(id);
  if (e >= count * dim) return;
  const long i = e / dim, j = e - i * dim;
  const long row = long(ids[element_offset(il, i, ids_inner)]);
  ff v = ff{as_type<float>(0x7fc00000u), as_type<float>(0x7fc00000u)};
  if (row >= 0 && row < table_rows)
    v = r_from_pair(ff{}, table_hi[row_start(hl, row) + j * hl.element_stride],
                    table_lo[row_start(ll, row) + j * ll.element_stride]);
  out_hi[e] = v.hi;
  out_lo[e] = v.lo;
}

// -------------------------------------------------------------- gradients ----
// The gradients' PairSum, PairRows' ScatterAdd, PairLayerNormVJP and
// PairCrossEntropy (pair_vjp_primitives.h): one thread per output or row running
// kernels/pair_grad.h's arithmetic in float pairs, in the CPU's and CUDA's
// order (agreeing with their double results to about 2^-44, not bitwise).

// out (outputs, row-major) = x summed over its summed dims; layouts: kept hi,
// kept lo, summed hi, summed lo (backend/gpu/pair_grad_layout.h).
[[kernel]] void pair_sum_to(const device float* x_hi [[buffer(0)]],
                            const device float* x_lo [[buffer(1)]],
                            device float* out_hi [[buffer(2)]],
                            device float* out_lo [[buffer(3)]],
                            constant const RowsLayout* layouts [[buffer(4)]],
                            constant const long& outputs [[buffer(5)]],
                            constant const long& terms [[buffer(6)]],
                            uint id [[thread_position_in_grid]]) {
  const long t = long(id);
  if (t >= outputs) return;
  const RowsLayout kh = layouts[0], kl = layouts[1], sh = layouts[2], sl = layouts[3];
  const ff v = pair_sum_to_output<ff>(x_hi, x_lo, kh, kl, sh, sl, terms, t);
  out_hi[t] = v.hi;
  out_lo[t] = v.lo;
}

// The counting sort of the ids, one thread: first (table_rows + 1 words) and
// positions (count words). sizes: ids_inner, count, table_rows.
[[kernel]] void pair_rows_positions(const device int* ids [[buffer(0)]],
                                    device long* first [[buffer(1)]],
                                    device long* positions [[buffer(2)]],
                                    constant const RowsLayout& ids_layout [[buffer(3)]],
                                    constant const long* sizes [[buffer(4)]],
                                    uint id [[thread_position_in_grid]]) {
  if (id != 0) return;
  const RowsLayout il = ids_layout;
  pair_rows_count_sort(ids, il, sizes[0], sizes[1], sizes[2], first, positions);
}

// ScatterAdd: out (table_rows, dim) row-major, one thread per element.
// layouts: g hi, g lo; sizes: table_rows, dim.
[[kernel]] void pair_scatter_add_rows(const device float* g_hi [[buffer(0)]],
                                      const device float* g_lo [[buffer(1)]],
                                      const device long* first [[buffer(2)]],
                                      const device long* positions [[buffer(3)]],
                                      device float* out_hi [[buffer(4)]],
                                      device float* out_lo [[buffer(5)]],
                                      constant const RowsLayout* layouts [[buffer(6)]],
                                      constant const long* sizes [[buffer(7)]],
                                      uint id [[thread_position_in_grid]]) {
  const long e = long(id);
  const long dim = sizes[1];
  if (e >= sizes[0] * dim) return;
  const RowsLayout hl = layouts[0], ll = layouts[1];
  const ff v = pair_scatter_add_output<ff>(g_hi, hl, g_lo, ll, first, positions, dim, e);
  out_hi[e] = v.hi;
  out_lo[e] = v.lo;
}

// PairLayerNormVJP, one thread per row of `dim`: dx into (dx_hi, dx_lo) and
// g xhat into (gx_hi, gx_lo), all (rows, dim) row-major. layouts: x hi, x lo,
// g hi, g lo; launch: has_weight, weight_stride, rows, dim (has_bias unused).
[[kernel]] void pair_layer_norm_vjp_rows(const device float* x_hi [[buffer(0)]],
                                         const device float* x_lo [[buffer(1)]],
                                         const device float* weight [[buffer(2)]],
                                         const device float* g_hi [[buffer(3)]],
                                         const device float* g_lo [[buffer(4)]],
                                         device float* dx_hi [[buffer(5)]],
                                         device float* dx_lo [[buffer(6)]],
                                         device float* gx_hi [[buffer(7)]],
                                         device float* gx_lo [[buffer(8)]],
                                         constant const RowsLayout* layouts [[buffer(9)]],
                                         constant const LayerNormLaunch& launch [[buffer(10)]],
                                         constant const ff& eps [[buffer(11)]],
                                         uint id [[thread_position_in_grid]]) {
  const long r = long(id);
  const LayerNormLaunch f = launch;
  if (r >= f.rows) return;
  const RowsLayout xhl = layouts[0], xll = layouts[1], ghl = layouts[2], gll = layouts[3];
  const device float* xh = x_hi + row_start(xhl, r);
  const device float* xl = x_lo + row_start(xll, r);
  const device float* gh = g_hi + row_start(ghl, r);
  const device float* gl = g_lo + row_start(gll, r);
  const long base = r * f.dim;
  const ff tag = eps;
  pair_layer_norm_vjp_row(
      long(f.dim), tag, f.has_weight != 0,
      [&](long i) {
        return r_from_pair(tag, xh[i * xhl.element_stride], xl[i * xll.element_stride]);
      },
      [&](long i) {
        return r_from_pair(tag, gh[i * ghl.element_stride], gl[i * gll.element_stride]);
      },
      [&](long i) { return r_from_float(tag, weight[i * f.weight_stride]); },
      [&](long i, ff v) {
        gx_hi[base + i] = v.hi;
        gx_lo[base + i] = v.lo;
      },
      [&](long i, ff v) {
        dx_hi[base + i] = v.hi;
        dx_lo[base + i] = v.lo;
      });
}

// The cross-entropy (PairCrossEntropy), as the CUDA kernels: each row's
// log-sum-exp (a thread per row), the weights' total (and the forward's
// loss) in one thread in row order, then the gradient per logit. layouts:
// logits hi, logits lo, targets, weights; sizes: rows, classes, with_loss.

// Logit (i, j) of the (rows, classes) pair.
ff logit_at(const device float* hi, const device float* lo, const thread RowsLayout& hl,
            const thread RowsLayout& ll, long i, long j) {
  return r_from_pair(ff{}, hi[row_start(hl, i) + j * hl.element_stride],
                     lo[row_start(ll, i) + j * ll.element_stride]);
}

[[kernel]] void pair_cross_entropy_rows(const device float* l_hi [[buffer(0)]],
                                        const device float* l_lo [[buffer(1)]],
                                        device ff* log_sum_exp [[buffer(2)]],
                                        constant const RowsLayout* layouts [[buffer(3)]],
                                        constant const long* sizes [[buffer(4)]],
                                        uint id [[thread_position_in_grid]]) {
  const long i = long(id);
  const long classes = sizes[1];
  if (i >= sizes[0]) return;
  const RowsLayout hl = layouts[0], ll = layouts[1];
  log_sum_exp[i] =
      pair_log_sum_exp(classes, [&](long j) { return logit_at(l_hi, l_lo, hl, ll, i, j); });
}

// One thread: total[0] = the weights' sum; with_loss also writes the mean loss
// as a pair to out (the forward's scalar).
[[kernel]] void pair_cross_entropy_total(const device float* l_hi [[buffer(0)]],
                                         const device float* l_lo [[buffer(1)]],
                                         const device int* targets [[buffer(2)]],
                                         const device float* weights [[buffer(3)]],
                                         const device ff* log_sum_exp [[buffer(4)]],
                                         device ff* total [[buffer(5)]],
                                         device float* out_hi [[buffer(6)]],
                                         device float* out_lo [[buffer(7)]],
                                         constant const RowsLayout* layouts [[buffer(8)]],
                                         constant const long* sizes [[buffer(9)]],
                                         uint id [[thread_position_in_grid]]) {
  if (id != 0) return;
  const RowsLayout hl = layouts[0], ll = layouts[1], tl = layouts[2], wl = layouts[3];
  const long rows = sizes[0], classes = sizes[1];
  const bool with_loss = sizes[2] != 0;
  ff loss = ff{0.0f, 0.0f};
  total[0] = cross_entropy_total<ff>(
      rows, classes, [&](long i) { return weights[element_offset(wl, i, rows)]; },
      [&](long i) { return long(targets[element_offset(tl, i, rows)]); },
      [&](long i, long j) { return logit_at(l_hi, l_lo, hl, ll, i, j); },
      [&](long i) { return ff(log_sum_exp[i]); }, with_loss ? &loss : nullptr);
  if (with_loss) {
    out_hi[0] = loss.hi;
    out_lo[0] = loss.lo;
  }
}

// The gradient, (rows, classes) row-major: c w_i / total (softmax - onehot),
// c the scalar cotangent pair; NaN rows for a target outside [0, classes).
[[kernel]] void pair_cross_entropy_grad(const device float* l_hi [[buffer(0)]],
                                        const device float* l_lo [[buffer(1)]],
                                        const device int* targets [[buffer(2)]],
                                        const device float* weights [[buffer(3)]],
                                        const device ff* log_sum_exp [[buffer(4)]],
                                        const device ff* total [[buffer(5)]],
                                        const device float* c_hi [[buffer(6)]],
                                        const device float* c_lo [[buffer(7)]],
                                        device float* out_hi [[buffer(8)]],
                                        device float* out_lo [[buffer(9)]],
                                        constant const RowsLayout* layouts [[buffer(10)]],
                                        constant const long* sizes [[buffer(11)]],
                                        uint id [[thread_position_in_grid]]) {
  const long e = long(id);
  const long rows = sizes[0], classes = sizes[1];
  if (e >= rows * classes) return;
  const RowsLayout hl = layouts[0], ll = layouts[1], tl = layouts[2], wl = layouts[3];
  const long i = e / classes, j = e - i * classes;
  const ff v = cross_entropy_grad_output<ff>(
      r_from_pair(ff{}, c_hi[0], c_lo[0]), total[0], weights[element_offset(wl, i, rows)],
      long(targets[element_offset(tl, i, rows)]), classes, j,
      logit_at(l_hi, l_lo, hl, ll, i, j), log_sum_exp[i]);
  out_hi[e] = v.hi;
  out_lo[e] = v.lo;
}

// -------------------------------------------------------------- rfft_conv ----
// pair_rfft_conv (the Convolve form) and its gradients (PairRFFTCorrelate: a
// reversed and the outputs gathered back to front, as the geometry says): the
// row steps of rfft_conv_rows.h in float pairs on rows loaded as hi + lo
// (load_pair_row), outputs written as pairs (finish_pair_output), as the
// CUDA pair kernels do in double. Buffer
// indices 0-11 as rfft_conv_kernels.metal's row kernels (0: the hi part of
// a or b, 3: out's hi part); 12: the lo part of a or b, 13: out's lo part,
// 14: lo_ix, the row index over the lo parts.
template <class Ptr>
void pair_spectra_body(Ptr re, Ptr im, const device float* b_hi, const device float* b_lo,
                       constant const RowIndex& ix, constant const RowIndex& lo_ix,
                       constant const ConvShape& g, constant const FFTShape& fs,
                       const device cpx<ff>* tw, const device cpx<ff>* split_tw,
                       const device IndexPair* pairs, device cpx<ff>* spectra, uint tid,
                       uint nt, uint group, uint groups) {
  const int h = fs.n_half;
  for (long kk = group; kk < ix.outer_count; kk += groups) {
    load_pair_row<ff>(re, im, b_hi + row_offset(ix, kOperandB, kk, 0), ix.time_stride[kOperandB],
                      b_lo + row_offset(lo_ix, kOperandB, kk, 0), lo_ix.time_stride[kOperandB],
                      g.b_len, false, h, int(tid), int(nt));
    MP_BARRIER();
    fft_rows<false, ff>(re, im, fs, tw, int(tid), int(nt));
    store_spectrum<ff>(re, im, pairs, split_tw, g.spectrum_scale,
                       spectra + kk * 2 * fs.num_pairs, fs.num_pairs, int(tid), int(nt));
    MP_BARRIER();
  }
}

template <class Ptr>
void pair_conv_body(Ptr re, Ptr im, const device float* a_hi, const device float* a_lo,
                    const device float* bias, device float* out_hi, device float* out_lo,
                    constant const RowIndex& ix, constant const RowIndex& lo_ix,
                    constant const ConvShape& g, constant const FFTShape& fs,
                    const device cpx<ff>* tw, const device cpx<ff>* split_tw,
                    const device IndexPair* pairs, const device cpx<ff>* spectra, uint tid,
                    uint nt, uint group, uint groups) {
  const int h = fs.n_half;
  const long splits = g.rows_per_group_split;
  const long hi_step = ix.time_stride[kOperandA], lo_step = lo_ix.time_stride[kOperandA];
  const long bias_step = ix.time_stride[kOperandBias];
  for (long item = group; item < ix.outer_count * splits; item += groups) {
    const long kk = item / splits;
    for (long j = item % splits; j < ix.inner_count; j += splits) {
      const device float* hi_row = a_hi + row_offset(ix, kOperandA, kk, j);
      const device float* lo_row = a_lo + row_offset(lo_ix, kOperandA, kk, j);
      const device float* bias_row = bias + (g.has_bias ? row_offset(ix, kOperandBias, kk, j) : 0);
      load_pair_row<ff>(re, im, hi_row, hi_step, lo_row, lo_step, g.a_len, g.a_reversed != 0, h,
                        int(tid), int(nt));
      MP_BARRIER();
      fft_rows<false, ff>(re, im, fs, tw, int(tid), int(nt));
      multiply_rows_by_spectrum<ff>(re, im, fs.n_half, 1, pairs, split_tw, spectra + kk * 2 * fs.num_pairs,
                               fs.num_pairs, int(tid), int(nt));
      MP_BARRIER();
      fft_rows<true, ff>(re, im, fs, tw, int(tid), int(nt));
      const long out_at = row_offset(ix, kOperandOut, kk, j);
      // a is read only with a bias (its outputs are a's times; the kernel's
      // gradient has more outputs than a has elements).
      for (long t = tid; t < g.out_len; t += nt) {
        const ff v = finish_pair_output(gather_output<ff>(re, im, g, t), g.has_bias != 0,
                                        g.has_bias ? hi_row[t * hi_step] : 0.0f,
                                        g.has_bias ? lo_row[t * lo_step] : 0.0f,
                                        g.has_bias ? bias_row[t * bias_step] : 0.0f);
        out_hi[out_at + t] = v.hi;
        out_lo[out_at + t] = v.lo;
      }
      MP_BARRIER();
    }
  }
}

#define MP_PAIR_ROW_KERNEL_ARGS                                                           \
  const device float* a_hi [[buffer(0)]], const device float* b_hi [[buffer(1)]],        \
      const device float* bias [[buffer(2)]], device float* out_hi [[buffer(3)]],        \
      constant const RowIndex& ix [[buffer(4)]], constant const ConvShape& g [[buffer(5)]], \
      constant const FFTShape& fs [[buffer(6)]], const device cpx<ff>* tw [[buffer(7)]],  \
      const device cpx<ff>* split_tw [[buffer(8)]],                                       \
      const device IndexPair* pairs [[buffer(9)]], device cpx<ff>* spectra [[buffer(10)]], \
      device ff* workspace [[buffer(11)]], const device float* lo [[buffer(12)]],         \
      device float* out_lo [[buffer(13)]], constant const RowIndex& lo_ix [[buffer(14)]],  \
      threadgroup ff* group_rows [[threadgroup(0)]],                                      \
      uint tid [[thread_position_in_threadgroup]], uint nt [[threads_per_threadgroup]],   \
      uint group [[threadgroup_position_in_grid]], uint groups [[threadgroups_per_grid]]

// Rows in threadgroup memory (kGroup) or in this threadgroup's workspace slot.
template <bool kGroup>
[[kernel]] void pair_kernel_spectra(MP_PAIR_ROW_KERNEL_ARGS) {
  const int h = fs.n_half;
  if (kGroup) {
    pair_spectra_body(group_rows, group_rows + h, b_hi, lo, ix, lo_ix, g, fs, tw, split_tw, pairs,
                      spectra, tid, nt, group, groups);
  } else {
    device ff* rows = workspace + long(group) * 2 * h;
    pair_spectra_body(rows, rows + h, b_hi, lo, ix, lo_ix, g, fs, tw, split_tw, pairs, spectra,
                      tid, nt, group, groups);
  }
}

template <bool kGroup>
[[kernel]] void pair_conv_rows(MP_PAIR_ROW_KERNEL_ARGS) {
  const int h = fs.n_half;
  if (kGroup) {
    pair_conv_body(group_rows, group_rows + h, a_hi, lo, bias, out_hi, out_lo, ix, lo_ix, g, fs,
                   tw, split_tw, pairs, spectra, tid, nt, group, groups);
  } else {
    device ff* rows = workspace + long(group) * 2 * h;
    pair_conv_body(rows, rows + h, a_hi, lo, bias, out_hi, out_lo, ix, lo_ix, g, fs, tw,
                   split_tw, pairs, spectra, tid, nt, group, groups);
  }
}

#define MP_INSTANTIATE_PAIR_ROWS(fn)                                                     \
  template [[host_name(#fn "_group")]] [[kernel]] decltype(fn<true>) fn<true>;          \
  template [[host_name(#fn "_device")]] [[kernel]] decltype(fn<false>) fn<false>;

MP_INSTANTIATE_PAIR_ROWS(pair_kernel_spectra)
MP_INSTANTIATE_PAIR_ROWS(pair_conv_rows)

}  // namespace mlx_precise
