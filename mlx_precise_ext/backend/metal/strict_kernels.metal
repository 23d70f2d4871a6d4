// Metal entry points of the strict addmm / linear / layer_norm, compiled at
// run time by MLX's Metal device (strict_ops.cpp builds the library from this
// file and the shared kernel headers, embedded at build time). The twin of
// backend/cuda/strict_kernels.cuh, in float pairs: Metal has no float64, so
// "extended" and "dd" both run these kernels (docs/design.md), which are
// certified: every output is the correctly rounded float32 (kernels/
// addmm_pair.h, kernels/layer_norm_pair.h; what does not certify is rounded
// exactly).
// Contraction is off (portability.h); MLX compiles run-time libraries with
// fast math off.
//
// Address spaces: the shared helpers take `thread` pointers and references,
// so layouts (constant), statistics (device) and lane sums (threadgroup) are
// copied into thread-local values before they are passed on.
#include "kernels/strict_params.h"
#include "kernels/strict_arith.h"
#include "kernels/addmm_pair.h"
#include "kernels/layer_norm_pair.h"

namespace mlx_precise {

// ------------------------------------------------------------------ addmm ----
// Threadgroup tile kStrictTile x kStrictTile outputs, 16 x 16 threads, each
// thread kStrictPerThread x kStrictPerThread outputs (rows ty + 16 r, columns
// tx + 16 q); the K axis advances kStrictTileK at a time through threadgroup
// memory. Each output accumulates pair_dot_step for k = 0, 1, ..., K-1 in
// order, whatever the tiling, and is certified by addmm_pair_value and
// certified_round_pair (kernels/addmm_pair.h); an output that does not certify is marked in
// open_bits and recomputed exactly by addmm_recompute_open.
constant constexpr int kStrictTile = 64;
constant constexpr int kStrictTileK = 16;
constant constexpr int kStrictPerThread = 4;
constant constexpr int kStrictTileThreads = 256;  // strict_ops.cpp launches exactly this

// Buffer indices shared with strict_ops.cpp.
[[kernel]] void addmm_tiles_dd(const device float* a [[buffer(0)]],
                               const device float* b [[buffer(1)]],
                               const device float* c [[buffer(2)]],
                               device float* out [[buffer(3)]],
                               constant const AddmmLayout& layout [[buffer(4)]],
                               device metal::atomic_uint* open_bits [[buffer(5)]],
                               uint tid [[thread_index_in_threadgroup]],
                               uint3 group [[threadgroup_position_in_grid]],
                               uint3 groups [[threadgroups_per_grid]]) {
  threadgroup float a_tile[kStrictTileK][kStrictTile + 1];
  threadgroup float b_tile[kStrictTileK][kStrictTile];
  const AddmmLayout L = layout;
  const int tx = int(tid) % 16, ty = int(tid) / 16;
  const int i0 = int(group.y) * kStrictTile, j0 = int(group.x) * kStrictTile;
  for (long batch = long(group.z); batch < L.batches; batch += long(groups.z)) {
    const device float* ab = a + strided_offset(batch, L.batch_dims, L.batch_shape, L.a_batch);
    const device float* bb = b + strided_offset(batch, L.batch_dims, L.batch_shape, L.b_batch);
    PairDot acc[kStrictPerThread][kStrictPerThread];
    for (int r = 0; r < kStrictPerThread; ++r)
      for (int q = 0; q < kStrictPerThread; ++q) acc[r][q] = pair_dot_init();
    for (int k0 = 0; k0 < L.k; k0 += kStrictTileK) {
      for (int e = int(tid); e < kStrictTile * kStrictTileK; e += kStrictTileThreads) {
        const int r = e / kStrictTileK, kk = e % kStrictTileK;
        a_tile[kk][r] = (i0 + r < L.m && k0 + kk < L.k)
                            ? ab[long(i0 + r) * L.a_row + long(k0 + kk) * L.a_col]
                            : 0.0f;
        const int kb = e / kStrictTile, q = e % kStrictTile;
        b_tile[kb][q] = (j0 + q < L.n && k0 + kb < L.k)
                            ? bb[long(k0 + kb) * L.b_row + long(j0 + q) * L.b_col]
                            : 0.0f;
      }
      metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);
      // Only the real k enter the sums (a padded zero product could flip a
      // zero's sign).
      const int steps = L.k - k0 < kStrictTileK ? L.k - k0 : kStrictTileK;
      for (int kk = 0; kk < steps; ++kk) {
        float av[kStrictPerThread], bv[kStrictPerThread];
        for (int r = 0; r < kStrictPerThread; ++r) av[r] = a_tile[kk][ty + 16 * r];
        for (int q = 0; q < kStrictPerThread; ++q) bv[q] = b_tile[kk][tx + 16 * q];
        for (int r = 0; r < kStrictPerThread; ++r)
          for (int q = 0; q < kStrictPerThread; ++q) acc[r][q] = pair_dot_step(acc[r][q], av[r], bv[q]);
      }
      metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);
    }
    const device float* cb =
        c + (L.has_c ? strided_offset(batch, L.batch_dims, L.batch_shape, L.c_batch) : 0);
    for (int r = 0; r < kStrictPerThread; ++r) {
      const int i = i0 + ty + 16 * r;
      if (i >= L.m) continue;
      for (int q = 0; q < kStrictPerThread; ++q) {
        const int j = j0 + tx + 16 * q;
        if (j >= L.n) continue;
        const long e = (batch * L.m + i) * L.n + j;
        const float cv = L.has_c ? cb[long(i) * L.c_row + long(j) * L.c_col] : 0.0f;
        float err, y;
        const ff v = addmm_pair_value(acc[r][q], L.k, L.alpha, L.has_c != 0, L.beta, cv, &err);
        if (!certified_round_pair(v, err, 0, &y))
          metal::atomic_fetch_or_explicit(open_bits + (e >> 5), 1u << (e & 31),
                                          metal::memory_order_relaxed);
        out[e] = y;
      }
    }
  }
}

