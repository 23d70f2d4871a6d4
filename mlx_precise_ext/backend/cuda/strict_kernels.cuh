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
// Block tile kTile x kTile outputs, 16 x 16 threads, each thread kPerThread x
// kPerThread outputs (rows ty + 16 r, columns tx + 16 c); the K axis advances
// kTileK at a time through shared memory. Each output accumulates k = 0, 1,
// ..., K-1 in order, whatever the tiling.
constexpr int kTile = 64;
constexpr int kTileK = 16;
constexpr int kPerThread = 4;
constexpr int kTileThreads = 256;

// "dd": the double-word dot product of strict_arith.h, finished like the CPU.
struct DoubleWordDot {
  using Acc = ff;
  static __device__ __forceinline__ Acc zero() {
    return ff{0.0f, 0.0f};
  }
  static __device__ __forceinline__ Acc step(Acc acc, float a, float b) {
    return dd_dot_step(acc, a, b);
  }
};

// "extended": float64 accumulation (exact products, so the fused
// multiply-add rounds exactly as a product followed by an add would).
struct Float64Dot {
  using Acc = double;
  static __device__ __forceinline__ Acc zero() {
    return 0.0;
  }
  static __device__ __forceinline__ Acc step(Acc acc, float a, float b) {
    return fma(static_cast<double>(a), static_cast<double>(b), acc);
  }
};

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
__global__ void addmm_norms(
    const float* a,
    const float* b,
    const AddmmLayout L,
    double* norms) {
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

template <class Dot>
__device__ __forceinline__ float addmm_result(
    const AddmmLayout& L,
    typename Dot::Acc acc,
    float c,
    const float* a_row,
    const float* b_col,
    double a_norm,
    double b_norm);

template <>
__device__ __forceinline__ float addmm_result<DoubleWordDot>(
    const AddmmLayout& L,
    ff acc,
    float c,
    const float*,
    const float*,
    double,
    double) {
  return L.has_c ? dd_addmm_result(acc, L.alpha, L.beta, c)
                 : dd_scaled_result(acc, L.alpha);
}

// |fl64(A@B) - A@B| <= gamma_K ||a_i|| ||b_j|| (see
// backend/cpu/strict_kernels.cpp certify_addmm); alpha * . and + beta * c round
// once each in double.
template <>
__device__ __forceinline__ float addmm_result<Float64Dot>(
    const AddmmLayout& L,
    double acc,
    float c,
    const float* a_row,
    const float* b_col,
    double a_norm,
    double b_norm) {
  constexpr double kBoundSlack = 1.0 + 1.0 / 1024.0;
  const double alpha = static_cast<double>(L.alpha);
  const double scaled = alpha * acc;
  double value = scaled;
  if (L.has_c)
    value = value + static_cast<double>(L.beta) * static_cast<double>(c);
  const double err =
      kBoundSlack * gamma_bound(L.k) * fabs(alpha) * a_norm * b_norm +
      kUnitRoundoff64 * (fabs(scaled) + fabs(value));
  float out;
  if (certified_round(value, err, &out))
    return out;
  return exact_addmm_entry(
      StridedWide{a_row, L.a_col},
      StridedWide{b_col, L.b_row},
      L.k,
      L.alpha,
      L.has_c != 0,
      L.beta,
      c);
}

template <class Dot>
__global__ void __launch_bounds__(kTileThreads) addmm_tiles(
    const float* a,
    const float* b,
    const float* c,
    float* out,
    const AddmmLayout L,
    const double* norms) {
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
        const double a_norm = norms ? norms[batch * L.m + i] : 0.0;
        const double b_norm =
            norms ? norms[L.batches * L.m + batch * L.n + j] : 0.0;
        out[(batch * L.m + i) * L.n + j] = addmm_result<Dot>(
            L,
            acc[r][q],
            cv,
            ab + i * L.a_row,
            bb + j * L.b_col,
            a_norm,
            b_norm);
      }
    }
  }
}

// ------------------------------------------------- extended addmm, FP64 MMA
// ---- "extended" on sm_80+: the float64 product on the FP64 tensor cores
// (mma.sync m8n8k4 f64). Inputs are float32, so every product a_ik b_kj is
// exact in double; the accumulation is some order of K double additions. For
// ANY order of summing K exact products, |fl(sum) - sum| <= gamma_K sum|a_ik
// b_kj|
// <= gamma_K ||a_i|| ||b_j|| (Higham, Thm 4.1 / Cauchy-Schwarz), which is the
// bound the CPU certifies with; it holds as long as every addition rounds
// to nearest. The tensor cores' internal rounding of the four-term step is not
// documented in that detail, so the bound is doubled here: 2 gamma_K(u) times
// the 1 + 1/1024 slack exceeds gamma_K(2u), which covers any faithful (e.g.
// truncating) rounding of each addition, fused four-term steps included. A
// looser bound only sends more outputs to the exact recompute; every certified
// output is the correctly rounded float32, so the bits equal the CPU's either
// way. Block tile 64 x 64, 4 warps of 32 x 32 (4 x 4 mma tiles of 8 x 8), K by
// 16 through shared memory held as double (converted once per block).
constexpr int kMmaTile = 64;
constexpr int kMmaTileK = 16;
constexpr int kMmaThreads = 128;
constexpr int kMmaLd =
    kMmaTile + 4; // 68 doubles: fragment loads bank-conflict free

