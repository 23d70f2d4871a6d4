// CUDA kernels of the strict addmm / linear / layer_norm, compiled at run time
// by NVRTC (jit.cpp) together with the shared kernel headers. Every output
// does the CPU's operations in the CPU's order (kernels/strict_arith.h), so
// "dd" bits equal the CPU's; "extended" addmm is certified correctly rounded,
// so its bits equal the CPU's as well.
namespace mlx_precise {
// NVRTC has no <cstdint>; the shared headers name int64_t.
using int64_t = long long;
} // namespace mlx_precise
#include "strict_arith.h"
#include "strict_params.h"

namespace mlx_precise::gpu {

// ------------------------------------------------------------------ addmm ----
// "dd": block tile kTile x kTile outputs, 16 x 16 threads, each thread
// kPerThread x kPerThread outputs (rows ty + 16 r, columns tx + 16 c); the K
// axis advances kTileK at a time through shared memory. Each output
// accumulates k = 0, 1, ..., K-1 in order, whatever the tiling.
constexpr int kTile = 64;
constexpr int kTileK = 16;
constexpr int kPerThread = 4;
constexpr int kTileThreads = 256;

// The double-word dot product of strict_arith.h, finished like the CPU.
struct DoubleWordDot {
  using Acc = ff;
  static __device__ __forceinline__ Acc zero() {
    return ff{0.0f, 0.0f};
  }
  static __device__ __forceinline__ Acc step(Acc acc, float a, float b) {
    return dd_dot_step(acc, a, b);
  }
  static __device__ __forceinline__ float
  result(const AddmmLayout& L, Acc acc, float c) {
    return L.has_c ? dd_addmm_result(acc, L.alpha, L.beta, c)
                   : dd_scaled_result(acc, L.alpha);
  }
};

template <class Dot>
__global__ void __launch_bounds__(kTileThreads) addmm_tiles(
    const float* a,
    const float* b,
    const float* c,
    float* out,
    const AddmmLayout L) {
  __shared__ float a_tile[kTileK][kTile + 1];
  __shared__ float b_tile[kTileK][kTile];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int i0 = blockIdx.y * kTile, j0 = blockIdx.x * kTile;
  for (MP_INT64 batch = blockIdx.z; batch < L.batches; batch += gridDim.z) {
    const float* ab =
        a + strided_offset(batch, L.batch_dims, L.batch_shape, L.a_batch);
    const float* bb =
        b + strided_offset(batch, L.batch_dims, L.batch_shape, L.b_batch);
    typename Dot::Acc acc[kPerThread][kPerThread];
    for (int r = 0; r < kPerThread; ++r)
      for (int q = 0; q < kPerThread; ++q)
        acc[r][q] = Dot::zero();
    for (int k0 = 0; k0 < L.k; k0 += kTileK) {
      for (int e = threadIdx.x; e < kTile * kTileK; e += kTileThreads) {
        const int r = e / kTileK, kk = e % kTileK;
        a_tile[kk][r] = (i0 + r < L.m && k0 + kk < L.k)
            ? ab[(i0 + r) * L.a_row + (k0 + kk) * L.a_col]
            : 0.0f;
        const int kb = e / kTile, q = e % kTile;
        b_tile[kb][q] = (j0 + q < L.n && k0 + kb < L.k)
            ? bb[(k0 + kb) * L.b_row + (j0 + q) * L.b_col]
            : 0.0f;
      }
      __syncthreads();
      // Only the real k enter the sums (a padded zero product could flip a
      // zero's sign).
      const int steps = min(kTileK, L.k - k0);
      for (int kk = 0; kk < steps; ++kk) {
        float av[kPerThread], bv[kPerThread];
        for (int r = 0; r < kPerThread; ++r)
          av[r] = a_tile[kk][ty + 16 * r];
        for (int q = 0; q < kPerThread; ++q)
          bv[q] = b_tile[kk][tx + 16 * q];
        for (int r = 0; r < kPerThread; ++r)
          for (int q = 0; q < kPerThread; ++q)
            acc[r][q] = Dot::step(acc[r][q], av[r], bv[q]);
      }
      __syncthreads();
    }
    const float* cb = L.has_c
        ? c + strided_offset(batch, L.batch_dims, L.batch_shape, L.c_batch)
        : nullptr;
    for (int r = 0; r < kPerThread; ++r) {
      const int i = i0 + ty + 16 * r;
      if (i >= L.m)
        continue;
      for (int q = 0; q < kPerThread; ++q) {
        const int j = j0 + tx + 16 * q;
        if (j >= L.n)
          continue;
        const float cv = L.has_c ? cb[i * L.c_row + j * L.c_col] : 0.0f;
        out[(batch * L.m + i) * L.n + j] = Dot::result(L, acc[r][q], cv);
      }
    }
  }
}

// ------------------------------------------------------- extended addmm ----
// The float64 product comes from cuBLAS (DGEMM on the FP64 tensor cores,
// strict_ops.cpp) over operands widened by pack_operand; addmm_certify then
// certifies each output and recomputes the uncertified ones exactly.
//
// Inputs are float32, so every product a_ik b_kj is exact in double; the
// library's sum is some order of K double additions (blocked, split over K,
// fused four-term tensor-core steps). For ANY order of summing K exact
// products, |fl(sum) - sum| <= gamma_K sum|a_ik b_kj| <= gamma_K ||a_i||
// ||b_j|| (Higham, Thm 4.1 / Cauchy-Schwarz), the bound the CPU certifies
// with, as long as every addition rounds to nearest. The tensor cores'
// internal rounding is not documented in that detail, so the bound is doubled
// here: 2 gamma_K(u) times the 1 + 1/1024 slack exceeds gamma_K(2u), which
// covers any faithful (e.g. truncating) rounding of each addition. A looser
// bound only sends more outputs to the exact recompute; every certified
// output is the correctly rounded float32, so the bits equal the CPU's.

// Element p of row i of a, or of column j of b, widened to double (for the
// exact recomputation of uncertified outputs).
struct StridedWide {
  const float* data;
  MP_INT64 stride;
  __device__ __forceinline__ double operator()(MP_INT64 p) const {
    return static_cast<double>(data[p * stride]);
  }
};

// 2-norms of the rows of a and the columns of b of every batch, in double:
// one warp per vector, lane l summing elements l, l + 32, ... then a shuffle
// tree. The order differs from the CPU's 8 lanes; the norms' own rounding
// (relative error below (K/32 + 6) u) is covered many times over by the
// bound's 1 + 1/1024 slack, so the certification stays valid in any order.
// norms: batches * m row norms of a, then batches * n column norms of b.
// Block 0 also zeroes the `count` pending counts of addmm_certify.
__global__ void addmm_norms(
    const float* a,
    const float* b,
    const AddmmLayout L,
    double* norms,
    unsigned* pending_counts,
    int count) {
  if (blockIdx.x == 0)
    for (int t = threadIdx.x; t < count; t += blockDim.x)
      pending_counts[t] = 0u;
  const MP_INT64 per_batch = L.m + L.n;
  const int lane = threadIdx.x % 32;
  const MP_INT64 warps_total =
      static_cast<MP_INT64>(gridDim.x) * (blockDim.x / 32);
  for (MP_INT64 t = blockIdx.x * static_cast<MP_INT64>(blockDim.x / 32) +
           threadIdx.x / 32;
       t < L.batches * per_batch;
       t += warps_total) {
    const MP_INT64 batch = t / per_batch;
    const MP_INT64 r = t % per_batch;
    const float* v;
    MP_INT64 stride;
    if (r < L.m) {
      v = a + strided_offset(batch, L.batch_dims, L.batch_shape, L.a_batch) +
          r * L.a_row;
      stride = L.a_col;
    } else {
      v = b + strided_offset(batch, L.batch_dims, L.batch_shape, L.b_batch) +
          (r - L.m) * L.b_col;
      stride = L.b_row;
    }
    double sum = 0.0;
    for (int p = lane; p < L.k; p += 32) {
      const double x = static_cast<double>(v[p * stride]);
      sum += x * x;
    }
    for (int offset = 16; offset > 0; offset /= 2)
      sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) {
      const double norm = sqrt(sum);
      if (r < L.m)
        norms[batch * L.m + r] = norm;
      else
        norms[L.batches * L.m + batch * L.n + (r - L.m)] = norm;
    }
  }
}