// Clears addmm's open bits before addmm_tiles_dd sets them.
[[kernel]] void clear_addmm_open_bits(device uint* open_bits [[buffer(5)]],
                                      constant const long& words [[buffer(6)]],
                                      uint id [[thread_position_in_grid]]) {
  if (long(id) < words) open_bits[id] = 0u;
}

// Row i of a and column j of b of one batch, read through their strides.
struct AddmmRow {
  const device float* a;
  long step;
  float operator()(long p) const { return a[p * step]; }
};

// Step 3 of certify.h for addmm: each output marked in open_bits summed exactly
// (exact_addmm_entry: ExactSum, the scaling by alpha and beta c exact), one
// thread per output.
[[kernel]] void addmm_recompute_open(const device float* a [[buffer(0)]],
                                     const device float* b [[buffer(1)]],
                                     const device float* c [[buffer(2)]],
                                     device float* out [[buffer(3)]],
                                     constant const AddmmLayout& layout [[buffer(4)]],
                                     const device uint* open_bits [[buffer(5)]],
                                     uint id [[thread_position_in_grid]],
                                     uint threads [[threads_per_grid]]) {
  const AddmmLayout L = layout;
  const long total = L.batches * long(L.m) * long(L.n);
  for (long e = long(id); e < total; e += long(threads)) {
    if ((open_bits[e >> 5] & (1u << (e & 31))) == 0u) continue;
    const long batch = e / (long(L.m) * long(L.n));
    const int i = int((e / long(L.n)) % long(L.m)), j = int(e % long(L.n));
    const AddmmRow row{a + strided_offset(batch, L.batch_dims, L.batch_shape, L.a_batch) +
                           long(i) * L.a_row,
                       L.a_col};
    const AddmmRow column{b + strided_offset(batch, L.batch_dims, L.batch_shape, L.b_batch) +
                              long(j) * L.b_col,
                          L.b_row};
    const float cv =
        L.has_c ? c[strided_offset(batch, L.batch_dims, L.batch_shape, L.c_batch) +
                    long(i) * L.c_row + long(j) * L.c_col]
                : 0.0f;
    out[e] = exact_addmm_entry(row, column, L.k, L.alpha, L.has_c != 0, L.beta, cv);
  }
}

