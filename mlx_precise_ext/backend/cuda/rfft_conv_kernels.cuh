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
using Row = SwizzledRow<T*>;

// Wide passes (16 points per group, kernels/rfft_conv_rows.h) where they pay:
// float rows, and rows in a global workspace (each pass a round trip through
// L2). Double rows in shared memory run narrow passes (one stage each): 16
// double points took 184 registers per thread (ptxas) and ran slower.
template <class T, bool kShared>
constexpr bool kWidePasses = sizeof(T) == 4 || !kShared;

template <class T, bool kShared, class Ptr>
__device__ __forceinline__ void
fft_forward(Ptr re, Ptr im, const FFTShape& fs, const cpx<T>* tw) {
  fft_passes<false, kWidePasses<T, kShared>, T>(
      re, im, fs, tw, 0, threadIdx.x, blockDim.x, true);
}

template <class T, bool kShared, class Ptr>
__device__ __forceinline__ void
fft_inverse(Ptr re, Ptr im, const FFTShape& fs, const cpx<T>* tw) {
  fft_passes<true, kWidePasses<T, kShared>, T>(
      re, im, fs, tw, 0, threadIdx.x, blockDim.x, true);
}

// Whether x can be read as a ContiguousRow (even length, unit stride, front
// to back, 8-byte aligned). The same for the whole group.
__device__ __forceinline__ bool reads_contiguous(DeviceRow x) {
  return x.stride == 1 && !x.reversed && (x.len & 1) == 0 &&
      (reinterpret_cast<unsigned long long>(x.data) & 7u) == 0;
}

// load_real_row of x, then the forward transform; its first pass reads x
// (threads as in fft_passes).
template <class T, bool kShared>
__device__ __forceinline__ void load_forward(
    DeviceRow x,
    Row<T> re,
    Row<T> im,
    const FFTShape& fs,
    const cpx<T>* tw,
    int tid,
    int nthreads,
    bool active = true) {
  constexpr bool kWide = kWidePasses<T, kShared>;
  if (active && fft_pass_count(fs, kWide) == 0) {
    load_real_row<T>(
        re, im, x.data, x.stride, x.len, x.reversed, fs.n_half, tid, nthreads);
  } else if (active && reads_contiguous(x)) {
    fft_pass<false, kWide, T>(
        ContiguousRow{
            x.data,
            static_cast<int>(
                min(x.len, 2 * static_cast<MP_INT64>(fs.n_half)) / 2)},
        re,
        im,
        fs,
        0,
        tw,
        tid,
        nthreads);
  } else if (active) {
    fft_pass<false, kWide, T>(x, re, im, fs, 0, tw, tid, nthreads);
  }
  __syncthreads();
  fft_passes<false, kWide, T>(re, im, fs, tw, 1, tid, nthreads, active);
}

// Spectrum `row` of `spectra` (2 num_pairs entries each, in pair order):
// the row loaded in (re, im), transformed, split and scaled.
template <class T, bool kShared, class Ptr>
__device__ __forceinline__ void store_row_spectrum(
    Ptr re,
    Ptr im,
    const FFTShape& fs,
    const cpx<T>* tw,
    const cpx<T>* split_tw,
    const IndexPair* pairs,
    float scale,
    cpx<T>* spectra,
    MP_INT64 row) {
  fft_forward<T, kShared>(re, im, fs, tw);
  store_spectrum<T>(
      re,
      im,
      pairs,
      split_tw,
      scale,
      spectra + row * 2 * fs.num_pairs,
      fs.num_pairs,
      threadIdx.x,
      blockDim.x);
}

// The cyclic convolution of the row loaded in (re, im) with a kernel
// spectrum (scaled, in pair order): forward transform, spectral product,
// inverse transform, in place.
template <class T, bool kShared>
__device__ __forceinline__ void convolve_loaded_row(
    T* re,
    T* im,
    const FFTShape& fs,
    const cpx<T>* tw,
    const cpx<T>* split_tw,
    const IndexPair* pairs,
    const cpx<T>* spectrum) {
  fft_forward<T, kShared>(re, im, fs, tw);
  multiply_rows_by_spectrum<T>(
      re,
      im,
      fs.n_half,
      1,
      pairs,
      split_tw,
      spectrum,
      fs.num_pairs,
      threadIdx.x,
      blockDim.x);
  __syncthreads();
  fft_inverse<T, kShared>(re, im, fs, tw);
}

