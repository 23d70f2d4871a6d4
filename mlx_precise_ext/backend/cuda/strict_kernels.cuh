// CUDA kernels of the strict addmm / linear / layer_norm, compiled at run time
// by NVRTC (jit.cpp) together with the shared kernel headers. "extended" and
// "dd" are one computation here, as on the CPU (README, "The dd contract"):
// addmm is certified correctly rounded, so its bits equal the CPU's; the
// layer_norm kernels do the CPU's float64 operations in the CPU's order
// (kernels/strict_arith.h).
namespace mlx_precise {
// NVRTC has no <cstdint>; the shared headers name int64_t.
using int64_t = long long;
} // namespace mlx_precise
#include "device_utils.cuh"
#include "layer_norm_certify.h"
#include "strict_params.h"

namespace mlx_precise::gpu {

// --------------------------------------------------------------- addmm ----
// The float64 product comes from cuBLAS (DGEMM on the FP64 tensor cores,
// strict_ops.cpp) over operands widened by pack_operand; addmm_certify then
// certifies each output and marks the others, which addmm_recompute
// recomputes exactly.
//
// Inputs are float32, so every product a_ik b_kj is exact in double; the
// library's sum is some order of K double additions (blocked, split over K,
// fused tensor-core product-accumulate steps). For ANY order of summing K
// exact products in which every operation rounds to nearest, |fl(sum) - sum|
// <= gamma_K sum|a_ik b_kj| <= gamma_K ||a_i|| ||b_j|| (Higham, Thm 4.1 /
// Cauchy-Schwarz), the bound the CPU certifies with. NVIDIA documents the FP64
// tensor-core instructions (DMMA) as IEEE-compliant, with PTX's round-to-
// nearest-even modifier: each step rounds once to nearest, so the GPU uses the
// CPU's bound (docs/certification.md, "addmm on the FP64 tensor cores").
// Every certified output is the correctly rounded float32, so the bits equal
// the CPU's.

// The operands of one chunk widened to double, K-contiguous, for the GEMM
// (a: (batch_count, rows, K), b: (batch_count, N, K)) and for addmm_recompute,
// whose warps read an output's row of a and column of b along K. Also the
// 2-norm of every row of a and column of b of the chunk for the error bound,
// and (when words > 0) the open-output bitmap zeroed (addmm_recompute leaves it
// zero for the next chunk). A block packs kPackTile vectors (rows of a, columns
// of b) of one batch: blocks [0, batch_count * ceil(rows / kPackTile)) take a,
// any further blocks b (the host launches them with a chunk's first rows).
// Eight warps, warp w holding vectors w, w + 8, w + 16, w + 24 of the tile,
// lanes along K; an operand whose K stride is not 1 is read through a
// shared-memory tile along its vectors (coalesced when their stride is 1, b
// row-major), else directly, 16 bytes per lane where aligned. The squares are
// summed in double in another order than the CPU's 8 lanes; the norms' own
// rounding (relative error below (K/32 + 6) u) is covered many times over by
// the bound's 1 + 1/1024 slack, so the certification stays valid in any order.
// norms: batches * m row norms of a, then batches * n column norms of b.
__global__ void addmm_pack_wide(
    const float* a,
    const float* b,
    const AddmmLayout L,
    MP_INT64 batch0,
    int batch_count,
    int row0,
    int rows,
    double* a_wide,
    double* b_wide,
    double* norms,
    unsigned* open_bits,
    MP_INT64 words) {
  MP_GRID_STRIDE(w, words) {
    open_bits[w] = 0u;
  }
  const int a_tiles = (rows + kPackTile - 1) / kPackTile;
  const int b_tiles = (L.n + kPackTile - 1) / kPackTile;
  int tile = blockIdx.x;
  const bool is_b = tile >= batch_count * a_tiles;
  if (is_b)
    tile -= batch_count * a_tiles;
  const int per_batch = is_b ? b_tiles : a_tiles;
  const int chunk_batch = tile / per_batch;
  const int first = (tile - chunk_batch * per_batch) * kPackTile;
  const MP_INT64 batch = batch0 + chunk_batch;
  // Vector v (of the chunk's vectors [0, count)) starts at src + v *
  // v_stride, element p of K lies p * k_stride further.
  const int count = is_b ? L.n : rows;
  const MP_INT64 v_stride = is_b ? L.b_col : L.a_row;
  const MP_INT64 k_stride = is_b ? L.b_row : L.a_col;
  const float* src = is_b
      ? b + strided_offset(batch, L.batch_dims, L.batch_shape, L.b_batch)
      : a + strided_offset(batch, L.batch_dims, L.batch_shape, L.a_batch) +
          row0 * L.a_row;
  double* dst = (is_b ? b_wide : a_wide) +
      (static_cast<MP_INT64>(chunk_batch) * count + first) * L.k;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  constexpr int kVectorsPerWarp = kPackTile / 8;
  double squares[kVectorsPerWarp] = {};
  auto store = [&](int r, int p, float x) {
    const double wide = static_cast<double>(x);
    dst[static_cast<MP_INT64>(warp + 8 * r) * L.k + p] = wide;
    squares[r] += wide * wide;
  };
  if (k_stride == 1) {
    const float* vec[kVectorsPerWarp];
    bool valid[kVectorsPerWarp];
#pragma unroll
    for (int r = 0; r < kVectorsPerWarp; ++r) {
      valid[r] = first + warp + 8 * r < count;
      vec[r] = src + (first + warp + 8 * r) * v_stride;
    }
    // 16-byte loads when every vector of the block starts 16-byte aligned.
    const bool quads = L.k % 4 == 0 && v_stride % 4 == 0 &&
        (reinterpret_cast<unsigned long long>(src) & 15u) == 0;
    if (quads) {
      // Two 16-byte loads per vector in flight, eight per thread.
      constexpr int kSteps = 2;
      for (int p0 = 4 * lane; p0 < L.k; p0 += kSteps * 4 * 32) {
        float4 x[kVectorsPerWarp][kSteps];
#pragma unroll
        for (int r = 0; r < kVectorsPerWarp; ++r)
#pragma unroll
          for (int t = 0; t < kSteps; ++t)
            if (valid[r] && p0 + t * 4 * 32 < L.k)
              x[r][t] =
                  *reinterpret_cast<const float4*>(vec[r] + p0 + t * 4 * 32);
#pragma unroll
        for (int r = 0; r < kVectorsPerWarp; ++r) {
#pragma unroll
          for (int t = 0; t < kSteps; ++t) {
            const int p = p0 + t * 4 * 32;
            if (!valid[r] || p >= L.k)
              continue;
            double* d = dst + static_cast<MP_INT64>(warp + 8 * r) * L.k + p;
            const double2 lo = make_double2(x[r][t].x, x[r][t].y);
            const double2 hi = make_double2(x[r][t].z, x[r][t].w);
            *reinterpret_cast<double2*>(d) = lo;
            *reinterpret_cast<double2*>(d + 2) = hi;
            squares[r] += lo.x * lo.x + lo.y * lo.y + hi.x * hi.x + hi.y * hi.y;
          }
        }
      }
    } else {
      for (int p = lane; p < L.k; p += 32) {
        float x[kVectorsPerWarp];
#pragma unroll
        for (int r = 0; r < kVectorsPerWarp; ++r)
          x[r] = valid[r] ? vec[r][p] : 0.0f;
#pragma unroll
        for (int r = 0; r < kVectorsPerWarp; ++r)
          if (valid[r])
            store(r, p, x[r]);
      }
    }
  } else {
    // tile[p][v]: the block's vectors' elements p0 .. p0 + 127, loaded with
    // the lanes along the vectors (16 loads in flight per thread), stored
    // with the lanes along K (the row padding keeps both bank-conflict free).
    constexpr int kRows = 128;
    __shared__ float tile[kRows][kPackTile + 1];
    for (int p0 = 0; p0 < L.k; p0 += kRows) {
      const int v = first + lane;
      float x[kRows / 8];
#pragma unroll
      for (int r = 0; r < kRows / 8; ++r) {
        const int p = p0 + warp + 8 * r;
        x[r] = v < count && p < L.k
            ? src[v * v_stride + static_cast<MP_INT64>(p) * k_stride]
            : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kRows / 8; ++r)
        tile[warp + 8 * r][lane] = x[r];
      __syncthreads();
#pragma unroll
      for (int q = 0; q < kRows; q += 32) {
        const int p = p0 + q + lane;
#pragma unroll
        for (int r = 0; r < kVectorsPerWarp; ++r)
          if (first + warp + 8 * r < count && p < L.k)
            store(r, p, tile[q + lane][warp + 8 * r]);
      }
      __syncthreads();
    }
  }
  double* norm_base =
      is_b ? norms + L.batches * L.m + batch * L.n : norms + batch * L.m + row0;
#pragma unroll
  for (int r = 0; r < kVectorsPerWarp; ++r) {
    const double sum = warp_sum(squares[r]);
    if (lane == 0 && first + warp + 8 * r < count)
      norm_base[first + warp + 8 * r] = sqrt(sum);
  }
}

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
// whole result when K = 0. A block per output row (grid-stride over the
// batches * m rows), its threads along the row: the row's offset into c is
// found once, and the writes (and c's reads along a unit stride) coalesce.
__global__ void
fill_from_c(const float* c, const AddmmLayout L, float scale, float* out) {
  const MP_INT64 rows = L.batches * L.m;
  for (MP_INT64 row = blockIdx.x; row < rows; row += gridDim.x) {
    float* out_row = out + row * L.n;
    if (!L.has_c) {
      for (int j = threadIdx.x; j < L.n; j += blockDim.x)
        out_row[j] = 0.0f;
      continue;
    }
    const MP_INT64 batch = row / L.m;
    const float* c_row = c +
        strided_offset(batch, L.batch_dims, L.batch_shape, L.c_batch) +
        (row - batch * L.m) * L.c_row;
    for (int j = threadIdx.x; j < L.n; j += blockDim.x)
      out_row[j] = __fmul_rn(scale, c_row[j * L.c_col]);
  }
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

// alpha * sum [+ beta * c] (alpha * . and + beta * c rounding once each in
// double) rounded to float32 in *out; true when certified correctly rounded,
// |sum - exact| <= sum_err (backend/cpu/strict_kernels.cpp certify_addmm,
// running_addmm_entry).
__device__ __forceinline__ bool certify_entry(
    const AddmmLayout& L,
    double sum,
    double sum_err,
    float c,
    float* out) {
  const double alpha = static_cast<double>(L.alpha);
  const double scaled = alpha * sum;
  double value = scaled;
  if (L.has_c)
    value = value + static_cast<double>(L.beta) * static_cast<double>(c);
  const double err =
      fabs(alpha) * sum_err + kUnitRoundoff64 * (fabs(scaled) + fabs(value));
  return certified_round(value, err, out);
}

// The outputs of rows [row0, row0 + rows) of the batches [batch0, batch0 +
// batch_count) from the library's float64 product (contiguous (batch_count,
// rows, n); nullptr when K = 0, an empty sum). Outputs it cannot certify are
// marked in open_bits (bit e of the chunk) for addmm_recompute. The chunk's
// outputs are one contiguous range of out, as the product is of its buffer:
// a thread takes eight consecutive outputs (four 16-byte loads of the product
// in flight, two 16-byte stores where out is aligned) and finds their row and
// column with one pair of divisions, so that the pass runs at memory speed.
__global__ void addmm_certify(
    const double* product,
    const float* c,
    float* out,
    const AddmmLayout L,
    const double* norms,
    MP_INT64 batch0,
    int batch_count,
    int row0,
    int rows,
    unsigned* open_bits) {
  constexpr double kBoundSlack = 1.0 + 1.0 / 1024.0;
  constexpr unsigned kGroup = 8;
  const double bound = kBoundSlack * gamma_bound(L.k);
  const unsigned per_batch = static_cast<unsigned>(rows) * L.n;
  const unsigned total = per_batch * batch_count;
  float* chunk_out = out + (batch0 * L.m + row0) * L.n;
  const double* column_norms = norms + L.batches * L.m;
  for (unsigned e0 = kGroup * (blockIdx.x * blockDim.x + threadIdx.x);
       e0 < total;
       e0 += kGroup * gridDim.x * blockDim.x) {
    const unsigned count = min(kGroup, total - e0);
    unsigned chunk_batch = e0 / per_batch;
    const unsigned w = e0 - chunk_batch * per_batch;
    int i = static_cast<int>(w / L.n);
    int j = static_cast<int>(w - static_cast<unsigned>(i) * L.n);
    double sums[kGroup] = {};
    if (product && count == kGroup) {
#pragma unroll
      for (unsigned u = 0; u < kGroup; u += 2) {
        const double2 pair =
            *reinterpret_cast<const double2*>(product + e0 + u);
        sums[u] = pair.x;
        sums[u + 1] = pair.y;
      }
    } else if (product) {
      for (unsigned u = 0; u < count; ++u)
        sums[u] = product[e0 + u];
    }
    MP_INT64 batch = -1, c_base = 0;
    float values[kGroup];
    unsigned open = 0u;
#pragma unroll
    for (unsigned u = 0; u < kGroup; ++u) {
      if (u >= count)
        break;
      if (batch != batch0 + chunk_batch) {
        batch = batch0 + chunk_batch;
        c_base = L.has_c
            ? strided_offset(batch, L.batch_dims, L.batch_shape, L.c_batch)
            : 0;
      }
      const MP_INT64 row = row0 + i;
      const float cv = L.has_c ? c[c_base + row * L.c_row + j * L.c_col] : 0.0f;
      // +0 for an exact zero, as the in-order sum started at +0 gives.
      const double s = sums[u] == 0.0 ? 0.0 : sums[u];
      const double err =
          bound * norms[batch * L.m + row] * column_norms[batch * L.n + j];
      if (!certify_entry(L, s, err, cv, &values[u]))
        open |= 1u << u;
      if (++j == L.n) {
        j = 0;
        if (++i == rows) {
          i = 0;
          ++chunk_batch;
        }
      }
    }
    float* o = chunk_out + e0;
    if (count == kGroup && (reinterpret_cast<unsigned long long>(o) & 15u) == 0)
#pragma unroll
      for (unsigned u = 0; u < kGroup; u += 4)
        *reinterpret_cast<float4*>(o + u) =
            make_float4(values[u], values[u + 1], values[u + 2], values[u + 3]);
    else
      for (unsigned u = 0; u < count; ++u)
        o[u] = values[u];
    // The group's outputs share a bitmap word (kGroup divides 32).
    if (open != 0u)
      atomicOr(open_bits + (e0 >> 5), open << (e0 & 31));
  }
}

// The correctly rounded output t from its row x of a and column y of b (K
// float32 values each, held as doubles), a warp per output (the CPU's
// exact_addmm_entry, with K split over the lanes: lane l takes k = l, l + 32,
// ...). First the products summed in double with the running error bound
// (each addition errs by at most u |its result|: the lanes' partial sums and
// the shuffle tree's sums all count), certified; what that cannot decide, an
// ExactSum per lane, their digits added over the warp (exact, so any split
// gives the same sum), scaled by alpha, + beta * c, rounded once. Every lane
// ends with the same value, so the branches are uniform.
__device__ float warp_exact_addmm_entry(
    const double* x,
    const double* y,
    const AddmmLayout& L,
    const ChunkEntry& t,
    int lane) {
  double sum = 0.0, mass = 0.0;
  auto add = [&](double xp, double yp) {
    sum += xp * yp;
    mass += fabs(sum);
  };
  // The lane's products in order, loaded kLoadsInFlight at a time: a warp
  // waits on memory once per batch of loads, not once per product.
  constexpr int kLoadsInFlight = 8;
  MP_INT64 p = lane;
  for (; p + 32 * (kLoadsInFlight - 1) < L.k; p += 32 * kLoadsInFlight) {
    double xs[kLoadsInFlight], ys[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      xs[u] = x[p + 32 * u];
      ys[u] = y[p + 32 * u];
    }
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u)
      add(xs[u], ys[u]);
  }
  for (; p < L.k; p += 32)
    add(x[p], y[p]);
  warp_running_sum(sum, mass);
  float value;
  if (certify_entry(
          L, sum, kUnitRoundoff64 * (1.0 + 1.0 / 1024.0) * mass, t.c, &value))
    return value;
  ExactSum s;
  exact_sum_init(s);
  for (MP_INT64 p = lane; p < L.k; p += 32)
    exact_sum_add_product(
        s, static_cast<float>(x[p]), static_cast<float>(y[p]));
  exact_sum_carry(s);
  // (One limb at a time: unrolled, the 28 limbs' shuffles held 160 registers.)
#pragma unroll 1
  for (int i = 0; i < kExactLimbs; ++i)
    s.limb[i] = warp_sum(s.limb[i]);
  // The terms with an Inf or NaN factor: their IEEE sum is Inf, -Inf or NaN
  // in any order.
  for (int offset = 16; offset > 0; offset /= 2)
    s.special =
        MP_ADDF(s.special, __shfl_xor_sync(0xffffffffu, s.special, offset));
  exact_sum_scale(s, L.alpha);
  if (L.has_c)
    exact_sum_add_product(s, L.beta, t.c);
  return exact_sum_round(s);
}

// The outputs addmm_certify marked, a warp per output: the lanes read 32 words
// of the bitmap at a time (zeroing them for the next chunk) and visit the
// marked outputs of the nonzero ones together, reading the output's row of a
// and column of b from the chunk's K-contiguous packs (addmm_pack_wide: the
// float32 inputs exactly, so a warp's reads coalesce whatever the operands'
// strides).
__global__ void addmm_recompute(
    const double* a_wide,
    const double* b_wide,
    const float* c,
    float* out,
    const AddmmLayout L,
    MP_INT64 batch0,
    int row0,
    int rows,
    unsigned* open_bits,
    MP_INT64 words) {
  const int lane = threadIdx.x % 32;
  const MP_INT64 warp =
      (static_cast<MP_INT64>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const MP_INT64 warps = static_cast<MP_INT64>(gridDim.x) * blockDim.x / 32;
  for (MP_INT64 base = warp * 32; base < words; base += warps * 32) {
    const unsigned mine = base + lane < words ? open_bits[base + lane] : 0u;
    if (mine != 0u)
      open_bits[base + lane] = 0u;
    for (unsigned nonzero = __ballot_sync(0xffffffffu, mine != 0u);
         nonzero != 0u;
         nonzero &= nonzero - 1u) {
      const int source = __ffs(nonzero) - 1;
      const unsigned w = static_cast<unsigned>(base + source);
      for (unsigned word = __shfl_sync(0xffffffffu, mine, source); word != 0u;
           word &= word - 1u) {
        const ChunkEntry t =
            chunk_entry(L, c, batch0, row0, rows, w * 32 + (__ffs(word) - 1));
        const MP_INT64 chunk_batch = t.batch - batch0;
        const float v = warp_exact_addmm_entry(
            a_wide + (chunk_batch * rows + (t.i - row0)) * L.k,
            b_wide + (chunk_batch * L.n + t.j) * L.k,
            L,
            t,
            lane);
        if (lane == 0)
          out[(t.batch * L.m + t.i) * L.n + t.j] = v;
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

// Outputs per word of the open-output bitmap: a row of dim outputs has
// (dim + 31) / 32 words, bit l of word k standing for output 32 k + l.
__device__ __forceinline__ MP_INT64 open_words_per_row(int dim) {
  return (dim + 31) / 32;
}

// row(r) for each row r of this warp: one warp per row, kRowsPerBlock warps
// per block, the grid striding over the rows.
template <class RowFn>
__device__ __forceinline__ void for_each_warp_row(MP_INT64 rows, RowFn&& row) {
  for (MP_INT64 r = static_cast<MP_INT64>(blockIdx.x) * kRowsPerBlock +
           threadIdx.x / kWarp;
       r < rows;
       r += static_cast<MP_INT64>(gridDim.x) * kRowsPerBlock)
    row(r);
}

// Writes a row's open-output bitmap (row_bits, open_words_per_row(dim)
// words): output(i) for each output i of the row, lane l taking outputs l,
// l + 32, ..., returns whether i is open.
template <class OutputFn>
__device__ __forceinline__ void
mark_open_outputs(unsigned* row_bits, int dim, int lane, OutputFn&& output) {
  const MP_INT64 words = open_words_per_row(dim);
  for (MP_INT64 word = 0; word < words; ++word) {
    const int i = static_cast<int>(word * kWarp) + lane;
    const bool open = i < dim && output(i);
    const unsigned marked = __ballot_sync(0xffffffffu, open);
    if (lane == 0)
      row_bits[word] = marked;
  }
}

// output(i) for each output i of a row marked in its bitmap row_bits, lane l
// taking outputs l, l + 32, ...
template <class OutputFn>
__device__ __forceinline__ void for_each_marked_output(
    const unsigned* row_bits,
    int dim,
    int lane,
    OutputFn&& output) {
  const MP_INT64 words = open_words_per_row(dim);
  for (MP_INT64 k = 0; k < words; ++k) {
    if (((row_bits[k] >> lane) & 1u) != 0u)
      output(static_cast<int>(k * kWarp) + lane);
  }
}

// y (rows, dim) row-major, each output certified (kernels/
// layer_norm_certify.h, step 1) against the bound of the warp's row; the open
// ones are marked in open_bits for layer_norm_recompute. Rows with a
// non-finite x keep the float64 values, as on the CPU.
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
    T eps,
    unsigned* open_bits) {
  __shared__ T lanes[kRowsPerBlock][2 * kLayerNormLanes];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const MP_INT64 words = open_words_per_row(dim);
  for_each_warp_row(rows, [&](MP_INT64 r) {
    const float* xr = x + row_start(xl, r);
    const MP_INT64 stride = xl.element_stride;
    const LayerNormStats<T> s =
        warp_row_stats(xr, stride, dim, eps, lanes[warp], lane);
    // The bound's sums (any order) and the row's finiteness.
    double a1 = 0.0, m2 = 0.0;
    bool finite = true;
    for (int i = lane; i < dim; i += kWarp) {
      const float xi = xr[i * stride];
      finite = finite && is_finite_bits(MP_FLOAT_BITS(xi));
      const double d = static_cast<double>(xi) - s.shift;
      a1 += fabs(d);
      m2 += d * d;
    }
    finite = __all_sync(0xffffffffu, finite);
    const LayerNormErrors e = layer_norm_errors(
        warp_sum(a1), warp_sum(m2), dim, s.correction, s.inv_std);
    mark_open_outputs(open_bits + r * words, dim, lane, [&](int i) {
      const LayerNormTerms t = layer_norm_terms(
          s,
          xr[i * stride],
          weight != nullptr,
          weight ? weight[i * weight_stride] : 1.0f,
          bias != nullptr,
          bias ? bias[i * bias_stride] : 0.0f);
      y[r * dim + i] = r_round(t.v);
      return finite && layer_norm_open(e, s.inv_std, t);
    });
  });
}

// Element i of a strided row.
struct StridedRow {
  const float* x;
  MP_INT64 stride;
  __device__ float operator()(MP_INT64 i) const {
    return x[i * stride];
  }
};

// Step 2's statistics of a row over the warp, out of line (as exact_output):
// the exact row sum (an ExactSum per lane, their digits added over the warp)
// into `sum`, the double-word mean and the sum of squares about it (lanes,
// then the warp).
__device__ __noinline__ LayerNormWideStats
warp_wide_stats(StridedRow x, int dim, double eps, int lane, ExactSum& sum) {
  exact_sum_init(sum);
  for (int i = lane; i < dim; i += kWarp)
    exact_sum_add_product(sum, x(i), 1.0f);
  exact_sum_carry(sum);
#pragma unroll 1
  for (int l = 0; l < kExactLimbs; ++l)
    sum.limb[l] = warp_sum(sum.limb[l]);
  const dword mean = layer_norm_wide_mean(sum, dim);
  dword squares{0.0, 0.0};
  for (int i = lane; i < dim; i += kWarp)
    squares = layer_norm_wide_square(squares, x(i), mean);
  for (int offset = 16; offset > 0; offset /= 2)
    squares = dw_add(
        squares,
        dword{
            __shfl_xor_sync(0xffffffffu, squares.hi, offset),
            __shfl_xor_sync(0xffffffffu, squares.lo, offset)});
  return layer_norm_wide_stats(mean, squares, dim, eps);
}

// Step 3 for output i, out of line (its big integers would otherwise crowd
// the recompute loop's registers): the row's exact statistics on first use
// (row.dim = 0 until then), then the exact rounding from the guess *out.
// False for eps = 0 on a constant row (0 / 0: the float64 value stays).
__device__ __noinline__ bool exact_output(
    ExactLayerNormRow<kBigLimbs>& row,
    StridedRow x,
    int dim,
    double eps,
    int i,
    float w,
    float b,
    float* out) {
  if (row.dim == 0)
    row = exact_layer_norm_row<kBigLimbs>(x, dim, eps);
  if (row.radicand.size == 0)
    return false;
  *out = exact_layer_norm_output(row, x(i), w, b, *out);
  return true;
}

// The outputs layer_norm_rows marked (steps 2 and 3 of kernels/
// layer_norm_certify.h), one warp per row with any: the double-word
// statistics (warp_wide_stats), then each lane its marked outputs; the exact
// statistics only in a lane that needs them. (T is
// double, as for layer_norm_rows: the two share their launch.)
template <class T>
__global__ void layer_norm_recompute(
    const float* x,
    const RowsLayout xl,
    const float* weight,
    MP_INT64 weight_stride,
    const float* bias,
    MP_INT64 bias_stride,
    float* y,
    MP_INT64 rows,
    int dim,
    T eps,
    const unsigned* open_bits) {
  const int lane = threadIdx.x % kWarp;
  const MP_INT64 words = open_words_per_row(dim);
  for_each_warp_row(rows, [&](MP_INT64 r) {
    const unsigned* marks = open_bits + r * words;
    bool any = false;
    for (MP_INT64 k = lane; k < words; k += kWarp)
      any = any || marks[k] != 0u;
    if (!__any_sync(0xffffffffu, any))
      return;
    const StridedRow xr{x + row_start(xl, r), xl.element_stride};
    ExactSum sum;
    const LayerNormWideStats s = warp_wide_stats(xr, dim, eps, lane, sum);
    ExactLayerNormRow<kBigLimbs> exact_row;
    exact_row.dim = 0; // not computed yet
    for_each_marked_output(marks, dim, lane, [&](int i) {
      const float w = weight ? weight[i * weight_stride] : 1.0f;
      const float b = bias ? bias[i * bias_stride] : -0.0f;
      float out;
      if (!layer_norm_wide_output(s, sum, dim, xr(i), w, b, &out)) {
        if (!exact_output(exact_row, xr, dim, eps, i, w, b, &out))
          return;
      }
      y[r * dim + i] = out;
    });
  });
}

// Per row: the statistics (kept for the weight / bias gradients when `stats`
// is given) and, when grad_x is given, grad x (row-major) as on the CPU:
// inv_std ((gw - mean gw) - n mean(gw n)), gw = g w exact, certified as on
// the CPU, the open outputs marked in open_bits (as layer_norm_rows does) for
// layer_norm_grad_x_recompute. Rows with a non-finite x, g or weight keep the
// float64 values.
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
    NormalizedBound* bounds,
    MP_INT64 rows,
    int dim,
    T eps,
    unsigned* open_bits) {
  __shared__ T lanes[kRowsPerBlock][2 * kLayerNormLanes];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const T zero = r_from_float(eps, 0.0f);
  const T count = r_from_float(eps, static_cast<float>(dim));
  for_each_warp_row(rows, [&](MP_INT64 r) {
    const float* xr = x + row_start(xl, r);
    const float* gr = g + row_start(gl, r);
    T* own = lanes[warp];
    const LayerNormStats<T> s =
        warp_row_stats(xr, xl.element_stride, dim, eps, own, lane);
    if (stats && lane == 0)
      stats[r] = s;
    // The bound of s (kernels/layer_norm_certify.h): the row's sums over the
    // lanes, then the warp.
    double a1 = 0.0, m2 = 0.0;
    for (int i = lane; i < dim; i += kWarp) {
      const double d = static_cast<double>(xr[i * xl.element_stride]) - s.shift;
      a1 += fabs(d);
      m2 += d * d;
    }
    const LayerNormErrors e = layer_norm_errors(
        warp_sum(a1), warp_sum(m2), dim, s.correction, s.inv_std);
    const NormalizedBound nb =
        layer_norm_normalized_bound(e, s.inv_std, s.correction);
    if (bounds && lane == 0)
      bounds[r] = nb;
    if (grad_x == nullptr)
      return;
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
    double abs_gw = 0.0, abs_gwn = 0.0;
    bool finite = true;
    for (int i = lane; i < dim; i += kWarp) {
      finite = finite &&
          is_finite_bits(MP_FLOAT_BITS(xr[i * xl.element_stride])) &&
          is_finite_bits(MP_FLOAT_BITS(gr[i * gl.element_stride])) &&
          (weight == nullptr ||
           is_finite_bits(MP_FLOAT_BITS(weight[i * weight_stride])));
      const T gw = weighted(i);
      abs_gw += fabs(gw);
      abs_gwn += fabs(gw * layer_norm_normalized(s, xr[i * xl.element_stride]));
    }
    finite = __all_sync(0xffffffffu, finite);
    const GradXErrors ge = grad_x_errors(
        dim, warp_sum(abs_gw), warp_sum(abs_gwn), nb, mean_gw, mean_gwn);
    mark_open_outputs(
        open_bits + r * open_words_per_row(dim), dim, lane, [&](int i) {
          const T gw = weighted(i);
          const T n = layer_norm_normalized(s, xr[i * xl.element_stride]);
          float value;
          bool open = false;
          if (finite)
            open = grad_x_open(
                e, nb, ge, s.inv_std, gw, n, mean_gw, mean_gwn, &value);
          else
            value = layer_norm_grad_x(s, gw, n, mean_gw, mean_gwn);
          grad_x[r * dim + i] = value;
          return open;
        });
  });
}

// grad x for output i of a row, out of line (as exact_output): the
// double-word stage, then the exact one, each row's state built on first use
// (wide_ready, row.row.dim = 0 until then). False for eps = 0 on a constant
// row (the float64 value stays).
__device__ __noinline__ bool recompute_grad_x(
    GradXWide& wide,
    bool& wide_ready,
    ExactGradXRow& row,
    StridedRow x,
    StridedRow g,
    const float* weight,
    MP_INT64 weight_stride,
    int dim,
    double eps,
    int i,
    float* out) {
  const auto w = [&](MP_INT64 j) {
    return weight ? weight[j * weight_stride] : 1.0f;
  };
  if (!wide_ready) {
    wide = grad_x_wide_row(x, g, w, dim, eps);
    wide_ready = true;
  }
  if (grad_x_wide_output(wide, x(i), g(i), w(i), out))
    return true;
  if (row.row.dim == 0)
    exact_grad_x_row(x, g, w, dim, eps, row);
  if (row.row.radicand.size == 0)
    return false;
  *out = exact_grad_x_output(row, x(i), g(i), w(i), *out);
  return true;
}

// The grad x outputs layer_norm_grad_rows marked, a warp per row with any,
// each lane its marked outputs (recompute_grad_x). Same arguments as
// layer_norm_grad_rows, so the two share their launch (stats unused).
template <class T>
__global__ void layer_norm_grad_x_recompute(
    const float* x,
    const RowsLayout xl,
    const float* weight,
    MP_INT64 weight_stride,
    const float* g,
    const RowsLayout gl,
    float* grad_x,
    LayerNormStats<T>*,
    NormalizedBound*,
    MP_INT64 rows,
    int dim,
    T eps,
    const unsigned* open_bits) {
  const int lane = threadIdx.x % kWarp;
  const MP_INT64 words = open_words_per_row(dim);
  for_each_warp_row(rows, [&](MP_INT64 r) {
    GradXWide wide;
    bool wide_ready = false;
    ExactGradXRow exact_row;
    exact_row.row.dim = 0; // not computed yet
    for_each_marked_output(open_bits + r * words, dim, lane, [&](int i) {
      float out = grad_x[r * dim + i];
      if (recompute_grad_x(
              wide,
              wide_ready,
              exact_row,
              StridedRow{x + row_start(xl, r), xl.element_stride},
              StridedRow{g + row_start(gl, r), gl.element_stride},
              weight,
              weight_stride,
              dim,
              eps,
              i,
              &out))
        grad_x[r * dim + i] = out;
    });
  });
}

// grad weight = sum over rows of g n, certified as on the CPU (stage 1 of
// kernels/layer_norm_certify.h's grad weight; the open columns marked in
// weight_open for layer_norm_weight_recompute), grad bias = sum of g
// (correctly rounded, bias_grad_output, as on the CPU): one thread per column,
// rows in order 0, 1, ... as on the CPU.
template <class T>
__global__ void layer_norm_param_grads(
    const float* x,
    const RowsLayout xl,
    const float* g,
    const RowsLayout gl,
    const LayerNormStats<T>* stats,
    const NormalizedBound* bounds,
    float* grad_weight,
    float* grad_bias,
    unsigned* weight_open,
    MP_INT64 rows,
    int dim,
    T eps) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= dim)
    return;
  const T zero = r_from_float(eps, 0.0f);
  T dw = zero, db = zero;
  double dw_err = 0.0, dw_mass = 0.0, db_mass = 0.0;
  const auto column = [&](MP_INT64 r) {
    return g[row_start(gl, r) + i * gl.element_stride];
  };
  for (MP_INT64 r = 0; r < rows; ++r) {
    const float gi = column(r);
    if (grad_weight) {
      const float xi = x[row_start(xl, r) + i * xl.element_stride];
      const T gd = r_from_float(eps, gi);
      const T n = layer_norm_normalized(stats[r], xi);
      const T p = r_mul(gd, n);
      dw = r_add(dw, p);
      dw_err += weight_grad_term_error(bounds[r], gd, n, p);
      dw_mass += fabs(dw);
    }
    if (grad_bias) {
      db = r_add(db, r_from_float(eps, gi));
      db_mass += fabs(db);
    }
  }
  if (grad_weight)
    weight_open[i] =
        !weight_grad_certified(dw, dw_err, dw_mass, &grad_weight[i]) &&
        fabs(dw) < 1e300;
  if (grad_bias)
    grad_bias[i] = bias_grad_output(db, db_mass, column, rows);
}

// Whether layer_norm_param_grads left any grad weight column open (every
// thread of the warp gets the answer).
__device__ __forceinline__ bool
any_weight_open(const unsigned* weight_open, int dim, int lane) {
  bool any = false;
  for (int i = lane; i < dim; i += kWarp)
    any = any || weight_open[i] != 0u;
  return __any_sync(0xffffffffu, any);
}

// Each row's double-word statistics (warp_wide_stats), one warp per row, for
// layer_norm_weight_recompute; nothing when no column is open.
__global__ void layer_norm_wide_rows(
    const float* x,
    const RowsLayout xl,
    const unsigned* weight_open,
    LayerNormWideStats* wide,
    MP_INT64 rows,
    int dim,
    double eps) {
  const int lane = threadIdx.x % kWarp;
  if (!any_weight_open(weight_open, dim, lane))
    return;
  for_each_warp_row(rows, [&](MP_INT64 r) {
    ExactSum sum;
    const LayerNormWideStats s = warp_wide_stats(
        StridedRow{x + row_start(xl, r), xl.element_stride},
        dim,
        eps,
        lane,
        sum);
    if (lane == 0)
      wide[r] = s;
  });
}

// Stage 3 for one grad weight column, out of line (its big integers would
// otherwise crowd the caller's registers): each row's exact statistics
// computed as the column needs them (exact_weight_grad_output).
__device__ __noinline__ bool exact_weight_grad(
    const float* x,
    const RowsLayout xl,
    const float* g,
    const RowsLayout gl,
    MP_INT64 rows,
    int dim,
    double eps,
    int i,
    float guess,
    float* out) {
  return exact_weight_grad_output(
      [&](MP_INT64 r, ExactLayerNormRow<kBigLimbs>& row) {
        row = exact_layer_norm_row<kBigLimbs>(
            StridedRow{x + row_start(xl, r), xl.element_stride}, dim, eps);
      },
      [&](MP_INT64 r) { return x[row_start(xl, r) + i * xl.element_stride]; },
      [&](MP_INT64 r) { return g[row_start(gl, r) + i * gl.element_stride]; },
      rows,
      guess,
      out);
}

// The grad weight columns layer_norm_param_grads marked, one thread per
// column: in double words from the rows' wide statistics, then exactly
// (recompute_weight_grads on the CPU).
__global__ void layer_norm_weight_recompute(
    const float* x,
    const RowsLayout xl,
    const float* g,
    const RowsLayout gl,
    const LayerNormWideStats* wide,
    const unsigned* weight_open,
    float* grad_weight,
    MP_INT64 rows,
    int dim,
    double eps) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= dim || weight_open[i] == 0u)
    return;
  const auto x_at = [&](MP_INT64 r) {
    return x[row_start(xl, r) + i * xl.element_stride];
  };
  const auto g_at = [&](MP_INT64 r) {
    return g[row_start(gl, r) + i * gl.element_stride];
  };
  // What neither stage decides keeps the double-word value, as on the CPU.
  float out;
  if (!weight_grad_wide_output(
          [&](MP_INT64 r) -> const LayerNormWideStats& { return wide[r]; },
          x_at,
          g_at,
          rows,
          &out))
    exact_weight_grad(x, xl, g, gl, rows, dim, eps, i, out, &out);
  grad_weight[i] = out;
}

} // namespace mlx_precise::gpu