// ------------------------------------------------------------- layer_norm ----
// One SIMD-group per row: its 32 lanes run the row's pair sums (lane l:
// elements l, l + 32, ... in order) and publish them in the SIMD-group's
// threadgroup slot; every thread then combines them with the same tree, so
// all threads of the SIMD-group hold the same statistics and share the
// element-wise work. Rows advance per SIMD-group (uniform inside it), so only
// SIMD-group barriers are used.
constant constexpr int kStrictRowsPerGroup = 8;  // most SIMD-groups per threadgroup

#define MP_SIMD_SYNC() metal::simdgroup_barrier(metal::mem_flags::mem_threadgroup)

// Certified layer_norm (kernels/layer_norm_pair.h), y (rows, dim) row-major.
// One SIMD-group per row, its kPairLanes = 32 threads the lanes: they scan the
// row (largest magnitude, extremes), then run the two passes of pair sums on
// the row scaled by 2^-e (lane l: elements l, l + 32, ... in order),
// publishing each in the SIMD-group's threadgroup slots; every thread combines
// them into the same certified statistics and takes every 32nd output. An
// output that does not certify keeps its pair rounding and is marked in
// open_bits (bit row * dim + i) for layer_norm_recompute_open.
struct LayerNormLanes {
  PairRowScan scan[kPairLanes];
  ff sum[kPairLanes];
  ff dev[kPairLanes];
  ff sq[kPairLanes];
  PairDevMass mass[kPairLanes];
};

PairLayerNormRow simd_pair_row(const device float* x, long stride, int dim, PairLayerNormEps eps,
                               threadgroup LayerNormLanes& lanes, uint lane) {
  PairRowScan scan = pair_row_scan_init();
  for (int i = int(lane); i < dim; i += kPairLanes) scan = pair_row_scan_step(scan, x[i * stride]);
  lanes.scan[lane] = scan;
  MP_SIMD_SYNC();
  scan = lanes.scan[0];
  for (int l = 1; l < kPairLanes; ++l) scan = pair_row_scan_merge(scan, lanes.scan[l]);
  const int e = pair_row_exponent(scan);
  ff sum = ff{0.0f, 0.0f};
  for (int i = int(lane); i < dim; i += kPairLanes)
    sum = dd_add(sum, ff{pair_scaled_element(x[i * stride], e), 0.0f});
  lanes.sum[lane] = sum;
  MP_SIMD_SYNC();
  ff part[kPairLanes];
  for (int l = 0; l < kPairLanes; ++l) part[l] = lanes.sum[l];
  const ff shift = dd_div(combine_pair_lanes(part), ff{float(dim), 0.0f});
  ff dev = ff{0.0f, 0.0f}, sq = ff{0.0f, 0.0f};
  PairDevMass mass = PairDevMass{0.0f, 0.0f, 0.0f};
  for (int i = int(lane); i < dim; i += kPairLanes)
    pair_deviation_step(dev, sq, mass, pair_scaled_element(x[i * stride], e), shift);
  lanes.dev[lane] = dev;
  lanes.sq[lane] = sq;
  lanes.mass[lane] = mass;
  MP_SIMD_SYNC();
  ff devs[kPairLanes], sqs[kPairLanes];
  PairDevMass masses[kPairLanes];
  for (int l = 0; l < kPairLanes; ++l) {
    devs[l] = lanes.dev[l];
    sqs[l] = lanes.sq[l];
    masses[l] = lanes.mass[l];
  }
  const PairLayerNormRow row = pair_layer_norm_finish(scan, shift, devs, sqs, masses, dim, eps);
  MP_SIMD_SYNC();
  return row;
}