// Grid-stride loop over [0, total).
#define MP_GRID_STRIDE(e, total)                                         \
  for (MP_INT64 e =                                                      \
           blockIdx.x * static_cast<MP_INT64>(blockDim.x) + threadIdx.x; \
       e < (total);                                                      \
       e += static_cast<MP_INT64>(gridDim.x) * blockDim.x)

// Operand a (its rows [row0, row0 + rows)) or b (all K rows) of the batches
// [batch0, batch0 + batch_count), converted to T and stored contiguously: per
// batch row-major (rows, cols), or with `transposed` row-major (cols, rows).
// The host picks the orientation whose reads follow the source's unit
// stride, so that reads and writes are both coalesced.
template <class T>
__global__ void pack_operand(
    const float* src,
    const AddmmLayout L,
    int operand_b,
    MP_INT64 batch0,
    int batch_count,
    int row0,
    int rows,
    int transposed,
    T* dst) {
  const int cols = operand_b ? L.n : L.k;
  const MP_INT64* batch_strides = operand_b ? L.b_batch : L.a_batch;
  const MP_INT64 row_stride = operand_b ? L.b_row : L.a_row;
  const MP_INT64 col_stride = operand_b ? L.b_col : L.a_col;
  const MP_INT64 per_batch = static_cast<MP_INT64>(rows) * cols;
  MP_GRID_STRIDE(e, per_batch * batch_count) {
    const MP_INT64 bb = e / per_batch;
    const MP_INT64 w = e - bb * per_batch;
    MP_INT64 r, c;
    if (transposed) {
      c = w / rows;
      r = w - c * rows;
    } else {
      r = w / cols;
      c = w - r * cols;
    }
    const float* base = src +
        strided_offset(batch0 + bb, L.batch_dims, L.batch_shape, batch_strides);
    dst[e] = static_cast<T>(base[(row0 + r) * row_stride + c * col_stride]);
  }
}