// The sums over the block of each thread's K parts, the same in every thread
// (a fixed order: warp sums, then the warps in turn). Every thread must call
// it.
template <int K>
__device__ __forceinline__ void block_sums(double (&part)[K]) {
  __shared__ double warp_sums[K][32];
  for (int k = 0; k < K; ++k) {
    for (int offset = 16; offset > 0; offset >>= 1)
      part[k] += __shfl_down_sync(0xffffffffu, part[k], offset);
    if ((threadIdx.x & 31) == 0)
      warp_sums[k][threadIdx.x >> 5] = part[k];
  }
  __syncthreads();
  for (int k = 0; k < K; ++k) {
    part[k] = 0.0;
    for (int w = 0; w < static_cast<int>(blockDim.x + 31) / 32; ++w)
      part[k] += warp_sums[k][w];
  }
  __syncthreads(); // warp_sums is free again
}

__device__ __forceinline__ double block_sum(double part) {
  double parts[1] = {part};
  block_sums(parts);
  return parts[0];
}

// ||row||_2 over the block, in double.
__device__ __forceinline__ double
block_row_norm(const float* row, MP_INT64 stride, MP_INT64 len) {
  return sqrt(
      block_sum(square_sum_part(row, stride, len, threadIdx.x, blockDim.x)));
}

// A row's norm and the bound on its computed spectrum that
// measured_term_error takes (certify.h, spectrum_from_row), over the block.
struct RowNorms {
  double norm;
  double spectrum;
};

__device__ __forceinline__ RowNorms
block_row_norms(DeviceRow x, const TransformErrors& errors, int h) {
  double sums[3] = {0.0, 0.0, 0.0}; // squares, even entries, odd entries
  for (MP_INT64 m = threadIdx.x; m < x.len; m += blockDim.x) {
    const double v = static_cast<double>(x(m));
    sums[0] += v * v;
    if (m & 1)
      sums[2] += v;
    else
      sums[1] += v;
  }
  block_sums(sums);
  const double norm = sqrt(sums[0]);
  return {norm, spectrum_from_row(errors, h, x.len, norm, sums[1], sums[2])};
}

// Step 2 of certify.h for output t of an output row: certified, or marked
// in `open` for recompute_open. The exact recomputation stays out of the
// transform kernels: inlined there, its accumulator raised their register use
// from 63 to 166 per thread (ptxas, sm_90) for outputs almost none take.
__device__ __forceinline__ void certify_or_list(
    const RowCertificate& cert,
    double value,
    double magnitude,
    float* out,
    OpenList open,
    MP_INT64 entry) {
  if (certify_output(cert, value, magnitude, out))
    return;
  atomicOr(open.bits + (entry >> 5), 1u << (entry & 31));
}

// Output `entry` of a launch: the transform's value v plus the products x * d
// that for_each_bias_product(add) passes to add(x, d), rounded once. The
// certified precisions certify the sum, or mark the output in `open`.
template <class T, class BiasProducts>
__device__ __forceinline__ void write_output(
    T v,
    BiasProducts for_each_bias_product,
    const RowCertificate& cert,
    float* out,
    OpenList open,
    MP_INT64 entry) {
  const T tag{};
  double magnitude = 0.0;
  if constexpr (Certified<T>::value)
    magnitude = fabs(v);
  for_each_bias_product([&](float x, float d) {
    const T p = r_prod(tag, x, d);
    v = r_add(v, p);
    if constexpr (Certified<T>::value)
      magnitude += fabs(p);
  });
  if constexpr (Certified<T>::value) {
    certify_or_list(cert, v, magnitude, out, open, entry);
  } else {
    *out = r_round(v);
  }
}