[[kernel]] void layer_norm_rows_dd(const device float* x [[buffer(0)]],
                                   const device float* weight [[buffer(1)]],
                                   const device float* bias [[buffer(2)]],
                                   device float* y [[buffer(3)]],
                                   constant const RowsLayout& x_layout [[buffer(4)]],
                                   device metal::atomic_uint* open_bits [[buffer(5)]],
                                   constant const LayerNormLaunch& flags [[buffer(6)]],
                                   constant const PairLayerNormEps& eps_in [[buffer(7)]],
                                   uint lane [[thread_index_in_simdgroup]],
                                   uint simd_width [[threads_per_simdgroup]],
                                   uint simd [[simdgroup_index_in_threadgroup]],
                                   uint simds [[simdgroups_per_threadgroup]],
                                   uint group [[threadgroup_position_in_grid]],
                                   uint groups [[threadgroups_per_grid]]) {
  threadgroup LayerNormLanes lanes[kStrictRowsPerGroup];
  const RowsLayout xl = x_layout;
  const LayerNormLaunch f = flags;
  const PairLayerNormEps eps = eps_in;
  for (long r = long(group) * simds + simd; r < f.rows; r += long(groups) * simds) {
    const device float* xr = x + row_start(xl, r);
    const PairLayerNormRow row = simd_pair_row(xr, xl.element_stride, f.dim, eps, lanes[simd], lane);
    for (int i = int(lane); i < f.dim; i += int(simd_width)) {
      const float w = f.has_weight ? weight[i * f.weight_stride] : 1.0f;
      const float b = f.has_bias ? bias[i * f.bias_stride] : -0.0f;
      float out;
      const long e = r * f.dim + i;
      if (!pair_layer_norm_round(pair_layer_norm_output(row, xr[i * xl.element_stride], w, b), 1.0f,
                                 &out))
        metal::atomic_fetch_or_explicit(open_bits + (e >> 5), 1u << (e & 31),
                                        metal::memory_order_relaxed);
      y[e] = out;
    }
  }
}

// Element i of a row read through its stride.
struct StridedRow {
  const device float* x;
  long stride;
  float operator()(long i) const { return x[i * stride]; }
};

// Whether any of the bits [first, last) of a bitmap is set.
bool any_open_bit(const device uint* open_bits, long first, long last) {
  for (long word = first >> 5; word <= (last - 1) >> 5; ++word) {
    uint bits = open_bits[word];
    if (word == first >> 5) bits &= ~0u << (first & 31);
    if (word == (last - 1) >> 5 && (last & 31) != 0) bits &= ~(~0u << (last & 31));
    if (bits != 0u) return true;
  }
  return false;
}

// The outputs layer_norm_rows_dd left open, rounded exactly (exact_layer_norm.h:
// the row's exact sum and radicand once, then midpoint comparisons from the
// pair's rounding): one thread per row, rows without open outputs return at
// once (few rows have any outside exact ties and heavy cancellation).
[[kernel]] void layer_norm_recompute_open(const device float* x [[buffer(0)]],
                                          const device float* weight [[buffer(1)]],
                                          const device float* bias [[buffer(2)]],
                                          device float* y [[buffer(3)]],
                                          constant const RowsLayout& x_layout [[buffer(4)]],
                                          const device uint* open_bits [[buffer(5)]],
                                          constant const LayerNormLaunch& flags [[buffer(6)]],
                                          constant const PairLayerNormEps& eps_in [[buffer(7)]],
                                          uint id [[thread_position_in_grid]],
                                          uint threads [[threads_per_grid]]) {
  const RowsLayout xl = x_layout;
  const LayerNormLaunch f = flags;
  const PairLayerNormEps eps = eps_in;
  for (long r = long(id); r < f.rows; r += long(threads)) {
    const long first = r * f.dim;
    if (!any_open_bit(open_bits, first, first + f.dim)) continue;
    const StridedRow row{x + row_start(xl, r), xl.element_stride};
    const ExactLayerNormRow<kBigLimbs> exact = exact_layer_norm_row<kBigLimbs>(row, long(f.dim), eps.exact);
    for (int i = 0; i < f.dim; ++i) {
      const long e = first + i;
      if ((open_bits[e >> 5] & (1u << (e & 31))) == 0u) continue;
      y[e] = exact_layer_norm_output(exact, row(i), f.has_weight ? weight[i * f.weight_stride] : 1.0f,
                                     f.has_bias ? bias[i * f.bias_stride] : -0.0f, y[e]);
    }
  }
}