// out = scale * c broadcast over the output (+0 without c): the addend of
// the float32 product (scale 1; the library then scales it by beta), or the
// whole result when K = 0.
__global__ void
fill_from_c(const float* c, const AddmmLayout L, float scale, float* out) {
  const MP_INT64 per_batch = static_cast<MP_INT64>(L.m) * L.n;
  MP_GRID_STRIDE(e, per_batch * L.batches) {
    if (!L.has_c) {
      out[e] = 0.0f;
      continue;
    }
    const MP_INT64 batch = e / per_batch;
    const MP_INT64 w = e - batch * per_batch;
    const MP_INT64 i = w / L.n, j = w - i * L.n;
    out[e] = __fmul_rn(
        scale,
        c[strided_offset(batch, L.batch_dims, L.batch_shape, L.c_batch) +
          i * L.c_row + j * L.c_col]);
  }
}

// alpha * acc [+ beta * c] rounded to float32 in *out; true when certified
// correctly rounded against gamma_K a_norm b_norm (alpha * . and + beta * c
// round once each in double; see backend/cpu/strict_kernels.cpp
// certify_addmm).
__device__ __forceinline__ bool certify_entry(
    const AddmmLayout& L,
    double acc,
    float c,
    double a_norm,
    double b_norm,
    float* out) {
  constexpr double kBoundSlack = 1.0 + 1.0 / 1024.0;
  const double alpha = static_cast<double>(L.alpha);
  const double scaled = alpha * acc;
  double value = scaled;
  if (L.has_c)
    value = value + static_cast<double>(L.beta) * static_cast<double>(c);
  const double err =
      kBoundSlack * gamma_bound(L.k) * fabs(alpha) * a_norm * b_norm +
      kUnitRoundoff64 * (fabs(scaled) + fabs(value));
  return certified_round(value, err, out);
}

// Output e of a chunk of rows [row0, row0 + rows) of the batches from batch0
// (fewer than 2^31 outputs, checked on the host): its batch, row and column,
// and its c.
struct ChunkEntry {
  MP_INT64 batch, i, j;
  float c;
};
__device__ __forceinline__ ChunkEntry chunk_entry(
    const AddmmLayout& L,
    const float* c,
    MP_INT64 batch0,
    int row0,
    int rows,
    unsigned e) {
  const unsigned per_batch = static_cast<unsigned>(rows) * L.n;
  const unsigned w = e % per_batch;
  ChunkEntry t;
  t.batch = batch0 + e / per_batch;
  t.i = row0 + w / L.n;
  t.j = w % L.n;
  t.c = L.has_c
      ? c[strided_offset(t.batch, L.batch_dims, L.batch_shape, L.c_batch) +
          t.i * L.c_row + t.j * L.c_col]
      : 0.0f;
  return t;
}

// The CPU's exact recomputation (exact_addmm_entry) of one output, so the
// bits equal the CPU's.
__device__ __forceinline__ float exact_entry(
    const float* a,
    const float* b,
    const AddmmLayout& L,
    const ChunkEntry& t) {
  const float* a_row = a +
      strided_offset(t.batch, L.batch_dims, L.batch_shape, L.a_batch) +
      t.i * L.a_row;
  const float* b_col = b +
      strided_offset(t.batch, L.batch_dims, L.batch_shape, L.b_batch) +
      t.j * L.b_col;
  return exact_addmm_entry(
      StridedWide{a_row, L.a_col},
      StridedWide{b_col, L.b_row},
      L.k,
      L.alpha,
      L.has_c != 0,
      L.beta,
      t.c);
}