// Spectra of the kernel rows (operand B, outer index = kernel row), scaled by
// 1/(4N), in pair order; when certifying, also each kernel row's norm and
// its spectrum bound (b_norms[kk], b_norms[outer_count + kk]).
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
    double* b_norms,
    T* workspace) {
  const int h = fs.n_half;
  const Row<T> re{row_storage<T, kShared>(workspace, 1, h)};
  const Row<T> im{re.data + h};
  for (MP_INT64 kk = blockIdx.x; kk < ix.outer_count; kk += gridDim.x) {
    const float* b_row = b + row_offset(ix, kOperandB, kk, 0);
    if constexpr (Certified<T>::value) {
      const RowNorms norms = block_row_norms(
          DeviceRow{b_row, ix.time_stride[kOperandB], g.b_len, false},
          transform_errors(g.fft_size, 1, kUnitRoundoff64),
          h);
      if (threadIdx.x == 0) {
        b_norms[kk] = norms.norm;
        b_norms[ix.outer_count + kk] = norms.spectrum;
      }
    }
    load_forward<T, kShared>(
        DeviceRow{b_row, ix.time_stride[kOperandB], g.b_len, false},
        re,
        im,
        fs,
        tw,
        threadIdx.x,
        blockDim.x);
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
// together and read it from L2. Certified precisions list the outputs that
// do not certify in `open` (row number kk * inner_count + j).
//
// Registers per thread (kConvRowsRegisters): double rows in shared memory get
// 80, so that three blocks of 256 threads fit an SM's 65536 registers (their
// rows, 64 KiB a block at L = 4096, fit three times as well); ptxas chose 90
// unasked, two blocks. Float rows in shared memory: 128, two blocks of 256
// (ptxas's own choice; without a limit it would take 145 here, one block).
// Rows in a workspace run one block per SM anyway: their limits are the
// counts ptxas picks unasked, so that their code stays as it was (check them
// with scripts/check_cuda.py -v when the kernel changes).
template <class T, bool kShared>
constexpr int kConvRowsRegisters =
    sizeof(T) == 8 ? (kShared ? 80 : 242) : (kShared ? 128 : 168);

template <class T, bool kShared>
__global__ void __maxnreg__((kConvRowsRegisters<T, kShared>)) conv_rows(
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
    const double* b_norms,
    const OpenList open,
    T* workspace) {
  const int h = fs.n_half;
  // Part r of the block (row_threads threads) transforms row j0 + r splits.
  const int rows = g.rows_per_block;
  const int row_threads = blockDim.x / rows;
  const int r = threadIdx.x / row_threads, tid = threadIdx.x % row_threads;
  T* storage = row_storage<T, kShared>(workspace, rows, h);
  const Row<T> re{storage + 2 * r * h};
  const Row<T> im{re.data + h};
  const MP_INT64 splits = g.rows_per_group_split;
  const MP_INT64 items = ix.outer_count * splits;
  const MP_INT64 a_step = ix.time_stride[kOperandA];
  const MP_INT64 bias_step = ix.time_stride[kOperandBias];
  for (MP_INT64 item = blockIdx.x; item < items; item += gridDim.x) {
    const MP_INT64 kk = item / splits;
    const cpx<T>* spectrum = spectra + kk * 2 * fs.num_pairs;
    for (MP_INT64 j0 = item % splits; j0 < ix.inner_count;
         j0 += rows * splits) {
      const int present = static_cast<int>(
          min(static_cast<MP_INT64>(rows),
              (ix.inner_count - j0 + splits - 1) / splits));
      const bool active = r < present;
      const MP_INT64 j = active ? j0 + r * splits : j0;
      const float* a_row = a + row_offset(ix, kOperandA, kk, j);
      const float* bias_row =
          bias + (g.has_bias ? row_offset(ix, kOperandBias, kk, j) : 0);
      RowCertificate cert{};
      if constexpr (Certified<T>::value) {
        // Each row's norms over the whole block, one row after another; the
        // bound from the spectra's norms (certify.h, measured_term_error).
        const TransformErrors errors =
            transform_errors(g.fft_size, 1, kUnitRoundoff64);
        RowNorms a_norms{};
        for (int q = 0; q < present; ++q) {
          const RowNorms norms = block_row_norms(
              DeviceRow{
                  a + row_offset(ix, kOperandA, kk, j0 + q * splits),
                  a_step,
                  g.a_len,
                  g.a_reversed != 0},
              errors,
              h);
          if (q == r)
            a_norms = norms;
        }
        const double b_norm = b_norms[kk];
        cert = certificate_from_bound(
            measured_term_error(
                errors,
                a_norms.norm,
                b_norm,
                a_norms.spectrum,
                b_norms[ix.outer_count + kk]),
            g.fold != 0,
            a_norms.norm * b_norm,
            1,
            g.has_bias ? 1 : 0);
      }
      load_forward<T, kShared>(
          DeviceRow{a_row, a_step, g.a_len, g.a_reversed != 0},
          re,
          im,
          fs,
          tw,
          tid,
          row_threads,
          active);
      multiply_rows_by_spectrum<T>(
          Row<T>{storage},
          Row<T>{storage + h},
          h,
          present,
          pairs,
          split_tw,
          spectrum,
          fs.num_pairs,
          threadIdx.x,
          blockDim.x);
      __syncthreads();
      fft_passes<true, kWidePasses<T, kShared>, T>(
          re, im, fs, tw, 0, tid, row_threads, active);
      float* out_row = out + row_offset(ix, kOperandOut, kk, j);
      if (active)
        for_each_output<T>(re, im, g, tid, row_threads, [&](MP_INT64 t, T v) {
          write_output<T>(
              v,
              [&](auto add) {
                if (g.has_bias)
                  add(a_row[t * a_step], bias_row[t * bias_step]);
              },
              cert,
              out_row + t,
              open,
              (kk * ix.inner_count + j) * g.out_len + t);
        });
      __syncthreads();
    }
  }
}

// One term of a reduced output row: acc (+)= the product of the spectra of
// the rows a and b, `first` starting from zero as the CPU's accumulator does.
// Returns ||a|| ||b|| when certifying.
template <class T, bool kShared, class Ptr>
__device__ __forceinline__ double accumulate_term(
    Ptr a_re,
    Ptr a_im,
    Ptr b_re,
    Ptr b_im,
    OperandRow a,
    OperandRow b,
    const ConvShape& g,
    const FFTShape& fs,
    const cpx<T>* tw,
    const cpx<T>* split_tw,
    const IndexPair* pairs,
    cpx<T>* acc,
    bool first) {
  double norm_product = 0.0;
  if constexpr (Certified<T>::value) {
    norm_product = block_row_norm(a.data, a.stride, g.a_len) *
        block_row_norm(b.data, b.stride, g.b_len);
  }
  const int h = fs.n_half;
  load_real_row<T>(
      a_re,
      a_im,
      a.data,
      a.stride,
      g.a_len,
      g.a_reversed,
      h,
      threadIdx.x,
      blockDim.x);
  load_real_row<T>(
      b_re, b_im, b.data, b.stride, g.b_len, false, h, threadIdx.x, blockDim.x);
  __syncthreads();
  fft_forward<T, kShared>(a_re, a_im, fs, tw);
  fft_forward<T, kShared>(b_re, b_im, fs, tw);
  accumulate_product<T>(
      a_re,
      a_im,
      b_re,
      b_im,
      pairs,
      split_tw,
      acc,
      first,
      fs.num_pairs,
      threadIdx.x,
      blockDim.x);
  __syncthreads();
  return norm_product;
}

// The outputs of a reduced row (number `row` of the launch) from its
// accumulated spectrum: scaled and inverted into (re, im), then each output
// plus the bias products that bias_products(t, add) lists, certified against
// `cert`.
template <class T, bool kShared, class Ptr, class BiasProducts>
__device__ __forceinline__ void write_reduced_row(
    Ptr re,
    Ptr im,
    const ConvShape& g,
    const FFTShape& fs,
    const cpx<T>* tw,
    const cpx<T>* split_tw,
    const IndexPair* pairs,
    const cpx<T>* acc,
    BiasProducts bias_products,
    const RowCertificate& cert,
    float* out_row,
    OpenList open,
    MP_INT64 row) {
  unsplit_accumulated<T>(
      re,
      im,
      pairs,
      split_tw,
      acc,
      g.spectrum_scale,
      fs.num_pairs,
      threadIdx.x,
      blockDim.x);
  __syncthreads();
  fft_inverse<T, kShared>(re, im, fs, tw);
  for_each_output<T>(re, im, g, threadIdx.x, blockDim.x, [&](MP_INT64 t, T v) {
    write_output<T>(
        v,
        [&](auto add) { bias_products(t, add); },
        cert,
        out_row + t,
        open,
        row * g.out_len + t);
  });
  __syncthreads();
}

// Output rows that each sum terms: row r = sum over its conv terms of
// conv(a, b), accumulated spectrally in the block's slot of `acc` and
// inverted once, plus its bias products, rounded once. Terms describes them:
// conv_count(), conv_rows(r, i, a, b), certificate(r, norm_products) and
// bias_products(r, t, add). The grid never exceeds the resident blocks (acc
// has one slot each). Certified precisions list the outputs that do not
// certify in `open` (row number r).
template <class T, bool kShared, class Terms>
__device__ __forceinline__ void sum_terms_rows(
    const Terms& terms,
    float* out,
    const RowIndex& ix,
    const ConvShape& g,
    const FFTShape& fs,
    const cpx<T>* tw,
    const cpx<T>* split_tw,
    const IndexPair* pairs,
    cpx<T>* acc_slots,
    const OpenList& open,
    T* workspace) {
  const int h = fs.n_half;
  T* a_re = row_storage<T, kShared>(workspace, 2, h);
  T* a_im = a_re + h;
  T* b_re = a_im + h;
  T* b_im = b_re + h;
  cpx<T>* acc =
      acc_slots + static_cast<MP_INT64>(blockIdx.x) * 2 * fs.num_pairs;
  for (MP_INT64 row = blockIdx.x; row < ix.outer_count; row += gridDim.x) {
    double norm_products = 0.0;
    for (MP_INT64 i = 0; i < terms.conv_count(); ++i) {
      OperandRow a, b;
      terms.conv_rows(row, i, a, b);
      norm_products += accumulate_term<T, kShared>(
          a_re,
          a_im,
          b_re,
          b_im,
          a,
          b,
          g,
          fs,
          tw,
          split_tw,
          pairs,
          acc,
          i == 0);
    }
    RowCertificate cert{};
    if constexpr (Certified<T>::value)
      cert = terms.certificate(row, norm_products);
    write_reduced_row<T, kShared>(
        a_re,
        a_im,
        g,
        fs,
        tw,
        split_tw,
        pairs,
        acc,
        [&](MP_INT64 t, auto add) { terms.bias_products(row, t, add); },
        cert,
        out + row_offset(ix, kOperandOut, row, 0),
        open,
        row);
  }
}

// The terms of a gradient's target row: corr/conv(a, b) + a * bias over the
// inner rows (the dims the target was broadcast along).
struct InnerRowTerms {
  const float* a;
  const float* b;
  const float* bias;
  const RowIndex& ix;
  const ConvShape& g;

  __device__ MP_INT64 conv_count() const {
    return ix.inner_count;
  }
  __device__ void conv_rows(
      MP_INT64 target,
      MP_INT64 j,
      OperandRow& a_row,
      OperandRow& b_row) const {
    a_row = {
        a + row_offset(ix, kOperandA, target, j), ix.time_stride[kOperandA]};
    b_row = {
        b + row_offset(ix, kOperandB, target, j), ix.time_stride[kOperandB]};
  }
  __device__ RowCertificate certificate(MP_INT64, double norm_products) const {
    return row_certificate(
        g.fft_size,
        g.fold != 0,
        norm_products,
        ix.inner_count > 1 ? ix.inner_count : 1,
        g.has_bias ? ix.inner_count : 0);
  }
  template <class Add>
  __device__ void bias_products(MP_INT64 target, MP_INT64 t, Add add) const {
    if (g.has_bias)
      for (MP_INT64 j = 0; j < ix.inner_count; ++j)
        add(a[row_offset(ix, kOperandA, target, j) +
              t * ix.time_stride[kOperandA]],
            bias
                [row_offset(ix, kOperandBias, target, j) +
                 t * ix.time_stride[kOperandBias]]);
  }
};

// The terms of a ConvolveSum row (the jvp, conv_params.h).
struct ListedTerms {
  SumData data;
  const RowIndex& ix;
  const SumOperands& s;
  const ConvShape& g;

  __device__ MP_INT64 conv_count() const {
    return s.conv_terms;
  }
  __device__ void
  conv_rows(MP_INT64 row, MP_INT64 i, OperandRow& a, OperandRow& b) const {
    const int k = sum_conv_operand(static_cast<int>(i));
    a = sum_operand_row(data, ix, s, k, row);
    b = sum_operand_row(data, ix, s, k + 1, row);
  }
  __device__ RowCertificate certificate(MP_INT64, double norm_products) const {
    return row_certificate(
        g.fft_size, g.fold != 0, norm_products, s.conv_terms, s.bias_terms);
  }
  template <class Add>
  __device__ void bias_products(MP_INT64 row, MP_INT64 t, Add add) const {
    for (int j = 0; j < s.bias_terms; ++j) {
      const int k = sum_bias_operand(s, j);
      const OperandRow c = sum_operand_row(data, ix, s, k, row),
                       d = sum_operand_row(data, ix, s, k + 1, row);
      add(c.data[t * c.stride], d.data[t * d.stride]);
    }
  }
};

// Gradient rows: target (outer) = sum over inner of corr/conv(a, b) + sum of
// a * bias (sum_terms_rows).
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
    const OpenList open,
    T* workspace) {
  sum_terms_rows<T, kShared>(
      InnerRowTerms{a, b, bias, ix, g},
      out,
      ix,
      g,
      fs,
      tw,
      split_tw,
      pairs,
      acc_slots,
      open,
      workspace);
}

// ConvolveSum rows (the jvp, conv_params.h): row r = sum over the conv terms
// of conv(a_i, b_i) plus the bias terms c_j * d_j (sum_terms_rows).
template <class T, bool kShared>
__global__ void sum_rows(
    const SumData data,
    float* out,
    const RowIndex ix,
    const ConvShape g,
    const FFTShape fs,
    const cpx<T>* tw,
    const cpx<T>* split_tw,
    const IndexPair* pairs,
    const SumOperands s,
    cpx<T>* acc_slots,
    const OpenList open,
    T* workspace) {
  sum_terms_rows<T, kShared>(
      ListedTerms{data, ix, s, g},
      out,
      ix,
      g,
      fs,
      tw,
      split_tw,
      pairs,
      acc_slots,
      open,
      workspace);
}

// Clears the bits of an OpenList before the kernels that set them.
__global__ void clear_open_bits(unsigned* bits, MP_INT64 words) {
  for (MP_INT64 w =
           static_cast<MP_INT64>(blockIdx.x) * blockDim.x + threadIdx.x;
       w < words;
       w += static_cast<MP_INT64>(gridDim.x) * blockDim.x)
    bits[w] = 0u;
}

// The lanes' running-error sums (certify.h, RunningSum: sum and the sum of
// |partial sums|) combined over the warp, each addition adding |result| to
// the mass: running_round's argument holds for any tree of additions. Every
// lane gets the same pair (IEEE addition is commutative, so both lanes of a
// shuffle compute the same sums).
__device__ __forceinline__ void warp_running_sum(double& sum, double& mass) {
  for (int offset = 16; offset > 0; offset /= 2) {
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    mass += __shfl_xor_sync(0xffffffffu, mass, offset);
    mass += fabs(sum);
  }
}

// The lanes' compensated sums (certify.h, CompensatedSum: hi, lo = the sum
// of their TwoSum errors, mass = the sum of |errors|) combined over the
// warp: the leading parts by TwoSum, whose error joins lo; the low parts
// added, their magnitudes joining the mass (as compensated_round does). The
// combination is symmetric in the two lanes of a shuffle, so every lane gets
// the same triple.
__device__ __forceinline__ void
warp_compensated_sum(double& hi, double& lo, double& mass) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const double h = __shfl_xor_sync(0xffffffffu, hi, offset);
    const double l = __shfl_xor_sync(0xffffffffu, lo, offset);
    const double m = __shfl_xor_sync(0xffffffffu, mass, offset);
    const double s = hi + h;
    const double hh = s - hi;
    const double e = (hi - (s - hh)) + (h - hh); // exact: hi + h - s
    mass = (mass + m) + (fabs(lo) + fabs(l)) + fabs(e);
    lo = (lo + l) + e;
    hi = s;
  }
}