// Element i of the weight, 1 without.
struct WeightEntries {
  const device float* w;
  long stride;
  int has;
  float operator()(long i) const { return has != 0 ? w[i * stride] : 1.0f; }
};

// The certified grad x state of a row (kernels/layer_norm_pair.h): the lanes
// scan the products g w for their scale E, then sum gw_s and gw_s z (lane l:
// elements l, l + 32, ... in order), publish both in the SIMD-group's slots,
// and every thread combines them into the same means and bounds.
struct GradXLanes {
  PairGradScan scan[kPairLanes];
  PairGradXLane sums[kPairLanes];
};

PairGradX simd_grad_x(const thread PairLayerNormRow& row, StridedRow x, StridedRow g,
                      WeightEntries w, int dim, threadgroup GradXLanes& lanes, uint lane) {
  PairGradScan scan = pair_grad_scan_init();
  for (int i = int(lane); i < dim; i += kPairLanes) scan = pair_grad_scan_step(scan, g(i), w(i));
  lanes.scan[lane] = scan;
  MP_SIMD_SYNC();
  scan = lanes.scan[0];
  for (int l = 1; l < kPairLanes; ++l) scan = pair_grad_scan_merge(scan, lanes.scan[l]);
  PairGradXLane sum = pair_grad_x_lane_init();
  if (scan.finite != 0 && scan.exponent != kPairNoExponent)
    for (int i = int(lane); i < dim; i += kPairLanes)
      pair_grad_x_step(sum, row, x(i), pair_scaled_gw(g(i), w(i), scan.exponent));
  lanes.sums[lane] = sum;
  MP_SIMD_SYNC();
  PairGradXLane all[kPairLanes];
  for (int l = 0; l < kPairLanes; ++l) all[l] = lanes.sums[l];
  const PairGradX gx = pair_grad_x_finish(row, scan, all, dim);
  MP_SIMD_SYNC();
  return gx;
}

// Per row: the certified statistics (kept for the weight / bias gradients
// when want_stats) and, when want_grad_x, grad x (row-major), certified
// (pair_grad_x_output, certified_round_pair); an output that does not
// certify keeps its pair rounding and is marked in open_bits (bit row * dim +
// i) for layer_norm_grad_x_recompute_open.
[[kernel]] void layer_norm_grad_rows_dd(const device float* x [[buffer(0)]],
                                        const device float* weight [[buffer(1)]],
                                        const device float* g [[buffer(2)]],
                                        device float* grad_x [[buffer(3)]],
                                        constant const RowsLayout& x_layout [[buffer(4)]],
                                        constant const RowsLayout& g_layout [[buffer(5)]],
                                        constant const LayerNormLaunch& flags [[buffer(6)]],
                                        constant const PairLayerNormEps& eps_in [[buffer(7)]],
                                        device PairLayerNormRow* stats [[buffer(8)]],
                                        device metal::atomic_uint* open_bits [[buffer(10)]],
                                        uint lane [[thread_index_in_simdgroup]],
                                        uint simd_width [[threads_per_simdgroup]],
                                        uint simd [[simdgroup_index_in_threadgroup]],
                                        uint simds [[simdgroups_per_threadgroup]],
                                        uint group [[threadgroup_position_in_grid]],
                                        uint groups [[threadgroups_per_grid]]) {
  threadgroup LayerNormLanes lanes[kStrictRowsPerGroup];
  threadgroup GradXLanes grad_lanes[kStrictRowsPerGroup];
  const RowsLayout xl = x_layout;
  const RowsLayout gl = g_layout;
  const LayerNormLaunch f = flags;
  const PairLayerNormEps eps = eps_in;
  const WeightEntries w{weight, f.weight_stride, f.has_weight};
  for (long r = long(group) * simds + simd; r < f.rows; r += long(groups) * simds) {
    const device float* xr = x + row_start(xl, r);
    const PairLayerNormRow row = simd_pair_row(xr, xl.element_stride, f.dim, eps, lanes[simd], lane);
    if (f.want_stats && lane == 0) stats[r] = row;
    if (!f.want_grad_x) continue;
    const StridedRow xs{xr, xl.element_stride};
    const StridedRow gs{g + row_start(gl, r), gl.element_stride};
    const PairGradX gx = simd_grad_x(row, xs, gs, w, f.dim, grad_lanes[simd], lane);
    for (int i = int(lane); i < f.dim; i += int(simd_width)) {
      float out;
      const long e = r * f.dim + i;
      if (!pair_layer_norm_round(pair_grad_x_output(row, gx, xs(i), gs(i), w(i)), 1.0f, &out))
        metal::atomic_fetch_or_explicit(open_bits + (e >> 5), 1u << (e & 31),
                                        metal::memory_order_relaxed);
      grad_x[e] = out;
    }
  }
}