// The outputs of rows [row0, row0 + rows) of the batches [batch0, batch0 +
// batch_count) from the library's float64 product (contiguous (batch_count,
// rows, n); nullptr when K = 0, an empty sum). Outputs it cannot certify are
// listed in `pending` (up to `capacity`; *pending_count counts them all) for
// addmm_recompute, so that the long exact sums run in full warps instead of
// stalling a warp each; past the capacity they are recomputed here.
__global__ void addmm_certify(
    const double* product,
    const float* a,
    const float* b,
    const float* c,
    float* out,
    const AddmmLayout L,
    const double* norms,
    MP_INT64 batch0,
    int batch_count,
    int row0,
    int rows,
    unsigned* pending,
    unsigned capacity,
    unsigned* pending_count) {
  const unsigned total = static_cast<unsigned>(rows) * L.n * batch_count;
  for (unsigned e = blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += gridDim.x * blockDim.x) {
    const ChunkEntry t = chunk_entry(L, c, batch0, row0, rows, e);
    double s = product ? product[e] : 0.0;
    if (s == 0.0)
      s = 0.0; // +0, as the in-order sum started at +0 gives
    // Doubled bound (see above): twice the norms' product.
    float value;
    const bool certified = certify_entry(
        L,
        s,
        t.c,
        2.0 * norms[t.batch * L.m + t.i],
        norms[L.batches * L.m + t.batch * L.n + t.j],
        &value);
    if (!certified) {
      const unsigned slot = atomicAdd(pending_count, 1u);
      if (slot < capacity) {
        pending[slot] = e;
        continue;
      }
      value = exact_entry(a, b, L, t);
    }
    out[(t.batch * L.m + t.i) * L.n + t.j] = value;
  }
}

// The outputs addmm_certify listed, one thread each.
__global__ void addmm_recompute(
    const float* a,
    const float* b,
    const float* c,
    float* out,
    const AddmmLayout L,
    MP_INT64 batch0,
    int row0,
    int rows,
    const unsigned* pending,
    unsigned capacity,
    const unsigned* pending_count) {
  const unsigned count = min(*pending_count, capacity);
  for (unsigned p = blockIdx.x * blockDim.x + threadIdx.x; p < count;
       p += gridDim.x * blockDim.x) {
    const ChunkEntry t = chunk_entry(L, c, batch0, row0, rows, pending[p]);
    out[(t.batch * L.m + t.i) * L.n + t.j] = exact_entry(a, b, L, t);
  }
}
#undef MP_GRID_STRIDE

// ------------------------------------------------------------- layer_norm ----
// One warp per row. Lanes 0..7 of the warp run the CPU's kLayerNormLanes sums
// (lane l: elements l, l + 8, ... in order); every thread then combines them
// with the CPU's tree, so all 32 threads hold the CPU's statistics bit for bit
// and share the element-wise work.
constexpr int kRowsPerBlock = 8;
constexpr int kWarp = 32;

template <class T>
__device__ __forceinline__ LayerNormStats<T> warp_row_stats(
    const float* x,
    MP_INT64 stride,
    int dim,
    T eps,
    T* lanes,
    int lane) {
  const T zero = r_from_float(eps, 0.0f);
  const T count = r_from_float(eps, static_cast<float>(dim));
  if (lane < kLayerNormLanes) {
    T sum = zero;
    for (int i = lane; i < dim; i += kLayerNormLanes)
      sum = r_add(sum, r_from_float(eps, x[i * stride]));
    lanes[lane] = sum;
  }
  __syncwarp();
  const T shift = r_div(combine_lanes(lanes), count);
  __syncwarp();
  if (lane < kLayerNormLanes) {
    T dev = zero, sq = zero;
    for (int i = lane; i < dim; i += kLayerNormLanes)
      layer_norm_deviation_step(dev, sq, x[i * stride], shift);
    lanes[lane] = dev;
    lanes[kLayerNormLanes + lane] = sq;
  }
  __syncwarp();
  const LayerNormStats<T> s =
      layer_norm_finish(shift, lanes, lanes + kLayerNormLanes, count, eps);
  __syncwarp();
  return s;
}