__device__ __forceinline__ void dmma_8x8x4(double (&d)[2], double a, double b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0, %1}, {%2}, {%3}, {%0, %1};"
      : "+d"(d[0]), "+d"(d[1])
      : "d"(a), "d"(b));
#else
  __trap(); // never launched below sm_80 (strict_ops.cpp checks the device)
#endif
}

__global__ void __launch_bounds__(kMmaThreads) addmm_dmma(
    const float* a,
    const float* b,
    const float* c,
    float* out,
    const AddmmLayout L,
    const double* norms) {
  __shared__ double a_s[kMmaTileK][kMmaLd];
  __shared__ double b_s[kMmaTileK][kMmaLd];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const int group = lane >> 2, quad = lane & 3;
  const int i0 = blockIdx.y * kMmaTile, j0 = blockIdx.x * kMmaTile;
  const bool a_k_contiguous =
      L.a_col == 1; // consecutive threads read consecutive addresses
  const bool b_n_contiguous = L.b_col == 1;
  for (MP_INT64 batch = blockIdx.z; batch < L.batches; batch += gridDim.z) {
    const float* ab =
        a + strided_offset(batch, L.batch_dims, L.batch_shape, L.a_batch);
    const float* bb =
        b + strided_offset(batch, L.batch_dims, L.batch_shape, L.b_batch);
    double acc[4][4][2];
    for (int mi = 0; mi < 4; ++mi)
      for (int ni = 0; ni < 4; ++ni)
        acc[mi][ni][0] = acc[mi][ni][1] = 0.0;
    for (int k0 = 0; k0 < L.k; k0 += kMmaTileK) {
#pragma unroll
      for (int e = threadIdx.x; e < kMmaTile * kMmaTileK; e += kMmaThreads) {
        int r, kk;
        if (a_k_contiguous) {
          r = e / kMmaTileK;
          kk = e % kMmaTileK;
        } else {
          kk = e / kMmaTile;
          r = e % kMmaTile;
        }
        a_s[kk][r] = (i0 + r < L.m && k0 + kk < L.k)
            ? static_cast<double>(ab[(i0 + r) * L.a_row + (k0 + kk) * L.a_col])
            : 0.0;
        int q, kb;
        if (b_n_contiguous) {
          kb = e / kMmaTile;
          q = e % kMmaTile;
        } else {
          q = e / kMmaTileK;
          kb = e % kMmaTileK;
        }
        b_s[kb][q] = (j0 + q < L.n && k0 + kb < L.k)
            ? static_cast<double>(bb[(k0 + kb) * L.b_row + (j0 + q) * L.b_col])
            : 0.0;
      }
      __syncthreads();
      // Padded k add exact zero products: they change no nonzero sum, and a
      // zero result is normalised to +0 below (as the in-order sum from +0).
#pragma unroll
      for (int ks = 0; ks < kMmaTileK; ks += 4) {
        double af[4], bf[4];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
          af[mi] = a_s[ks + quad][wm + mi * 8 + group];
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
          bf[ni] = b_s[ks + quad][wn + ni * 8 + group];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
          for (int ni = 0; ni < 4; ++ni)
            dmma_8x8x4(acc[mi][ni], af[mi], bf[ni]);
      }
      __syncthreads();
    }
    const float* cb = L.has_c
        ? c + strided_offset(batch, L.batch_dims, L.batch_shape, L.c_batch)
        : nullptr;
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
      const int i = i0 + wm + mi * 8 + group;
      if (i >= L.m)
        continue;
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
#pragma unroll
        for (int t = 0; t < 2; ++t) {
          const int j = j0 + wn + ni * 8 + quad * 2 + t;
          if (j >= L.n)
            continue;
          double s = acc[mi][ni][t];
          if (s == 0.0)
            s = 0.0; // +0, as the in-order sum started at +0 gives
          const float cv = L.has_c ? cb[i * L.c_row + j * L.c_col] : 0.0f;
          const double a_norm = norms[batch * L.m + i];
          const double b_norm = norms[L.batches * L.m + batch * L.n + j];
          // Doubled bound (see above): twice the norms' product.
          out[(batch * L.m + i) * L.n + j] = addmm_result<Float64Dot>(
              L,
              s,
              cv,
              ab + i * L.a_row,
              bb + j * L.b_col,
              2.0 * a_norm,
              b_norm);
        }
      }
    }
  }
}

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