// The grad x outputs layer_norm_grad_rows_dd left open, rounded exactly
// (exact_layer_norm.h: the row's exact sums and V^3 once, then midpoint
// comparisons from the pair's rounding): one thread per row, rows without
// open outputs return at once.
[[kernel]] void layer_norm_grad_x_recompute_open(const device float* x [[buffer(0)]],
                                                 const device float* weight [[buffer(1)]],
                                                 const device float* g [[buffer(2)]],
                                                 device float* grad_x [[buffer(3)]],
                                                 constant const RowsLayout& x_layout [[buffer(4)]],
                                                 constant const RowsLayout& g_layout [[buffer(5)]],
                                                 constant const LayerNormLaunch& flags [[buffer(6)]],
                                                 constant const PairLayerNormEps& eps_in [[buffer(7)]],
                                                 const device uint* open_bits [[buffer(10)]],
                                                 uint id [[thread_position_in_grid]],
                                                 uint threads [[threads_per_grid]]) {
  const RowsLayout xl = x_layout;
  const RowsLayout gl = g_layout;
  const LayerNormLaunch f = flags;
  const PairLayerNormEps eps = eps_in;
  const WeightEntries w{weight, f.weight_stride, f.has_weight};
  for (long r = long(id); r < f.rows; r += long(threads)) {
    const long first = r * f.dim;
    if (!any_open_bit(open_bits, first, first + f.dim)) continue;
    const StridedRow xs{x + row_start(xl, r), xl.element_stride};
    const StridedRow gs{g + row_start(gl, r), gl.element_stride};
    ExactGradXRow exact;
    exact_grad_x_row(xs, gs, w, long(f.dim), eps.exact, exact);
    for (int i = 0; i < f.dim; ++i) {
      const long e = first + i;
      if ((open_bits[e >> 5] & (1u << (e & 31))) == 0u) continue;
      grad_x[e] = exact_grad_x_output(exact, xs(i), gs(i), w(i), grad_x[e]);
    }
  }
}

// Column i of an operand laid out as rows (x or the cotangent).
struct RowsColumn {
  const device float* a;
  RowsLayout layout;
  int i;
  float operator()(long r) const { return a[row_start(layout, r) + i * layout.element_stride]; }
};

// Row r's certified statistics, as layer_norm_grad_rows_dd stored them.
struct StoredRows {
  const device PairLayerNormRow* stats;
  PairLayerNormRow operator()(long r) const { return stats[r]; }
};

