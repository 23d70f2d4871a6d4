// CUDA kernels of the pair ops (pair_primitives.h), compiled at run time by
// NVRTC (jit.cpp): each pair read as the double hi + lo, the op in double
// (kernels/pair_math.h, as on the CPU), the result written back as a pair
// (dd_from_double), never rounded to float32. The pair addmm packs its
// operands as doubles for cuBLASLt's float64 GEMM (backend/cuda/blas.h) and
// finishes the product here; the pair rfft_conv runs the double transforms of
// rfft_conv_kernels.cuh.
//
// Layout arguments are __grid_constant__: kernels index their arrays at run
// time and take references to them, and a plain by-value argument would then
// be copied to local memory by every thread at entry (448 bytes per element
// in pair_elementwise, which moved more bytes than the operands).
namespace mlx_precise {
// NVRTC has no <cstdint>; the shared headers name int64_t.
using int64_t = long long;
} // namespace mlx_precise
#include "device_utils.cuh"
#include "pair_grad.h"
#include "pair_math.h"
#include "pair_operand.h"
#include "rfft_conv_kernels.cuh"
#include "strict_params.h"

namespace mlx_precise::gpu {

__device__ __forceinline__ double pair_at(
    const float* hi,
    const float* lo,
    MP_INT64 hi_offset,
    MP_INT64 lo_offset) {
  return dd_to_double(ff{hi[hi_offset], lo[lo_offset]});
}

// Element j of row i of a pair operand, as a double. x refers to the kernel's
// __grid_constant__ argument (a copy would put it in local memory).
__device__ __forceinline__ double
pair_at(const PairOperand& x, MP_INT64 i, MP_INT64 j) {
  return pair_at(
      x.hi,
      x.lo,
      row_start(x.hi_l, i) + j * x.hi_l.element_stride,
      row_start(x.lo_l, i) + j * x.lo_l.element_stride);
}

// out (size elements, row-major, rows of `inner`) = op(x [, y]); the
// operands' hi and lo parts have the output's shape, each at its own strides.
__global__ void pair_elementwise(
    const __grid_constant__ PairOperand x,
    const __grid_constant__ PairOperand y,
    float* out_hi,
    float* out_lo,
    MP_INT64 size,
    MP_INT64 inner,
    int op,
    int binary) {
  const PairOp pair_op = static_cast<PairOp>(op);
  MP_GRID_STRIDE(i, size) {
    // Element (row, col) of every operand: one division for the four.
    const MP_INT64 row = i / inner, col = i - row * inner;
    auto at = [&](const float* data, const RowsLayout& l) {
      return data[row_start(l, row) + col * l.element_stride];
    };
    // Unary ops have x bound again as y, read but unused.
    const ff r = pair_element<double>(
        pair_op,
        binary != 0,
        at(x.hi, x.hi_l),
        at(x.lo, x.lo_l),
        at(y.hi, y.hi_l),
        at(y.lo, y.lo_l));
    out_hi[i] = r.hi;
    out_lo[i] = r.lo;
  }
}

// Element (r, col) of batch `batch` of operand a ((m, k) per batch) or b ((k,
// n)) under the layout's strides.
__device__ __forceinline__ MP_INT64 operand_offset(
    const AddmmLayout& l,
    int operand_b,
    MP_INT64 batch,
    MP_INT64 r,
    MP_INT64 col) {
  return strided_offset(
             batch,
             l.batch_dims,
             l.batch_shape,
             operand_b ? l.b_batch : l.a_batch) +
      r * (operand_b ? l.b_row : l.a_row) +
      col * (operand_b ? l.b_col : l.a_col);
}

// Operand a or b of every batch as contiguous row-major doubles: hi + lo (a
// pair; lo_l is the layout with lo in a's place), or hi alone when lo is null.
__global__ void pair_pack_operand(
    const float* hi,
    const __grid_constant__ AddmmLayout hi_l,
    const float* lo,
    const __grid_constant__ AddmmLayout lo_l,
    int operand_b,
    double* dst) {
  const MP_INT64 rows = operand_b ? hi_l.k : hi_l.m;
  const MP_INT64 cols = operand_b ? hi_l.n : hi_l.k;
  const MP_INT64 per_batch = rows * cols;
  MP_GRID_STRIDE(e, per_batch * hi_l.batches) {
    const MP_INT64 batch = e / per_batch;
    const MP_INT64 w = e - batch * per_batch;
    const MP_INT64 r = w / cols, col = w - r * cols;
    const MP_INT64 at = operand_offset(hi_l, operand_b, batch, r, col);
    dst[e] = lo
        ? pair_at(hi, lo, at, operand_offset(lo_l, operand_b, batch, r, col))
        : static_cast<double>(hi[at]);
  }
}

// out (batches, m, n) as pairs = product (the float64 GEMM's, null when k = 0)
// + c, the sum in double. A block per output row (grid-stride over the
// batches * m rows), its threads along the row: the row's offset into c is
// found once, and the reads and writes coalesce.
__global__ void pair_addmm_finish(
    const double* product,
    const float* c,
    const __grid_constant__ AddmmLayout l,
    float* out_hi,
    float* out_lo) {
  const MP_INT64 rows = l.batches * l.m;
  for (MP_INT64 row = blockIdx.x; row < rows; row += gridDim.x) {
    const MP_INT64 at = row * l.n;
    const float* c_row = nullptr;
    if (l.has_c) {
      const MP_INT64 batch = row / l.m;
      c_row = c +
          strided_offset(batch, l.batch_dims, l.batch_shape, l.c_batch) +
          (row - batch * l.m) * l.c_row;
    }
    for (int j = threadIdx.x; j < l.n; j += blockDim.x) {
      double v = product ? product[at + j] : 0.0;
      if (c_row)
        v += static_cast<double>(c_row[j * l.c_col]);
      const ff p = dd_from_double(v);
      out_hi[at + j] = p.hi;
      out_lo[at + j] = p.lo;
    }
  }
}

// out (count, dim) row-major = the rows ids[i] of the pair table (rows, dim),
// each value re-split through double as on the CPU; NaN rows (the CPU's
// NaN bits) for an id outside [0, rows). ids: rows of ids_inner elements
// (ids_l).
__global__ void pair_gather_rows(
    const __grid_constant__ PairOperand table,
    const int* ids,
    const __grid_constant__ RowsLayout ids_l,
    MP_INT64 ids_inner,
    MP_INT64 table_rows,
    MP_INT64 dim,
    MP_INT64 count,
    float* out_hi,
    float* out_lo) {
  MP_GRID_STRIDE(e, count * dim) {
    const MP_INT64 i = e / dim, j = e - i * dim;
    const MP_INT64 id = ids[element_offset(ids_l, i, ids_inner)];
    if (id < 0 || id >= table_rows) {
      // The CPU's quiet NaN bits (CUDA's double-to-float conversion of a
      // NaN gives 0x7fffffff instead).
      out_hi[e] = out_lo[e] = __int_as_float(0x7fc00000);
      continue;
    }
    const ff p = dd_from_double(pair_at(table, id, j));
    out_hi[e] = p.hi;
    out_lo[e] = p.lo;
  }
}

constexpr int kPairWarp = 32;
constexpr int kPairRowsPerBlock = 8;

// A double sum with Neumaier's compensation (as the CPU's CompensatedSum).
struct Compensated {
  double sum;
  double correction;
};

__device__ __forceinline__ Compensated
compensated_add(Compensated a, double x) {
  const double t = a.sum + x;
  a.correction += fabs(a.sum) >= fabs(x) ? (a.sum - t) + x : (x - t) + a.sum;
  a.sum = t;
  return a;
}

// The warp's total of its lanes' compensated sums, in every lane.
__device__ __forceinline__ double warp_total(Compensated c) {
  for (int offset = kPairWarp / 2; offset > 0; offset /= 2) {
    const double other_sum = __shfl_xor_sync(0xffffffffu, c.sum, offset);
    const double other_correction =
        __shfl_xor_sync(0xffffffffu, c.correction, offset);
    c = compensated_add(c, other_sum);
    c.correction += other_correction;
  }
  return c.sum + c.correction;
}

// One warp per row: torch's layer_norm in double (mean, biased variance about
// the mean, eps inside the square root, * weight + bias), written as pairs to
// out (rows, dim) row-major.
__global__ void pair_layer_norm_rows(
    const __grid_constant__ PairOperand x,
    const float* weight,
    MP_INT64 weight_stride,
    const float* bias,
    MP_INT64 bias_stride,
    float* out_hi,
    float* out_lo,
    MP_INT64 rows,
    int dim,
    double eps) {
  const int warp = threadIdx.x / kPairWarp, lane = threadIdx.x % kPairWarp;
  for (MP_INT64 r =
           static_cast<MP_INT64>(blockIdx.x) * kPairRowsPerBlock + warp;
       r < rows;
       r += static_cast<MP_INT64>(gridDim.x) * kPairRowsPerBlock) {
    const float* hi = x.hi + row_start(x.hi_l, r);
    const float* lo = x.lo + row_start(x.lo_l, r);
    auto value = [&](int i) {
      return pair_at(
          hi, lo, i * x.hi_l.element_stride, i * x.lo_l.element_stride);
    };
    Compensated sum{0.0, 0.0};
    for (int i = lane; i < dim; i += kPairWarp)
      sum = compensated_add(sum, value(i));
    const double mean = warp_total(sum) / static_cast<double>(dim);
    Compensated squares{0.0, 0.0};
    for (int i = lane; i < dim; i += kPairWarp) {
      const double centred = value(i) - mean;
      squares = compensated_add(squares, centred * centred);
    }
    const double inv_std =
        1.0 / sqrt(warp_total(squares) / static_cast<double>(dim) + eps);
    for (int i = lane; i < dim; i += kPairWarp) {
      double v = (value(i) - mean) * inv_std;
      if (weight)
        v *= weight[i * weight_stride];
      if (bias)
        v += bias[i * bias_stride];
      const ff p = dd_from_double(v);
      out_hi[r * dim + i] = p.hi;
      out_lo[r * dim + i] = p.lo;
    }
  }
}

// ------------------------------------------------------------- rfft_conv ----
// pair_rfft_conv (the Convolve form, one output row per row of u): the
// transforms, spectral product and gather of conv_rows in double, which are
// the CPU engine's operations in its order, on rows loaded as hi + lo; the
// outputs are written as pairs (finish_pair_output), so nothing is rounded to
// float32 and nothing is certified: the bits are the CPU's. lo_ix numbers the
// rows as ix does, over the lo parts of operands A (u) and B (k).

// Row (outer, inner) of the pair operand `op` (hi at ix, lo at lo_ix) into
// (re, im) as doubles, zero-padded to the transform, back to front when
// reversed (load_pair_row).
__device__ __forceinline__ void load_pair_operand(
    double* re,
    double* im,
    const float* hi,
    const float* lo,
    const RowIndex& ix,
    const RowIndex& lo_ix,
    int op,
    MP_INT64 outer,
    MP_INT64 inner,
    MP_INT64 len,
    bool reversed,
    int h) {
  load_pair_row<double>(
      re,
      im,
      hi + row_offset(ix, op, outer, inner),
      ix.time_stride[op],
      lo + row_offset(lo_ix, op, outer, inner),
      lo_ix.time_stride[op],
      len,
      reversed,
      h,
      threadIdx.x,
      blockDim.x);
}

// Spectra of the pair kernel rows (operand B, outer index = kernel row),
// scaled by 1/(4N), in pair order.
template <bool kShared>
__global__ void pair_kernel_spectra(
    const float* b_hi,
    const float* b_lo,
    const RowIndex ix,
    const ConvShape g,
    const FFTShape fs,
    const cpx<double>* tw,
    const cpx<double>* split_tw,
    const IndexPair* pairs,
    const RowIndex lo_ix,
    cpx<double>* spectra,
    double* workspace) {
  const int h = fs.n_half;
  double* re = row_storage<double, kShared>(workspace, 1, h);
  double* im = re + h;
  for (MP_INT64 kk = blockIdx.x; kk < ix.outer_count; kk += gridDim.x) {
    load_pair_operand(
        re, im, b_hi, b_lo, ix, lo_ix, kOperandB, kk, 0, g.b_len, false, h);
    __syncthreads();
    store_row_spectrum<double, kShared>(
        re, im, fs, tw, split_tw, pairs, g.spectrum_scale, spectra, kk);
    __syncthreads();
  }
}

// Output rows as conv_rows runs them (work item = (kernel row, split)):
// y = conv(a, k) + a * bias, a and y pairs (the correlations of the
// gradients: a reversed and the outputs gathered back to front, as the
// geometry says); out_hi and out_lo share the output's layout (operand OUT
// of ix).
template <bool kShared>
__global__ void pair_conv_rows(
    const float* a_hi,
    const float* a_lo,
    const float* bias,
    float* out_hi,
    float* out_lo,
    const RowIndex ix,
    const ConvShape g,
    const FFTShape fs,
    const cpx<double>* tw,
    const cpx<double>* split_tw,
    const IndexPair* pairs,
    const RowIndex lo_ix,
    const cpx<double>* spectra,
    double* workspace) {
  const int h = fs.n_half;
  double* re = row_storage<double, kShared>(workspace, 1, h);
  double* im = re + h;
  const MP_INT64 splits = g.rows_per_group_split;
  const MP_INT64 hi_step = ix.time_stride[kOperandA],
                 lo_step = lo_ix.time_stride[kOperandA],
                 bias_step = ix.time_stride[kOperandBias];
  for (MP_INT64 item = blockIdx.x; item < ix.outer_count * splits;
       item += gridDim.x) {
    const MP_INT64 kk = item / splits;
    for (MP_INT64 j = item % splits; j < ix.inner_count; j += splits) {
      load_pair_operand(
          re,
          im,
          a_hi,
          a_lo,
          ix,
          lo_ix,
          kOperandA,
          kk,
          j,
          g.a_len,
          g.a_reversed != 0,
          h);
      __syncthreads();
      convolve_loaded_row<double, kShared>(
          re, im, fs, tw, split_tw, pairs, spectra + kk * 2 * fs.num_pairs);
      const float* hi_row = a_hi + row_offset(ix, kOperandA, kk, j);
      const float* lo_row = a_lo + row_offset(lo_ix, kOperandA, kk, j);
      const float* bias_row =
          bias + (g.has_bias ? row_offset(ix, kOperandBias, kk, j) : 0);
      const MP_INT64 out_at = row_offset(ix, kOperandOut, kk, j);
      // a is read only with a bias (its outputs are a's times; the kernel's
      // gradient has more outputs than a has elements).
      for (MP_INT64 t = threadIdx.x; t < g.out_len; t += blockDim.x) {
        const ff p = finish_pair_output(
            gather_output<double>(re, im, g, t),
            g.has_bias != 0,
            g.has_bias ? hi_row[t * hi_step] : 0.0f,
            g.has_bias ? lo_row[t * lo_step] : 0.0f,
            g.has_bias ? bias_row[t * bias_step] : 0.0f);
        out_hi[out_at + t] = p.hi;
        out_lo[out_at + t] = p.lo;
      }
      __syncthreads();
    }
  }
}

// ------------------------------------------------------------- gradients ----
// The gradients' pair primitives (pair_vjp_primitives.h), one thread per
// output or row running the CPU's sequential arithmetic (pair_grad.h) in its
// order: PairSum, PairRows' ScatterAdd and PairLayerNormVJP give the CPU's
// bits; PairCrossEntropy the CPU's up to CUDA's exp and log.

__device__ __forceinline__ void
store_pair(double v, float* out_hi, float* out_lo, MP_INT64 i) {
  const ff p = dd_from_double(v);
  out_hi[i] = p.hi;
  out_lo[i] = p.lo;
}

// out (row-major) = x summed over its summed dims, one thread per output
// (pair_grad.h's pair_sum_to_output, the CPU's sum_to order).
__global__ void pair_sum_to(
    const float* x_hi,
    const float* x_lo,
    const __grid_constant__ RowsLayout kept_hi,
    const __grid_constant__ RowsLayout kept_lo,
    const __grid_constant__ RowsLayout summed_hi,
    const __grid_constant__ RowsLayout summed_lo,
    MP_INT64 outputs,
    MP_INT64 terms,
    float* out_hi,
    float* out_lo) {
  MP_GRID_STRIDE(t, outputs) {
    const ff v = pair_sum_to_output<double>(
        x_hi, x_lo, kept_hi, kept_lo, summed_hi, summed_lo, terms, t);
    out_hi[t] = v.hi;
    out_lo[t] = v.lo;
  }
}

// The counting sort of the ids (pair_grad.h), one thread.
__global__ void pair_rows_positions(
    const int* ids,
    const __grid_constant__ RowsLayout ids_l,
    MP_INT64 ids_inner,
    MP_INT64 count,
    MP_INT64 table_rows,
    MP_INT64* first,
    MP_INT64* positions) {
  if (blockIdx.x != 0 || threadIdx.x != 0)
    return;
  pair_rows_count_sort(
      ids, ids_l, ids_inner, count, table_rows, first, positions);
}

// ScatterAdd: out (table_rows, dim) row-major, one thread per element
// (pair_grad.h's pair_scatter_add_output).
__global__ void pair_scatter_add_rows(
    const __grid_constant__ PairOperand g,
    const MP_INT64* first,
    const MP_INT64* positions,
    MP_INT64 table_rows,
    MP_INT64 dim,
    float* out_hi,
    float* out_lo) {
  MP_GRID_STRIDE(e, table_rows * dim) {
    const ff v = pair_scatter_add_output<double>(
        g.hi, g.hi_l, g.lo, g.lo_l, first, positions, dim, e);
    out_hi[e] = v.hi;
    out_lo[e] = v.lo;
  }
}

// PairLayerNormVJP, one thread per row of `dim`: dx into (dx_hi, dx_lo) and
// g xhat into (gx_hi, gx_lo), all (rows, dim) row-major.
__global__ void pair_layer_norm_vjp_rows(
    const __grid_constant__ PairOperand x,
    const float* weight,
    MP_INT64 weight_stride,
    const __grid_constant__ PairOperand g,
    MP_INT64 rows,
    MP_INT64 dim,
    double eps,
    float* dx_hi,
    float* dx_lo,
    float* gx_hi,
    float* gx_lo) {
  MP_GRID_STRIDE(r, rows) {
    const float* xh = x.hi + row_start(x.hi_l, r);
    const float* xl = x.lo + row_start(x.lo_l, r);
    const float* gh = g.hi + row_start(g.hi_l, r);
    const float* gl = g.lo + row_start(g.lo_l, r);
    const MP_INT64 base = r * dim;
    pair_layer_norm_vjp_row(
        dim,
        eps,
        weight != nullptr,
        [&](MP_INT64 i) {
          return pair_at(
              xh, xl, i * x.hi_l.element_stride, i * x.lo_l.element_stride);
        },
        [&](MP_INT64 i) {
          return pair_at(
              gh, gl, i * g.hi_l.element_stride, i * g.lo_l.element_stride);
        },
        [&](MP_INT64 i) {
          return static_cast<double>(weight[i * weight_stride]);
        },
        [&](MP_INT64 i, double v) { store_pair(v, gx_hi, gx_lo, base + i); },
        [&](MP_INT64 i, double v) { store_pair(v, dx_hi, dx_lo, base + i); });
  }
}

// log_sum_exp[i] of each row of logits, one thread per row.
__global__ void pair_cross_entropy_rows(
    const __grid_constant__ PairOperand logits,
    MP_INT64 rows,
    MP_INT64 classes,
    double* log_sum_exp) {
  MP_GRID_STRIDE(i, rows)
  log_sum_exp[i] = pair_log_sum_exp(
      classes, [&](MP_INT64 j) { return pair_at(logits, i, j); });
}

// One thread, the rows in order as on the CPU: total = sum of the weights
// into total[0]; the forward (out non-null) also writes the mean loss
// sum_i w_i (log_sum_exp_i - l_{i,t_i}) / total as a pair (NaN for a
// weighted row whose target is outside [0, classes)).
__global__ void pair_cross_entropy_total(
    const __grid_constant__ PairOperand logits,
    const int* targets,
    const __grid_constant__ RowsLayout targets_l,
    const float* weights,
    const __grid_constant__ RowsLayout weights_l,
    MP_INT64 rows,
    MP_INT64 classes,
    const double* log_sum_exp,
    double* total,
    float* out_hi,
    float* out_lo) {
  if (blockIdx.x != 0 || threadIdx.x != 0)
    return;
  double loss = 0.0;
  total[0] = cross_entropy_total<double>(
      rows,
      classes,
      [&](MP_INT64 i) { return weights[element_offset(weights_l, i, rows)]; },
      [&](MP_INT64 i) {
        return static_cast<MP_INT64>(
            targets[element_offset(targets_l, i, rows)]);
      },
      [&](MP_INT64 i, MP_INT64 j) { return pair_at(logits, i, j); },
      [&](MP_INT64 i) { return log_sum_exp[i]; },
      out_hi ? &loss : nullptr);
  if (out_hi)
    store_pair(loss, out_hi, out_lo, 0);
}

// The gradient, (rows, classes) row-major: c w_i / total (softmax - onehot),
// c the scalar cotangent pair; NaN rows for a target outside [0, classes).
__global__ void pair_cross_entropy_grad(
    const __grid_constant__ PairOperand logits,
    const int* targets,
    const __grid_constant__ RowsLayout targets_l,
    const float* weights,
    const __grid_constant__ RowsLayout weights_l,
    const float* c_hi,
    const float* c_lo,
    MP_INT64 rows,
    MP_INT64 classes,
    const double* log_sum_exp,
    const double* total,
    float* out_hi,
    float* out_lo) {
  const double c = pair_at(c_hi, c_lo, 0, 0);
  MP_GRID_STRIDE(e, rows * classes) {
    const MP_INT64 i = e / classes, j = e - i * classes;
    store_pair(
        cross_entropy_grad_output(
            c,
            total[0],
            weights[element_offset(weights_l, i, rows)],
            static_cast<MP_INT64>(targets[element_offset(targets_l, i, rows)]),
            classes,
            j,
            pair_at(logits, i, j),
            log_sum_exp[i]),
        out_hi,
        out_lo,
        e);
  }
}

} // namespace mlx_precise::gpu