// Independent accumulators per lane in the running stage, so that the
// additions' latency overlaps (the running bound holds for any tree).
enum : int { kRecomputeChains = 4 };

// correctly_rounded_sum with its stages spread over a warp: lane i sums the
// products k = i, i + 32, ... of every range (range(a, b, m0, j0, count):
// a(m0 - k) b(j0 + k), k < count; every index below 2^31), first with the
// running error bound, then (for the few outputs that does not decide) with
// compensation; the exact sum, for what neither decides (exact ties, zeros),
// runs in lane 0. Every lane of the warp calls it and gets the result.
template <class ForEachRange>
__device__ float warp_correctly_rounded_sum(ForEachRange for_each_range) {
  const int lane = threadIdx.x % 32;
  double sums[kRecomputeChains] = {}, masses[kRecomputeChains] = {};
  for_each_range([&](auto a, auto b, MP_INT64 m0, MP_INT64 j0, MP_INT64 n) {
    const int m = static_cast<int>(m0), j = static_cast<int>(j0);
    const int count = static_cast<int>(n);
    int k = lane;
    for (; k + 32 * (kRecomputeChains - 1) < count;
         k += 32 * kRecomputeChains) {
#pragma unroll
      for (int c = 0; c < kRecomputeChains; ++c) {
        const int kc = k + 32 * c;
        sums[c] =
            fma(static_cast<double>(a(m - kc)),
                static_cast<double>(b(j + kc)),
                sums[c]); // the product is exact: one rounding, the addition's
        masses[c] += fabs(sums[c]);
      }
    }
    for (; k < count; k += 32) {
      sums[0] =
          fma(static_cast<double>(a(m - k)),
              static_cast<double>(b(j + k)),
              sums[0]);
      masses[0] += fabs(sums[0]);
    }
  });
  double sum = sums[0], mass = masses[0];
  for (int c = 1; c < kRecomputeChains; ++c) {
    sum += sums[c];
    mass += masses[c] + fabs(sum);
  }
  warp_running_sum(sum, mass);
  float out;
  if (certified_round(sum, kUnitRoundoff64 * (1.0 + 1.0 / 1024.0) * mass, &out))
    return out;
  double hi = 0.0, lo = 0.0, errors = 0.0;
  MP_INT64 products = 0;
  for_each_range([&](auto a, auto b, MP_INT64 m0, MP_INT64 j0, MP_INT64 n) {
    const int m = static_cast<int>(m0), j = static_cast<int>(j0);
    // (certify.h's: pair_kernels.cuh has a gpu:: function of that name)
    for (int k = lane; k < static_cast<int>(n); k += 32)
      mlx_precise::compensated_add(
          hi,
          lo,
          errors,
          static_cast<double>(a(m - k)) * static_cast<double>(b(j + k)));
    products += n;
  });
  warp_compensated_sum(hi, lo, errors);
  // hi + lo + (the sum of the errors - lo) is exact; lo sums at most
  // products + 32 errors and partial sums (certify.h, compensated_round).
  const double v = hi + lo;
  const double err = gamma_bound(products + 2 * 32) * (1.0 + 1.0 / 1024.0) *
          (errors + fabs(lo)) +
      2.0 * kUnitRoundoff64 * fabs(v);
  if (certified_round(v, err, &out))
    return out;
  if (lane == 0) {
    ExactSum s;
    exact_sum_init(s);
    for_each_range(
        [&](auto a, auto b, MP_INT64 m0, MP_INT64 j0, MP_INT64 count) {
          exact_sum_add_range(s, a, b, m0, j0, count);
        });
    out = exact_sum_round(s);
  }
  return __shfl_sync(0xffffffffu, out, 0);
}