// grad weight = sum over rows of g n, grad bias = sum of g: one thread per
// column, rows in order 0, 1, ... as on the CPU, n from the rows' certified
// statistics. grad bias: pair_bias_grad (certified, else summed exactly);
// grad weight: the column's scale, then its pair sum with a running bound
// (kernels/layer_norm_pair.h: pair_weight_grad_*), certified by
// certified_round_pair; a column that does not certify keeps its pair
// rounding and is marked in open_bits (bit i) for
// layer_norm_weight_grad_recompute_open.
[[kernel]] void layer_norm_param_grads_dd(const device float* x [[buffer(0)]],
                                          const device float* g [[buffer(2)]],
                                          device float* grad_weight [[buffer(3)]],
                                          constant const RowsLayout& x_layout [[buffer(4)]],
                                          constant const RowsLayout& g_layout [[buffer(5)]],
                                          constant const LayerNormLaunch& flags [[buffer(6)]],
                                          const device PairLayerNormRow* stats [[buffer(8)]],
                                          device float* grad_bias [[buffer(9)]],
                                          device metal::atomic_uint* open_bits [[buffer(10)]],
                                          uint id [[thread_position_in_grid]]) {
  const LayerNormLaunch f = flags;
  const int i = int(id);
  if (i >= f.dim) return;
  const RowsLayout xl = x_layout;
  const RowsLayout gl = g_layout;
  const RowsColumn xc{x, xl, i};
  const RowsColumn gc{g, gl, i};
  const StoredRows row{stats};
  PairWeightGradScale scale = pair_weight_grad_scale_init();
  PairDot db = pair_dot_init();
  for (long r = 0; r < f.rows; ++r) {
    const float gi = gc(r);
    if (f.want_grad_weight) {
      const PairLayerNormRow s = row(r);
      scale = pair_weight_grad_scale_step(scale, s, gi);
    }
    if (f.want_grad_bias) db = pair_dot_step(db, gi, 1.0f);
  }
  if (f.want_grad_bias) grad_bias[i] = pair_bias_grad(db, gc, f.rows);
  if (!f.want_grad_weight) return;
  PairWeightGradSum sum = pair_weight_grad_sum_init();
  if (scale.finite != 0 && scale.exponent != kPairNoExponent)
    for (long r = 0; r < f.rows; ++r) {
      const PairLayerNormRow s = row(r);
      pair_weight_grad_step(sum, s, scale.exponent, xc(r), gc(r));
    }
  float out;
  if (!pair_layer_norm_round(pair_weight_grad_finish(scale, sum, f.rows), 1.0f, &out))
    metal::atomic_fetch_or_explicit(open_bits + (i >> 5), 1u << (i & 31),
                                    metal::memory_order_relaxed);
  grad_weight[i] = out;
}

// Row r's exact statistics (exact_layer_norm_row), computed when asked.
struct ExactRows {
  const device float* x;
  RowsLayout layout;
  int dim;
  ExactEps eps;
  void operator()(long r, thread ExactLayerNormRow<kBigLimbs>& row) const {
    row = exact_layer_norm_row<kBigLimbs>(StridedRow{x + row_start(layout, r), layout.element_stride},
                                          long(dim), eps);
  }
};

// The grad weight columns layer_norm_param_grads_dd left open, decided by the
// CPU's exact stages (exact_weight_grad_output: rows grouped by variance,
// classes of related variances, integer enclosures), each row's exact
// statistics computed as the column needs them: one thread per column. A
// column those stages leave undecided keeps its pair rounding.
[[kernel]] void layer_norm_weight_grad_recompute_open(const device float* x [[buffer(0)]],
                                                      const device float* g [[buffer(2)]],
                                                      device float* grad_weight [[buffer(3)]],
                                                      constant const RowsLayout& x_layout [[buffer(4)]],
                                                      constant const RowsLayout& g_layout [[buffer(5)]],
                                                      constant const LayerNormLaunch& flags [[buffer(6)]],
                                                      constant const PairLayerNormEps& eps_in [[buffer(7)]],
                                                      const device uint* open_bits [[buffer(10)]],
                                                      uint id [[thread_position_in_grid]]) {
  const LayerNormLaunch f = flags;
  const int i = int(id);
  if (i >= f.dim || (open_bits[i >> 5] & (1u << (i & 31))) == 0u) return;
  const RowsLayout xl = x_layout;
  const RowsLayout gl = g_layout;
  const PairLayerNormEps eps = eps_in;
  float out;
  if (exact_weight_grad_output(ExactRows{x, xl, f.dim, eps.exact}, RowsColumn{x, xl, i},
                               RowsColumn{g, gl, i}, f.rows, grad_weight[i], &out))
    grad_weight[i] = out;
}

} // namespace mlx_precise