// y (rows, dim) row-major.
template <class T>
__global__ void layer_norm_rows(
    const float* x,
    const RowsLayout xl,
    const float* weight,
    MP_INT64 weight_stride,
    const float* bias,
    MP_INT64 bias_stride,
    float* y,
    MP_INT64 rows,
    int dim,
    T eps) {
  __shared__ T lanes[kRowsPerBlock][2 * kLayerNormLanes];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  for (MP_INT64 r = static_cast<MP_INT64>(blockIdx.x) * kRowsPerBlock + warp;
       r < rows;
       r += static_cast<MP_INT64>(gridDim.x) * kRowsPerBlock) {
    const float* xr = x + row_start(xl, r);
    const LayerNormStats<T> s =
        warp_row_stats(xr, xl.element_stride, dim, eps, lanes[warp], lane);
    for (int i = lane; i < dim; i += kWarp) {
      y[r * dim + i] = layer_norm_output(
          s,
          xr[i * xl.element_stride],
          weight != nullptr,
          weight ? weight[i * weight_stride] : 0.0f,
          bias != nullptr,
          bias ? bias[i * bias_stride] : 0.0f);
    }
  }
}

// Per row: the statistics (kept for the weight / bias gradients when `stats`
// is given) and, when grad_x is given, grad x (row-major) as on the CPU:
// inv_std ((gw - mean gw) - n mean(gw n)), gw = g w exact.
template <class T>
__global__ void layer_norm_grad_rows(
    const float* x,
    const RowsLayout xl,
    const float* weight,
    MP_INT64 weight_stride,
    const float* g,
    const RowsLayout gl,
    float* grad_x,
    LayerNormStats<T>* stats,
    MP_INT64 rows,
    int dim,
    T eps) {
  __shared__ T lanes[kRowsPerBlock][2 * kLayerNormLanes];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const T zero = r_from_float(eps, 0.0f);
  const T count = r_from_float(eps, static_cast<float>(dim));
  for (MP_INT64 r = static_cast<MP_INT64>(blockIdx.x) * kRowsPerBlock + warp;
       r < rows;
       r += static_cast<MP_INT64>(gridDim.x) * kRowsPerBlock) {
    const float* xr = x + row_start(xl, r);
    const float* gr = g + row_start(gl, r);
    T* own = lanes[warp];
    const LayerNormStats<T> s =
        warp_row_stats(xr, xl.element_stride, dim, eps, own, lane);
    if (stats && lane == 0)
      stats[r] = s;
    if (grad_x == nullptr)
      continue;
    auto weighted = [&](int i) {
      const float gi = gr[i * gl.element_stride];
      return weight ? r_prod(eps, gi, weight[i * weight_stride])
                    : r_from_float(eps, gi);
    };
    if (lane < kLayerNormLanes) {
      T sum_gw = zero, sum_gwn = zero;
      for (int i = lane; i < dim; i += kLayerNormLanes) {
        const T gw = weighted(i);
        sum_gw = r_add(sum_gw, gw);
        sum_gwn = r_add(
            sum_gwn,
            r_mul(gw, layer_norm_normalized(s, xr[i * xl.element_stride])));
      }
      own[lane] = sum_gw;
      own[kLayerNormLanes + lane] = sum_gwn;
    }
    __syncwarp();
    const T mean_gw = r_div(combine_lanes(own), count);
    const T mean_gwn = r_div(combine_lanes(own + kLayerNormLanes), count);
    __syncwarp();
    for (int i = lane; i < dim; i += kWarp) {
      const T n = layer_norm_normalized(s, xr[i * xl.element_stride]);
      grad_x[r * dim + i] =
          layer_norm_grad_x(s, weighted(i), n, mean_gw, mean_gwn);
    }
  }
}

// grad weight = sum over rows of g n, grad bias = sum of g: one thread per
// column, rows in order 0, 1, ... as on the CPU.
template <class T>
__global__ void layer_norm_param_grads(
    const float* x,
    const RowsLayout xl,
    const float* g,
    const RowsLayout gl,
    const LayerNormStats<T>* stats,
    float* grad_weight,
    float* grad_bias,
    MP_INT64 rows,
    int dim,
    T eps) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= dim)
    return;
  const T zero = r_from_float(eps, 0.0f);
  T dw = zero, db = zero;
  for (MP_INT64 r = 0; r < rows; ++r) {
    const float gi = g[row_start(gl, r) + i * gl.element_stride];
    if (grad_weight) {
      const float xi = x[row_start(xl, r) + i * xl.element_stride];
      dw = r_add(
          dw,
          r_mul(r_from_float(eps, gi), layer_norm_normalized(stats[r], xi)));
    }
    if (grad_bias)
      db = r_add(db, r_from_float(eps, gi));
  }
  if (grad_weight)
    grad_weight[i] = r_round(dw);
  if (grad_bias)
    grad_bias[i] = r_round(db);
}

} // namespace mlx_precise::gpu