// Marked outputs a block lists before its warps recompute them, and the
// bitmap words it scans at a time (a pass lists at most 32 per word).
enum : int { kMarkedCapacity = 4096, kScanWords = 64, kStageOutputs = 2 };

// Calls recompute(row, t, staged) with one warp for each output that `open`
// marks (output row * out_len + t). A work item is a row's slice: the marked
// outputs t with t % slices == slice (several blocks share a row when rows
// are few). The block lists an item's marked outputs from the bitmap in
// shared memory, up to kMarkedCapacity at a time, and its warps recompute
// them in turn (the order does not matter: each output is correctly rounded
// on its own). Where an item has at least kStageOutputs of them, stage(row)
// runs first with the whole block, once, and `staged` is true: an output
// reads about half of each operand row, so staging pays from two on.
template <class Stage, class Recompute>
__device__ __forceinline__ void for_each_open_output(
    const OpenList& open,
    MP_INT64 out_len,
    int slices,
    Stage stage,
    Recompute recompute) {
  __shared__ int marked[kMarkedCapacity];
  __shared__ int count;
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const MP_INT64 rows = (open.words * 32 + out_len - 1) / out_len;
  for (MP_INT64 item = blockIdx.x; item < rows * slices; item += gridDim.x) {
    const MP_INT64 row = item / slices;
    const int slice = static_cast<int>(item % slices);
    const MP_INT64 first = row * out_len, end = first + out_len;
    bool staged = false;
    if (threadIdx.x == 0)
      count = 0;
    __syncthreads();
    for (MP_INT64 w0 = first / 32; w0 * 32 < end; w0 += kScanWords) {
      const MP_INT64 w = w0 + threadIdx.x;
      if (threadIdx.x < kScanWords && w * 32 < end && w < open.words) {
        for (unsigned word = open.bits[w]; word != 0u; word &= word - 1u) {
          const MP_INT64 e = w * 32 + (__ffs(word) - 1);
          if (e >= first && e < end && (e - first) % slices == slice)
            marked[atomicAdd(&count, 1)] = static_cast<int>(e - first);
        }
      }
      __syncthreads();
      const int n = count;
      __syncthreads(); // every thread has read count before the next scan
      const bool last = (w0 + kScanWords) * 32 >= end;
      if (n == 0 || (n <= kMarkedCapacity - 32 * kScanWords && !last))
        continue; // (n is the same in every thread)
      if (!staged && n >= kStageOutputs) {
        stage(row);
        __syncthreads();
        staged = true;
      }
      for (int i = warp; i < n; i += warps)
        recompute(row, static_cast<MP_INT64>(marked[i]), staged);
      __syncthreads();
      if (threadIdx.x == 0)
        count = 0;
      __syncthreads();
    }
  }
}

// A row staged in shared memory: element m at data[m].
struct StagedRow {
  const float* data;
  __device__ __forceinline__ float operator()(int m) const {
    return data[m];
  }
};

// Step 3 of certify.h for the outputs that conv_rows (one_term_per_row: the
// row's own term) or reduce_rows (all inner rows of the target) marked. With
// one term per row, the first a_staged entries of the row's a (as the
// transform loads it) and b_staged of its b are staged in dynamic shared
// memory, and the products of a range that lies within them are read from
// there (the host stages whole rows where they fit).
__global__ void __launch_bounds__(kRecomputeThreads) recompute_open(
    const float* a,
    const float* b,
    const float* bias,
    float* out,
    const RowIndex ix,
    const ConvShape g,
    int one_term_per_row,
    int a_staged,
    int b_staged,
    int slices,
    const OpenList open) {
  float* staged_a = reinterpret_cast<float*>(shared_rows);
  float* staged_b = staged_a + a_staged;
  const MP_INT64 a_step = ix.time_stride[kOperandA];
  const MP_INT64 b_step = ix.time_stride[kOperandB];
  for_each_open_output(
      open,
      g.out_len,
      slices,
      [&](MP_INT64 row) {
        const MP_INT64 outer = row / ix.inner_count, j = row % ix.inner_count;
        const DeviceRow a_loaded{
            a + row_offset(ix, kOperandA, outer, j),
            a_step,
            g.a_len,
            g.a_reversed != 0};
        const float* b_row = b + row_offset(ix, kOperandB, outer, j);
        for (int m = threadIdx.x; m < a_staged; m += blockDim.x)
          staged_a[m] = a_loaded(m);
        for (int m = threadIdx.x; m < b_staged; m += blockDim.x)
          staged_b[m] = b_row[m * b_step];
      },
      [&](MP_INT64 row, MP_INT64 t, bool staged) {
        const MP_INT64 outer = one_term_per_row ? row / ix.inner_count : row;
        const MP_INT64 j_begin = one_term_per_row ? row % ix.inner_count : 0;
        const MP_INT64 j_end = one_term_per_row ? j_begin + 1 : ix.inner_count;
        const float v = warp_correctly_rounded_sum([&](auto range) {
          if (!one_term_per_row) {
            for_each_output_range(
                a, b, bias, ix, g, outer, j_begin, j_end, t, range);
            return;
          }
          const OperandRow a_row{
              a + row_offset(ix, kOperandA, outer, j_begin), a_step};
          for_each_term_range(
              a_row,
              OperandRow{b + row_offset(ix, kOperandB, outer, j_begin), b_step},
              g,
              t,
              [&](auto a_at, auto b_at, MP_INT64 m0, MP_INT64 j0, MP_INT64 n) {
                if (staged && m0 < a_staged && j0 + n <= b_staged)
                  range(StagedRow{staged_a}, StagedRow{staged_b}, m0, j0, n);
                else
                  range(a_at, b_at, m0, j0, n);
              });
          if (g.has_bias)
            bias_range(
                a_row,
                OperandRow{
                    bias + row_offset(ix, kOperandBias, outer, j_begin),
                    ix.time_stride[kOperandBias]},
                t,
                range);
        });
        if (threadIdx.x % 32 == 0)
          out[row_offset(ix, kOperandOut, outer, j_begin) + t] = v;
      });
}

// Step 3 of certify.h for the outputs that sum_rows marked.
__global__ void __launch_bounds__(kRecomputeThreads) recompute_open_sum(
    const SumData data,
    float* out,
    const RowIndex ix,
    const ConvShape g,
    const SumOperands s,
    int slices,
    const OpenList open) {
  for_each_open_output(
      open,
      g.out_len,
      slices,
      [](MP_INT64) {},
      [&](MP_INT64 row, MP_INT64 t, bool) {
        const float v = warp_correctly_rounded_sum([&](auto range) {
          for_each_sum_range(data, ix, s, g, row, t, range);
        });
        if (threadIdx.x % 32 == 0)
          out[row_offset(ix, kOperandOut, row, 0) + t] = v;
      });
}

// Bias gradient: out = sum over inner rows of a * b, one rounding; per time
// step, or over time too when the bias is broadcast along it. float32 mode
// sums in float in the CPU's order (rows, then time); the certified
// precisions round the exact sum correctly, as the CPU does.
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
  const MP_INT64 t_end = sum_over_time ? len : t0 + 1;
  float* result = out + row_offset(ix, kOperandOut, target, 0) + t0;
  if constexpr (Certified<T>::value) {
    *result = recompute_product_sum(a, b, ix, target, len, t0, t_end);
  } else {
    const MP_INT64 a_step = ix.time_stride[kOperandA],
                   b_step = ix.time_stride[kOperandB];
    T acc{};
    for (MP_INT64 j = 0; j < ix.inner_count; ++j) {
      const float* a_row = a + row_offset(ix, kOperandA, target, j);
      const float* b_row = b + row_offset(ix, kOperandB, target, j);
      for (MP_INT64 t = t0; t < t_end; ++t)
        acc = r_add(acc, r_mul(a_row[t * a_step], b_row[t * b_step]));
    }
    *result = acc;
  }
}

} // namespace mlx_precise::gpu
