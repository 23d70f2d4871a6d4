// CUDA entry points of rfft_conv, compiled at run time by NVRTC (jit.cpp)
// together with the shared kernel headers, once per working precision T.
// kShared: the block's rows live in dynamic shared memory; otherwise in the
// block's slot of a global workspace (rows too long for shared memory), and
// the grid is limited to the blocks that can be resident at once.
#include "device_utils.cuh"
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
// (threads as in fft_passes) and its last writes (out_re, out_im), the row
// itself or a slot elsewhere (gradient_rows' stash).
template <class T, bool kShared, class R = Row<T>>
__device__ __forceinline__ void load_forward_to(
    DeviceRow x,
    R re,
    R im,
    R out_re,
    R out_im,
    const FFTShape& fs,
    const cpx<T>* tw,
    int tid,
    int nthreads,
    bool active) {
  constexpr bool kWide = kWidePasses<T, kShared>;
  const int count = fft_pass_count(fs, kWide);
  const R first_re = count <= 1 ? out_re : re;
  const R first_im = count <= 1 ? out_im : im;
  if (active && count == 0) {
    load_real_row<T>(
        first_re,
        first_im,
        x.data,
        x.stride,
        x.len,
        x.reversed,
        fs.n_half,
        tid,
        nthreads);
  } else if (active && reads_contiguous(x)) {
    fft_pass<false, kWide, T>(
        ContiguousRow{
            x.data,
            static_cast<int>(
                min(x.len, 2 * static_cast<MP_INT64>(fs.n_half)) / 2)},
        first_re,
        first_im,
        fs,
        0,
        tw,
        tid,
        nthreads);
  } else if (active) {
    fft_pass<false, kWide, T>(x, first_re, first_im, fs, 0, tw, tid, nthreads);
  }
  __syncthreads();
  for (int k = 1; k < count; ++k) {
    const bool last = k + 1 == count;
    if (active)
      fft_pass<false, kWide, T>(
          GroupRow<R>{re, im},
          last ? out_re : re,
          last ? out_im : im,
          fs,
          k,
          tw,
          tid,
          nthreads);
    __syncthreads();
  }
}

// load_forward_to the row itself (the passes of fft_passes).
template <class T, bool kShared, class R = Row<T>>
__device__ __forceinline__ void load_forward(
    DeviceRow x,
    R re,
    R im,
    const FFTShape& fs,
    const cpx<T>* tw,
    int tid,
    int nthreads,
    bool active = true) {
  load_forward_to<T, kShared, R>(
      x, re, im, re, im, fs, tw, tid, nthreads, active);
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
    // Lane 0 adds what a shuffle-down tree would add, in the same order.
    part[k] = warp_sum(part[k]);
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
__device__ __forceinline__ RowNorms
block_row_norms(DeviceRow x, const TransformErrors& errors, int h) {
  double sums[3];
  row_sums_part(x, threadIdx.x, blockDim.x, sums);
  block_sums(sums);
  return row_norms(errors, h, x.len, sums);
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

// The outputs of the output row (kk, j) of conv_rows and split_conv_rows:
// (t, v) -> write_output with the bias product a[t] bias[t], output t being
// entry first_entry + t of the launch's OpenList.
template <class T>
struct RowOutputs {
  const float* a_row;
  MP_INT64 a_step;
  const float* bias_row;
  MP_INT64 bias_step;
  bool has_bias;
  const RowCertificate& cert;
  float* out_row;
  OpenList open;
  MP_INT64 first_entry;

  __device__ __forceinline__ void operator()(MP_INT64 t, T v) const {
    write_output<T>(
        v,
        [&](auto add) {
          if (has_bias)
            add(a_row[t * a_step], bias_row[t * bias_step]);
        },
        cert,
        out_row + t,
        open,
        first_entry + t);
  }
};

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

// conv_rows' rows: float rows in shared memory interleaved (one 8-byte
// access per point: an LDS.64/STS.64 at one address instead of two accesses
// at two addresses), the others as (re, im) arrays. at(storage, h, r) is the
// (re, im) pair of row r; rows are 2h values each either way.
template <class R>
struct RowPair {
  R re;
  R im;
};

template <class T, bool kShared>
struct ConvRows {
  using type = Row<T>;
  static __device__ __forceinline__ RowPair<type> at(T* storage, int h, int r) {
    return {type{storage + 2 * r * h}, type{storage + 2 * r * h + h}};
  }
};
template <>
struct ConvRows<float, true> {
  using type = InterleavedRow<float*>;
  static __device__ __forceinline__ RowPair<type>
  at(float* storage, int h, int r) {
    return {type{storage + 2 * r * h, 0}, type{storage + 2 * r * h, 1}};
  }
};

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
  using Rows = ConvRows<T, kShared>;
  using R = typename Rows::type;
  const R re = Rows::at(storage, h, r).re, im = Rows::at(storage, h, r).im;
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
      load_forward<T, kShared, R>(
          DeviceRow{a_row, a_step, g.a_len, g.a_reversed != 0},
          re,
          im,
          fs,
          tw,
          tid,
          row_threads,
          active);
      multiply_rows_by_spectrum<T>(
          Rows::at(storage, h, 0).re,
          Rows::at(storage, h, 0).im,
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
        for_each_output<T>(
            re,
            im,
            g,
            tid,
            row_threads,
            RowOutputs<T>{
                a_row,
                a_step,
                bias_row,
                bias_step,
                g.has_bias != 0,
                cert,
                out_row,
                open,
                (kk * ix.inner_count + j) * g.out_len});
      __syncthreads();
    }
  }
}

// Split rows (kernels/rfft_conv_rows.h): double rows of a size-N
// convolution too long for shared memory (N/2 complex values), whose rows
// both lie within their first N/2 entries, one row per block in shared
// memory, in one of two forms (Form): SplitRows, a cyclic and a negacyclic
// half of M = N/4 complex values each (the tables fs, tw, split_tw, pairs
// are those of size N/2; N = 32768), the cyclic half waiting in the block's
// stash slot (N/2 doubles, in L2) while the negacyclic half is computed; or
// DeepSplitRows, where the halves do not fit either (N = 65536): four pieces
// of P = N/8 complex values (the tables of size N/4), three waiting in the
// stash slot (3N/4 doubles) while the fourth is computed. Narrow passes, as
// conv_rows<double, true>.
struct SplitRows {
  static constexpr int kNorms = 3; // doubles per kernel row
  static constexpr int kStash = 2; // stash values per fs.n_half

  // The kernel row's norms (thread 0 writes them).
  static __device__ void kernel_norms(
      DeviceRow b,
      const ConvShape& g,
      const FFTShape& fs,
      double* out) {
    const MP_INT64 half = 2 * static_cast<MP_INT64>(fs.n_half);
    double sums[4];
    folded_row_sums_part(b, half, threadIdx.x, blockDim.x, sums);
    block_sums(sums);
    const SplitKernelNorms norms = split_kernel_norms(
        split_bound(g.fft_size).cyclic, fs.n_half, min(b.len, half), sums);
    if (threadIdx.x == 0) {
      out[0] = norms.cyclic.norm;
      out[1] = norms.cyclic.spectrum;
      out[2] = norms.negacyclic;
    }
  }

  template <class T, class... Args>
  static __device__ void kernel_spectrum(const Args&... args) {
    split_kernel_spectrum<false, T>(args...);
  }

  static __device__ MP_INT64 spectrum_stride(const FFTShape& fs) {
    return split_spectrum_stride(fs);
  }

  // The row a's certificate against the kernel row's norms.
  static __device__ RowCertificate certificate(
      DeviceRow a,
      const ConvShape& g,
      const FFTShape& fs,
      const double* b) {
    const SplitBound bound = split_bound(g.fft_size);
    return split_row_certificate(
        bound,
        g,
        block_row_norms(a, bound.cyclic, fs.n_half),
        SplitKernelNorms{RowNorms{b[0], b[1]}, b[2]},
        1.0);
  }

  template <class T, class... Args>
  static __device__ void conv_row(const Args&... args) {
    split_conv_row<false, T>(args...);
  }
};

struct DeepSplitRows {
  static constexpr int kNorms = kDeepNorms;
  static constexpr int kStash = 6;

  static __device__ void kernel_norms(
      DeviceRow b,
      const ConvShape& g,
      const FFTShape& fs,
      double* out) {
    const DeepNorms norms = block_deep_norms(b, g, fs);
    if (threadIdx.x == 0) {
      out[0] = norms.piece_a.norm;
      out[1] = norms.piece_a.spectrum;
      out[2] = norms.piece_b;
      out[3] = norms.cyclic;
      out[4] = norms.negacyclic;
    }
  }

  template <class T, class... Args>
  static __device__ void kernel_spectrum(const Args&... args) {
    deep_split_kernel_spectrum<false, T>(args...);
  }

  static __device__ MP_INT64 spectrum_stride(const FFTShape& fs) {
    return deep_split_spectrum_stride(fs);
  }

  static __device__ RowCertificate certificate(
      DeviceRow a,
      const ConvShape& g,
      const FFTShape& fs,
      const double* b) {
    return deep_row_certificate(
        deep_split_bound(g.fft_size),
        g,
        block_deep_norms(a, g, fs),
        DeepNorms{RowNorms{b[0], b[1]}, b[2], b[3], b[4]},
        1.0);
  }

  template <class T, class... Args>
  static __device__ void conv_row(const Args&... args) {
    deep_split_conv_row<false, T>(args...);
  }

 private:
  // A row's DeepNorms over the block.
  static __device__ DeepNorms
  block_deep_norms(DeviceRow x, const ConvShape& g, const FFTShape& fs) {
    double sums[6];
    deep_folded_sums_part(x, 2 * fs.n_half, threadIdx.x, blockDim.x, sums);
    block_sums(sums);
    return deep_norms(
        deep_split_bound(g.fft_size).piece_a, fs.n_half, x.len, sums);
  }
};

// The kernel rows' split spectra (Form::spectrum_stride entries each) and
// their norms (Form::kNorms doubles each).
template <class T, class Form = SplitRows>
__global__ void split_kernel_spectra(
    const float* b,
    const RowIndex ix,
    const ConvShape g,
    const FFTShape fs,
    const cpx<T>* tw,
    const cpx<T>* split_tw,
    const IndexPair* pairs,
    const cpx<T>* twist,
    cpx<T>* spectra,
    double* b_norms,
    T*) {
  const Row<T> re{reinterpret_cast<T*>(shared_rows)};
  const Row<T> im{re.data + fs.n_half};
  for (MP_INT64 kk = blockIdx.x; kk < ix.outer_count; kk += gridDim.x) {
    const DeviceRow b_row{
        b + row_offset(ix, kOperandB, kk, 0),
        ix.time_stride[kOperandB],
        g.b_len,
        false};
    Form::kernel_norms(b_row, g, fs, b_norms + Form::kNorms * kk);
    Form::template kernel_spectrum<T>(
        b_row,
        re,
        im,
        fs,
        tw,
        split_tw,
        pairs,
        twist,
        g.spectrum_scale,
        spectra + kk * Form::spectrum_stride(fs),
        static_cast<int>(threadIdx.x),
        static_cast<int>(blockDim.x));
  }
}

// conv_rows for split rows: work items (kernel row, split) as there, one
// row per block, the outputs that do not certify listed in `open`.
// Registers: 512 threads a block, one block per SM (its shared memory).
template <class T, class Form = SplitRows>
__global__ void __maxnreg__(128) split_conv_rows(
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
    const cpx<T>* twist,
    const cpx<T>* spectra,
    const double* b_norms,
    const OpenList open,
    T* stash_slots) {
  const Row<T> re{reinterpret_cast<T*>(shared_rows)};
  const Row<T> im{re.data + fs.n_half};
  T* stash = stash_slots +
      static_cast<MP_INT64>(blockIdx.x) * Form::kStash * fs.n_half;
  const MP_INT64 splits = g.rows_per_group_split;
  const MP_INT64 items = ix.outer_count * splits;
  const MP_INT64 a_step = ix.time_stride[kOperandA];
  const MP_INT64 bias_step = ix.time_stride[kOperandBias];
  for (MP_INT64 item = blockIdx.x; item < items; item += gridDim.x) {
    const MP_INT64 kk = item / splits;
    for (MP_INT64 j = item % splits; j < ix.inner_count; j += splits) {
      const float* a_row = a + row_offset(ix, kOperandA, kk, j);
      const float* bias_row =
          bias + (g.has_bias ? row_offset(ix, kOperandBias, kk, j) : 0);
      const DeviceRow a_loaded{a_row, a_step, g.a_len, g.a_reversed != 0};
      const RowCertificate cert =
          Form::certificate(a_loaded, g, fs, b_norms + Form::kNorms * kk);
      float* out_row = out + row_offset(ix, kOperandOut, kk, j);
      Form::template conv_row<T>(
          a_loaded,
          re,
          im,
          stash,
          g,
          fs,
          tw,
          split_tw,
          pairs,
          twist,
          spectra + kk * Form::spectrum_stride(fs),
          static_cast<int>(threadIdx.x),
          static_cast<int>(blockDim.x),
          RowOutputs<T>{
              a_row,
              a_step,
              bias_row,
              bias_step,
              g.has_bias != 0,
              cert,
              out_row,
              open,
              (kk * ix.inner_count + j) * g.out_len});
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

// Both gradients of y = conv(u, k) (+ u * bias) (RFFTConvGradients), each row
// of the cotangent g transformed once for both: per target (outer = kernel
// row kk), the block runs its inner rows j in order; part 0 of the block
// transforms g's row (read back to front), part 1 u's row; then
// multiply_gradient_spectra adds G U to the target's accumulator (the
// kernel gradient's term, in the CPU's order) and turns G into G K, whose
// inverse (the whole block) is grad u's row (kk, j), as conv_rows computes
// it; after the last row the accumulator is inverted once into grad k's row
// kk, as reduce_rows computes it. ix numbers the rows of g, k, bias and
// grad u (kOperandA, B, Bias, Out) and gu is grad u's geometry; u_ix and gk
// the same for g, u and grad k. Transforms per row: 3 (conv_rows and
// reduce_rows: 4). The grid never exceeds the resident blocks (acc has one
// slot each). Certified precisions list the outputs that do not certify in
// open_u (row kk * inner_count + j) and open_k (row kk).
//
// Stashed form (rows in shared memory with a `workspace`: one slot of 2h
// values per block): one row in shared memory instead of two, for rows whose
// two buffers would leave one block per SM (double at N = 8192) or not fit.
// The whole block transforms u's row first, its last pass writing the slot
// (in L2), then g's row into shared memory; multiply_gradient_spectra reads U
// from the slot. The same operations on the same values, so the same bits.
template <class T, bool kShared>
__global__ void __maxnreg__((kConvRowsRegisters<T, kShared>)) gradient_rows(
    const float* g,
    const float* k,
    const float* u,
    const float* bias,
    float* grad_u,
    float* grad_k,
    const RowIndex ix,
    const ConvShape gu,
    const FFTShape fs,
    const cpx<T>* tw,
    const cpx<T>* split_tw,
    const IndexPair* pairs,
    const RowIndex u_ix,
    const ConvShape gk,
    const cpx<T>* spectra,
    const double* k_norms,
    cpx<T>* acc_slots,
    const OpenList open_u,
    const OpenList open_k,
    T* workspace) {
  const int h = fs.n_half;
  const bool stash_u = kShared && workspace != nullptr;
  const int row_threads = stash_u ? blockDim.x : blockDim.x / 2;
  const int r = threadIdx.x / row_threads, tid = threadIdx.x % row_threads;
  T* storage = row_storage<T, kShared>(workspace, 2, h);
  T* u_storage = stash_u ? workspace + static_cast<MP_INT64>(blockIdx.x) * 2 * h
                         : storage + 2 * h;
  const Row<T> g_re{storage}, g_im{storage + h};
  const Row<T> u_re{u_storage}, u_im{u_storage + h};
  cpx<T>* acc =
      acc_slots + static_cast<MP_INT64>(blockIdx.x) * 2 * fs.num_pairs;
  const MP_INT64 g_step = ix.time_stride[kOperandA];
  const MP_INT64 u_step = u_ix.time_stride[kOperandB];
  const MP_INT64 bias_step = ix.time_stride[kOperandBias];
  const MP_INT64 terms = ix.inner_count > 1 ? ix.inner_count : 1;
  for (MP_INT64 kk = blockIdx.x; kk < ix.outer_count; kk += gridDim.x) {
    const cpx<T>* spectrum = spectra + kk * 2 * fs.num_pairs;
    // grad k's bound: sums over the rows of ||g|| ||u|| and of their
    // measured_term_error (spectra bounded from the rows), plus the
    // accumulation's running bound (this thread's part of its mass).
    double norm_products = 0.0, k_error = 0.0, k_mass = 0.0;
    for (MP_INT64 j = 0; j < ix.inner_count; ++j) {
      const float* g_row = g + row_offset(ix, kOperandA, kk, j);
      const DeviceRow g_loaded{g_row, g_step, gu.a_len, gu.a_reversed != 0};
      const DeviceRow u_loaded{
          u + row_offset(u_ix, kOperandB, kk, j), u_step, gk.b_len, false};
      RowCertificate cert{};
      if constexpr (Certified<T>::value) {
        // grad u: conv_rows' bound.
        const TransformErrors errors =
            transform_errors(gu.fft_size, 1, kUnitRoundoff64);
        const RowNorms g_norms = block_row_norms(g_loaded, errors, h);
        const RowNorms u_norms = block_row_norms(u_loaded, errors, h);
        const double k_norm = k_norms[kk];
        cert = certificate_from_bound(
            measured_term_error(
                errors,
                g_norms.norm,
                k_norm,
                g_norms.spectrum,
                k_norms[ix.outer_count + kk]),
            gu.fold != 0,
            g_norms.norm * k_norm,
            1,
            gu.has_bias ? 1 : 0);
        norm_products += g_norms.norm * u_norms.norm;
        k_error += measured_term_error(
            transform_errors(gk.fft_size, 1, kUnitRoundoff64),
            g_norms.norm,
            u_norms.norm,
            g_norms.spectrum,
            u_norms.spectrum);
      }
      if (stash_u) {
        load_forward_to<T, kShared>(
            u_loaded, g_re, g_im, u_re, u_im, fs, tw, tid, row_threads, true);
        load_forward<T, kShared>(
            g_loaded, g_re, g_im, fs, tw, tid, row_threads);
      } else {
        load_forward<T, kShared>(
            r == 0 ? g_loaded : u_loaded,
            Row<T>{storage + 2 * r * h},
            Row<T>{storage + 2 * r * h + h},
            fs,
            tw,
            tid,
            row_threads);
      }
      multiply_gradient_spectra<T>(
          g_re,
          g_im,
          u_re,
          u_im,
          pairs,
          split_tw,
          spectrum,
          acc,
          j == 0,
          fs.num_pairs,
          threadIdx.x,
          blockDim.x,
          [&](cpx<T> v) {
            if constexpr (Certified<T>::value)
              k_mass += fabs(v.re) + fabs(v.im);
          });
      __syncthreads();
      fft_inverse<T, kShared>(g_re, g_im, fs, tw);
      for_each_output<T>(
          g_re,
          g_im,
          gu,
          threadIdx.x,
          blockDim.x,
          RowOutputs<T>{
              g_row,
              g_step,
              bias + (gu.has_bias ? row_offset(ix, kOperandBias, kk, j) : 0),
              bias_step,
              gu.has_bias != 0,
              cert,
              grad_u + row_offset(ix, kOperandOut, kk, j),
              open_u,
              (kk * ix.inner_count + j) * gu.out_len});
      __syncthreads();
    }
    RowCertificate cert{};
    if constexpr (Certified<T>::value)
      cert = certificate_from_bound(
          k_error +
              accumulation_error(
                  block_sum(k_mass), 1.0 / static_cast<double>(gk.fft_size)),
          gk.fold != 0,
          norm_products,
          terms,
          0);
    write_reduced_row<T, kShared>(
        g_re,
        g_im,
        gk,
        fs,
        tw,
        split_tw,
        pairs,
        acc,
        [](MP_INT64, auto) {},
        cert,
        grad_k + row_offset(u_ix, kOperandOut, kk, 0),
        open_k,
        kk);
  }
}

// Both gradients by split rows (kernels/rfft_conv_rows.h, "split gradient
// rows"): double rows of size N too long for shared memory, g and u within
// their first N/2 entries, the tables fs, tw, split_tw, pairs of size N/2 and
// k's split spectra and folds' norms from split_kernel_spectra. Per target
// (kernel row kk) the block runs its inner rows j in order: split_gradient_row
// writes grad u's row (kk, j), certified as split_conv_rows certifies it, and
// adds the row's terms to the block's slot of acc_slots; after the last row
// split_accumulated_row writes grad k's row kk (split_sum_certificate). One
// row half in shared memory, a stash slot of N doubles per block. The grid
// never exceeds the resident blocks (a slot each). Registers: 512 threads a
// block, one block per SM, as split_conv_rows.
template <class T>
__global__ void __maxnreg__(128) split_gradient_rows(
    const float* g,
    const float* k,
    const float* u,
    const float* bias,
    float* grad_u,
    float* grad_k,
    const RowIndex ix,
    const ConvShape gu,
    const FFTShape fs,
    const cpx<T>* tw,
    const cpx<T>* split_tw,
    const IndexPair* pairs,
    const cpx<T>* twist,
    const RowIndex u_ix,
    const ConvShape gk,
    const cpx<T>* spectra,
    const double* k_norms,
    cpx<T>* acc_slots,
    const OpenList open_u,
    const OpenList open_k,
    T* stash_slots) {
  const int m = fs.n_half;
  const Row<T> re{reinterpret_cast<T*>(shared_rows)};
  const Row<T> im{re.data + m};
  T* stash = stash_slots + static_cast<MP_INT64>(blockIdx.x) * 4 * m;
  cpx<T>* acc = acc_slots +
      static_cast<MP_INT64>(blockIdx.x) * split_accumulator_stride(fs);
  const SplitBound bound = split_bound(gu.fft_size);
  const MP_INT64 terms = ix.inner_count > 1 ? ix.inner_count : 1;
  const TransformErrors term_errors =
      transform_errors(gu.fft_size / 2, 1, kUnitRoundoff64);
  const MP_INT64 g_step = ix.time_stride[kOperandA];
  const MP_INT64 u_step = u_ix.time_stride[kOperandB];
  const MP_INT64 bias_step = ix.time_stride[kOperandBias];
  for (MP_INT64 kk = blockIdx.x; kk < ix.outer_count; kk += gridDim.x) {
    const SplitKernelNorms k_split{
        RowNorms{k_norms[3 * kk], k_norms[3 * kk + 1]}, k_norms[3 * kk + 2]};
    // This thread's parts of the accumulation masses (cyclic, negacyclic).
    double norm_products = 0.0, cyclic_terms = 0.0, masses[2] = {0.0, 0.0};
    for (MP_INT64 j = 0; j < ix.inner_count; ++j) {
      const float* g_row = g + row_offset(ix, kOperandA, kk, j);
      const DeviceRow g_loaded{g_row, g_step, gu.a_len, gu.a_reversed != 0};
      const DeviceRow u_loaded{
          u + row_offset(u_ix, kOperandB, kk, j), u_step, gk.b_len, false};
      const RowNorms g_norms = block_row_norms(g_loaded, bound.cyclic, m);
      const RowNorms u_norms = block_row_norms(u_loaded, bound.cyclic, m);
      const RowCertificate cert =
          split_row_certificate(bound, gu, g_norms, k_split, 1.0);
      norm_products += g_norms.norm * u_norms.norm;
      cyclic_terms += measured_term_error(
          term_errors,
          g_norms.norm,
          u_norms.norm,
          g_norms.spectrum,
          u_norms.spectrum);
      split_gradient_row<false, T>(
          g_loaded,
          u_loaded,
          re,
          im,
          stash,
          acc,
          j == 0,
          gu,
          fs,
          tw,
          split_tw,
          pairs,
          twist,
          spectra + kk * split_spectrum_stride(fs),
          threadIdx.x,
          blockDim.x,
          [&](int half, cpx<T> v) { masses[half] += fabs(v.re) + fabs(v.im); },
          RowOutputs<T>{
              g_row,
              g_step,
              bias + (gu.has_bias ? row_offset(ix, kOperandBias, kk, j) : 0),
              bias_step,
              gu.has_bias != 0,
              cert,
              grad_u + row_offset(ix, kOperandOut, kk, j),
              open_u,
              (kk * ix.inner_count + j) * gu.out_len});
    }
    block_sums(masses);
    const RowCertificate cert = split_sum_certificate(
        gk, cyclic_terms, masses, norm_products, terms, 1.0);
    split_accumulated_row<false, T>(
        re,
        im,
        stash,
        acc,
        gk,
        fs,
        tw,
        split_tw,
        pairs,
        twist,
        threadIdx.x,
        blockDim.x,
        RowOutputs<T>{
            nullptr,
            0,
            nullptr,
            0,
            false,
            cert,
            grad_k + row_offset(u_ix, kOperandOut, kk, 0),
            open_k,
            kk * gk.out_len});
  }
}

// Clears the bits of an OpenList before the kernels that set them.
__global__ void clear_open_bits(unsigned* bits, MP_INT64 words) {
  MP_GRID_STRIDE(w, words) {
    bits[w] = 0u;
  }
}

// The lanes' compensated sums (certify.h, CompensatedSum: hi, lo = the sum
// of their TwoSum errors, mass = the sum of |errors|) combined over the
// warp: the leading parts by TwoSum, whose error joins lo; the low parts
// added, their magnitudes joining the mass (as compensated_round does). The
// combination is symmetric in the two lanes of a shuffle, so every lane gets
// the same triple.
__device__ __forceinline__ void combine_compensated(
    double& hi,
    double& lo,
    double& mass,
    double h,
    double l,
    double m) {
  const double s = hi + h;
  const double hh = s - hi;
  const double e = (hi - (s - hh)) + (h - hh); // exact: hi + h - s
  mass = (mass + m) + (fabs(lo) + fabs(l)) + fabs(e);
  lo = (lo + l) + e;
  hi = s;
}

__device__ __forceinline__ void
warp_compensated_sum(double& hi, double& lo, double& mass) {
  for (int offset = 16; offset > 0; offset /= 2)
    combine_compensated(
        hi,
        lo,
        mass,
        __shfl_xor_sync(0xffffffffu, hi, offset),
        __shfl_xor_sync(0xffffffffu, lo, offset),
        __shfl_xor_sync(0xffffffffu, mass, offset));
}

// Independent accumulators per lane in the running stage, so that the
// additions' latency overlaps (the running bound holds for any tree); the
// products each chain sums from zero before adding them to its total (the
// partial sums inside a block are those of short sums: about 1.5-2.5x less
// mass at L = 16384, so fewer outputs go on to the compensated stage); and
// the products whose operands the compensated stage loads at once.
enum : int { kRecomputeChains = 4, kRunningBlock = 8, kLoadBatch = 8 };

// The running stage of certify.h's correctly_rounded_sum spread over `lanes`
// threads (whole warps): for the products of for_each_range (range(a, b, m0,
// j0, count): a(m0 - k) b(j0 + k), k < count; every index below 2^31), this
// thread, number `lane` of them, sums in chain c the products k = base + 32 c
// + i lanes kRecomputeChains, base = lane % 32 + kRecomputeChains (lane - lane
// % 32) (a warp's chains read 32 consecutive products each, so that a chain's
// operands lie a constant offset from the lane's: one address per lane and
// step), each chain in blocks of up to kRunningBlock products summed from
// zero and then added to the chain's total (every addition, inside a block
// or of a block, adds |its result| to the mass); then its warp combines the
// lanes' sums. Every lane of the warp gets the warp's sum and mass (sum of
// |partial sums|).
template <class ForEachRange>
__device__ __forceinline__ void running_sum_part(
    ForEachRange for_each_range,
    int lane,
    int lanes,
    double& sum,
    double& mass) {
  double sums[kRecomputeChains] = {}, masses[kRecomputeChains] = {};
  const int base = lane % 32 + (lane - lane % 32) * kRecomputeChains;
  const int step = lanes * kRecomputeChains;
  for_each_range([&](auto a, auto b, MP_INT64 m0, MP_INT64 j0, MP_INT64 n) {
    const int m = static_cast<int>(m0), j = static_cast<int>(j0);
    const int count = static_cast<int>(n);
    int k = base;
    while (k + 32 * (kRecomputeChains - 1) < count) {
      double blocks[kRecomputeChains] = {};
      for (int i = 0;
           i < kRunningBlock && k + 32 * (kRecomputeChains - 1) < count;
           ++i, k += step) {
#pragma unroll
        for (int c = 0; c < kRecomputeChains; ++c) {
          // The product is exact: one rounding, the addition's.
          blocks[c] =
              fma(static_cast<double>(a(m - k - 32 * c)),
                  static_cast<double>(b(j + k + 32 * c)),
                  blocks[c]);
          masses[c] += fabs(blocks[c]);
        }
      }
#pragma unroll
      for (int c = 0; c < kRecomputeChains; ++c) {
        sums[c] += blocks[c];
        masses[c] += fabs(sums[c]);
      }
    }
#pragma unroll
    for (int c = 0; c < kRecomputeChains; ++c)
      if (k + 32 * c < count) {
        sums[0] =
            fma(static_cast<double>(a(m - k - 32 * c)),
                static_cast<double>(b(j + k + 32 * c)),
                sums[0]);
        masses[0] += fabs(sums[0]);
      }
  });
  sum = sums[0];
  mass = masses[0];
  for (int c = 1; c < kRecomputeChains; ++c) {
    sum += sums[c];
    mass += masses[c] + fabs(sum);
  }
  warp_running_sum(sum, mass);
}

// running_round's certification of a running sum and its mass.
__device__ __forceinline__ bool
running_certified(double sum, double mass, float* out) {
  return certified_round(
      sum, kUnitRoundoff64 * (1.0 + 1.0 / 1024.0) * mass, out);
}

// The exact stage of correctly_rounded_sum spread over a warp: each lane
// sums the products k = lane, lane + 32, ... in an ExactSum of its own; after
// each lane's carry every digit but the last is below 2^32, so the lanes'
// digits add up exactly in int64 (butterfly shuffles: every lane gets the
// same sum), and the terms with an Inf or NaN factor (each such sum is 0, an
// infinity or NaN, whatever the order) likewise. Every lane of the warp calls
// it and gets the result.
template <class ForEachRange>
__device__ float warp_exact_sum(ForEachRange for_each_range) {
  const int lane = threadIdx.x % 32;
  ExactSum s;
  exact_sum_init(s);
  for_each_range([&](auto a, auto b, MP_INT64 m0, MP_INT64 j0, MP_INT64 n) {
    const int m = static_cast<int>(m0), j = static_cast<int>(j0);
    for (int k = lane; k < static_cast<int>(n); k += 32)
      exact_sum_add_product(s, a(m - k), b(j + k));
  });
  exact_sum_carry(s);
  for (int i = 0; i < kExactLimbs; ++i)
    for (int offset = 16; offset > 0; offset /= 2)
      s.limb[i] += __shfl_xor_sync(0xffffffffu, s.limb[i], offset);
  for (int offset = 16; offset > 0; offset /= 2)
    s.special += __shfl_xor_sync(0xffffffffu, s.special, offset);
  return exact_sum_round(s);
}

// The compensated stage of correctly_rounded_sum spread over `lanes` threads
// (whole warps; this thread number `lane`): the thread sums the products k =
// lane, lane + lanes, ... with compensation into hi, lo and errors (the sum
// of |TwoSum errors|), the operands of kLoadBatch products loaded before any
// is added (from device memory: their loads in flight together; the
// additions keep their order), and counts the range's products.
template <class ForEachRange>
__device__ __forceinline__ void compensated_sum_part(
    ForEachRange for_each_range,
    int lane,
    int lanes,
    double& hi,
    double& lo,
    double& errors,
    MP_INT64& products) {
  hi = lo = errors = 0.0;
  products = 0;
  for_each_range([&](auto a, auto b, MP_INT64 m0, MP_INT64 j0, MP_INT64 n) {
    const int m = static_cast<int>(m0), j = static_cast<int>(j0);
    const int count = static_cast<int>(n);
    int k = lane;
    for (; k + lanes * (kLoadBatch - 1) < count; k += lanes * kLoadBatch) {
      float x[kLoadBatch], y[kLoadBatch];
#pragma unroll
      for (int q = 0; q < kLoadBatch; ++q) {
        x[q] = a(m - k - lanes * q);
        y[q] = b(j + k + lanes * q);
      }
#pragma unroll
      for (int q = 0; q < kLoadBatch; ++q)
        mlx_precise::compensated_add(
            hi,
            lo,
            errors,
            static_cast<double>(x[q]) * static_cast<double>(y[q]));
    }
    // (certify.h's: pair_kernels.cuh has a gpu:: function of that name)
    for (; k < count; k += lanes)
      mlx_precise::compensated_add(
          hi,
          lo,
          errors,
          static_cast<double>(a(m - k)) * static_cast<double>(b(j + k)));
    products += n;
  });
}

// certified_round of a compensated sum over `lanes` threads combined (each
// lane's hi, lo and errors merged by combine_compensated): hi + lo + (the sum
// of the errors - lo) is exact, and lo sums at most products + 2 lanes
// errors and low parts (certify.h, compensated_round).
__device__ __forceinline__ bool certified_compensated(
    double hi,
    double lo,
    double errors,
    MP_INT64 products,
    int lanes,
    float* out) {
  const double v = hi + lo;
  const double err = gamma_bound(products + 2 * lanes) * (1.0 + 1.0 / 1024.0) *
          (errors + fabs(lo)) +
      2.0 * kUnitRoundoff64 * fabs(v);
  return certified_round(v, err, out);
}

// The stages of correctly_rounded_sum after the running one, spread over a
// warp, for the outputs that it did not decide: compensated_sum_part over
// the warp's lanes; what that does not decide either (exact zeros, and
// results within a few units of double rounding of a float32 tie: some in a
// thousand of these outputs, since they are the ones closest to ties) by
// warp_exact_sum. Every lane of the warp calls it and gets the result.
template <class ForEachRange>
__device__ float warp_compensated_or_exact_sum(ForEachRange for_each_range) {
  double hi, lo, errors;
  MP_INT64 products;
  compensated_sum_part(
      for_each_range, threadIdx.x % 32, 32, hi, lo, errors, products);
  warp_compensated_sum(hi, lo, errors);
  float out;
  if (certified_compensated(hi, lo, errors, products, 32, &out))
    return out;
  return warp_exact_sum(for_each_range);
}

// warp_compensated_or_exact_sum over the whole block, for outputs of many
// products (a warp each left the long rows' few undecided outputs to a few
// warps, one load latency after another): the warps' compensated sums are
// combined in shared memory in warp order, the same by every thread, and the
// exact stage, where needed, is warp 0's. Every thread of the block calls it
// and gets the result.
template <class ForEachRange>
__device__ float block_compensated_or_exact_sum(ForEachRange for_each_range) {
  __shared__ double parts[kRecomputeMaxThreads / 32][3];
  __shared__ float exact;
  const int warp = threadIdx.x / 32;
  double hi, lo, errors;
  MP_INT64 products;
  compensated_sum_part(
      for_each_range, threadIdx.x, blockDim.x, hi, lo, errors, products);
  warp_compensated_sum(hi, lo, errors);
  if (threadIdx.x % 32 == 0) {
    parts[warp][0] = hi;
    parts[warp][1] = lo;
    parts[warp][2] = errors;
  }
  __syncthreads();
  hi = parts[0][0];
  lo = parts[0][1];
  errors = parts[0][2];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w)
    combine_compensated(hi, lo, errors, parts[w][0], parts[w][1], parts[w][2]);
  __syncthreads(); // parts is free again
  float out;
  if (certified_compensated(hi, lo, errors, products, blockDim.x, &out))
    return out;
  if (warp == 0) {
    const float v = warp_exact_sum(for_each_range);
    if (threadIdx.x == 0)
      exact = v;
  }
  __syncthreads();
  out = exact;
  __syncthreads(); // exact is free again
  return out;
}

// Marked outputs a block lists at a time, and the warps of a recompute
// block.
enum : int {
  kMarkedCapacity = 1024,
  kRecomputeWarps = kRecomputeMaxThreads / 32
};

// The bits of bitmap word w (w * 32 < end) that mark outputs of a work item:
// e in [first, end) with (e - first) % slices == slice.
__device__ __forceinline__ unsigned item_bits(
    unsigned word,
    MP_INT64 w,
    MP_INT64 first,
    MP_INT64 end,
    int slices,
    int slice) {
  const MP_INT64 base = w * 32;
  if (base < first)
    word &= ~0u << static_cast<int>(first - base);
  if (end - base < 32)
    word &= (1u << static_cast<int>(end - base)) - 1u;
  if (slices > 1)
    for (unsigned rest = word; rest != 0u; rest &= rest - 1u) {
      const int bit = __ffs(rest) - 1;
      if ((base + bit - first) % slices != slice)
        word &= ~(1u << bit);
    }
  return word;
}

// The exclusive prefix sum over the block of each thread's count; `total`
// gets the sum of all. Every thread must call it.
__device__ __forceinline__ int block_exclusive_sum(int count, int& total) {
  __shared__ int warp_totals[kRecomputeWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int inclusive = count;
  for (int d = 1; d < 32; d *= 2) {
    const int v = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d)
      inclusive += v;
  }
  if (lane == 31)
    warp_totals[warp] = inclusive;
  __syncthreads();
  int before = 0;
  total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) {
    before += w < warp ? warp_totals[w] : 0;
    total += warp_totals[w];
  }
  __syncthreads(); // warp_totals is free again
  return before + inclusive - count;
}

// Warps per marked output when a block sums n of them at once: the fewest
// rounds of work (rounds of ceil(n g / warps) outputs, each taking 1/g of a
// warp's time), the fewest warps per output among equals.
__device__ __forceinline__ int warps_per_output(int n, int warps) {
  int best = 1;
  for (int g = 2; g <= warps; g *= 2) {
    const int rounds = (n * g + warps - 1) / warps;
    const int best_rounds = (n * best + warps - 1) / warps;
    if (rounds * best < best_rounds * g)
      best = g;
  }
  return best;
}

// The outputs of a work item, a row's slice (the marked outputs t of the row
// [first, end) with t % slices == slice), that `open` marks, taken by the
// block: it reads their bitmap words, kOpenWordsPerThread per thread at a
// time, clears the bits it takes and lists them (t) in `marked`, up to
// kMarkedCapacity at a time, calling visit(n) with the whole block for each
// batch of n listed outputs.
template <class Visit>
__device__ __forceinline__ void for_each_marked_batch(
    const OpenList& open,
    MP_INT64 first,
    MP_INT64 end,
    int slices,
    int slice,
    int* marked,
    Visit visit) {
  for (MP_INT64 w0 = first / 32; w0 * 32 < end;
       w0 += kOpenWordsPerThread * blockDim.x) {
    unsigned taken[kOpenWordsPerThread];
    int count = 0;
#pragma unroll
    for (int i = 0; i < kOpenWordsPerThread; ++i) {
      const MP_INT64 w = w0 + threadIdx.x + i * blockDim.x;
      taken[i] = w * 32 < end && w < open.words ? open.bits[w] : 0u;
    }
#pragma unroll
    for (int i = 0; i < kOpenWordsPerThread; ++i) {
      const MP_INT64 w = w0 + threadIdx.x + i * blockDim.x;
      if (taken[i] != 0u) {
        taken[i] = item_bits(taken[i], w, first, end, slices, slice);
        if (taken[i] != 0u)
          atomicAnd(open.bits + w, ~taken[i]);
      }
      count += __popc(taken[i]);
    }
    int total;
    const int offset = block_exclusive_sum(count, total);
    for (int base = 0; base < total; base += kMarkedCapacity) {
      int index = offset;
#pragma unroll
      for (int i = 0; i < kOpenWordsPerThread; ++i) {
        const MP_INT64 w = w0 + threadIdx.x + i * blockDim.x;
        for (unsigned rest = taken[i]; rest != 0u; rest &= rest - 1u) {
          if (index >= base && index < base + kMarkedCapacity)
            marked[index - base] =
                static_cast<int>(w * 32 + (__ffs(rest) - 1) - first);
          ++index;
        }
      }
      __syncthreads();
      visit(min(total - base, static_cast<int>(kMarkedCapacity)));
      __syncthreads(); // marked is free again
    }
  }
}

// The running stage's decision for output e (certify.h step 3): a certified
// output passed to write(v), an undecided one marked again for the
// compensated and exact stages.
template <class Write>
__device__ __forceinline__ void decide_running(
    const OpenList& open,
    MP_INT64 e,
    double sum,
    double mass,
    Write write) {
  float v;
  if (running_certified(sum, mass, &v))
    write(v);
  else
    atomicOr(open.bits + (e >> 5), 1u << (e & 31));
}

// The running stage (running_sum_part) for the outputs that `open` marks
// (output row * out_len + t), leaving marked only those it does not decide,
// for recompute_undecided. A work item is a row's slice
// (for_each_marked_batch: several blocks share a row when rows are few);
// where it has marked outputs, stage(row) runs first with the whole block,
// once, and `staged` is true (its copies are all in flight at once, where an
// output summed from device memory waits for one load after another; an
// output reads about half of each operand row). Then groups of warps
// (warps_per_output: the whole block for a single output, a warp each for as
// many outputs as the block has warps) call sum_part(row, t, staged, lane,
// lanes, sum, mass), lane numbering the group's threads, and the group's sums
// are combined; a certified output is passed to write(row, t, value) from one
// thread, an undecided one marked again. Each output is correctly rounded on
// its own: order and grouping change no result bit.
template <class Stage, class SumPart, class Write>
__device__ __forceinline__ void for_each_open_output(
    const OpenList& open,
    MP_INT64 out_len,
    int slices,
    Stage stage,
    SumPart sum_part,
    Write write) {
  __shared__ int marked[kMarkedCapacity];
  __shared__ double partial[kRecomputeWarps][2];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  const MP_INT64 rows = (open.words * 32 + out_len - 1) / out_len;
  for (MP_INT64 item = blockIdx.x; item < rows * slices; item += gridDim.x) {
    const MP_INT64 row = item / slices;
    const int slice = static_cast<int>(item % slices);
    const MP_INT64 first = row * out_len, end = first + out_len;
    bool staged = false;
    for_each_marked_batch(open, first, end, slices, slice, marked, [&](int n) {
      if (!staged) {
        stage(row);
        __syncthreads();
        staged = true;
      }
      const int group_warps = warps_per_output(n, warps);
      const int groups = warps / group_warps, group = warp / group_warps,
                member = warp % group_warps;
      for (int i0 = 0; i0 < n; i0 += groups) {
        const int i = i0 + group;
        const MP_INT64 t = i < n ? marked[i] : 0;
        double sum = 0.0, mass = 0.0;
        if (i < n)
          sum_part(
              row, t, staged, member * 32 + lane, group_warps * 32, sum, mass);
        if (group_warps > 1) {
          if (lane == 0) {
            partial[warp][0] = sum;
            partial[warp][1] = mass;
          }
          __syncthreads();
          if (member == 0)
            for (int q = 1; q < group_warps; ++q) {
              sum += partial[warp + q][0];
              mass += partial[warp + q][1] + fabs(sum);
            }
          __syncthreads(); // partial is free again
        }
        if (i < n && member == 0 && lane == 0)
          decide_running(
              open, first + t, sum, mass, [&](float v) { write(row, t, v); });
      }
    });
  }
}

// Calls visit(e) with a whole warp for each output e that `open` marks (the
// warps of the grid over the bitmap, kOpenWordsPerThread words per lane at a
// time).
template <class Visit>
__device__ __forceinline__ void for_each_marked(
    const OpenList& open,
    Visit visit) {
  const int lane = threadIdx.x % 32;
  const MP_INT64 warp =
      (static_cast<MP_INT64>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const MP_INT64 warps = static_cast<MP_INT64>(gridDim.x) * blockDim.x / 32;
  constexpr int kStep = 32 * kOpenWordsPerThread;
  for (MP_INT64 w0 = warp * kStep; w0 < open.words; w0 += warps * kStep) {
    unsigned words[kOpenWordsPerThread];
#pragma unroll
    for (int i = 0; i < kOpenWordsPerThread; ++i) {
      const MP_INT64 w = w0 + i * 32 + lane;
      words[i] = w < open.words ? open.bits[w] : 0u;
    }
#pragma unroll
    for (int i = 0; i < kOpenWordsPerThread; ++i)
      for (unsigned lanes = __ballot_sync(0xffffffffu, words[i] != 0u);
           lanes != 0u;
           lanes &= lanes - 1u) {
        const int source = __ffs(lanes) - 1;
        const MP_INT64 w = w0 + i * 32 + source;
        for (unsigned bits = __shfl_sync(0xffffffffu, words[i], source);
             bits != 0u;
             bits &= bits - 1u)
          visit(w * 32 + (__ffs(bits) - 1));
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

// A row staged in shared memory as double (converted once as it is staged).
struct StagedDoubleRow {
  const double* data;
  __device__ __forceinline__ double operator()(int m) const {
    return data[m];
  }
};

// A row in device memory with unit stride, front to back: element m at
// data[m], 32-bit index arithmetic (DeviceRow's general form takes 64-bit
// arithmetic and registers per product).
struct UnitRow {
  const float* data;
  __device__ __forceinline__ float operator()(int m) const {
    return __ldg(data + m);
  }
};

__device__ __forceinline__ bool is_unit_row(DeviceRow x) {
  return x.stride == 1 && !x.reversed;
}

// Copies 16 bytes (16-byte aligned) from device to shared memory without
// passing through registers, so that a thread can have all of its copies in
// flight at once (cp.async, sm_80 on); they are complete after
// wait_quad_copies.
__device__ __forceinline__ void copy_quad_async(float* dst, const float* src) {
#if __CUDA_ARCH__ >= 800
  const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(to), "l"(src)
               : "memory");
#else
  *reinterpret_cast<float4*>(dst) = *reinterpret_cast<const float4*>(src);
#endif
}

__device__ __forceinline__ void wait_quad_copies() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// dst[m] = src(m) for m < len, converted to T (float, or double for a row
// that many products read), by the block, several loads in flight per
// thread. The caller synchronises the block before reading dst.
template <class T>
__device__ __forceinline__ void stage_loads(T* dst, DeviceRow src, int len) {
  constexpr int kBatch = 4;
  const int step = blockDim.x;
  for (int m0 = threadIdx.x; m0 < len; m0 += kBatch * step) {
    float v[kBatch];
#pragma unroll
    for (int q = 0; q < kBatch; ++q)
      v[q] = m0 + q * step < len ? src(m0 + q * step) : 0.0f;
#pragma unroll
    for (int q = 0; q < kBatch; ++q)
      if (m0 + q * step < len)
        dst[m0 + q * step] = static_cast<T>(v[q]);
  }
}

// dst[m] = src(m) for m < len, by the block: a row read front to back with
// unit stride, both ends 16-byte aligned, by quad copies all in flight at
// once; any other by stage_loads. The caller waits (wait_quad_copies) and
// synchronises the block before reading dst.
__device__ __forceinline__ void stage_row(float* dst, DeviceRow src, int len) {
  const int step = blockDim.x;
  if (src.stride == 1 && !src.reversed &&
      ((reinterpret_cast<unsigned long long>(src.data) |
        reinterpret_cast<unsigned long long>(dst)) &
       15u) == 0) {
    const int count = len / 4;
    for (int q = threadIdx.x; q < count; q += step)
      copy_quad_async(dst + 4 * q, src.data + 4 * q);
    for (int m = 4 * count + threadIdx.x; m < len; m += step)
      dst[m] = src.data[m];
    return;
  }
  stage_loads(dst, src, len);
}

// The rows of output row `row` that its outputs read (OpenOutputRanges):
// with one term per row its a, b and bias rows, and where its outputs go.
struct OutputRowOperands {
  OperandRow a;
  OperandRow b;
  OperandRow bias;
  float* out;
};

// The products of output t of output row `row` for conv_rows (one term per
// row: the row's own term) or reduce_rows (all inner rows of the target), as
// ranges. With one term per row, the first a_staged entries of the row's a
// (as the transform loads it) and b_staged of its b may be staged in shared
// memory (`staged`), and the products of a range that lies within them are
// read from there (the host stages whole rows where they fit).
struct OpenOutputRanges {
  const float* a;
  const float* b;
  const float* bias;
  const RowIndex& ix;
  const ConvShape& g;
  bool one_term_per_row;
  const float* staged_a;
  int a_staged;
  const float* staged_b;
  int b_staged;

  // The rows of output row `row` in `out`: taken once per row, since
  // row_offset's 64-bit divisions cost more than a short output's products.
  __device__ __forceinline__ OutputRowOperands
  rows(float* out, MP_INT64 row) const {
    const MP_INT64 outer = one_term_per_row ? row / ix.inner_count : row;
    const MP_INT64 j = one_term_per_row ? row % ix.inner_count : 0;
    OutputRowOperands r{
        OperandRow{
            a + row_offset(ix, kOperandA, outer, j), ix.time_stride[kOperandA]},
        OperandRow{
            b + row_offset(ix, kOperandB, outer, j), ix.time_stride[kOperandB]},
        OperandRow{nullptr, 0},
        out + row_offset(ix, kOperandOut, outer, j)};
    if (g.has_bias)
      r.bias = OperandRow{
          bias + row_offset(ix, kOperandBias, outer, j),
          ix.time_stride[kOperandBias]};
    return r;
  }

  // Output t of output row `row`, whose rows are `r`.
  template <class Range>
  __device__ __forceinline__ void operator()(
      const OutputRowOperands& r,
      MP_INT64 row,
      MP_INT64 t,
      bool staged,
      Range range) const {
    if (!one_term_per_row) {
      for_each_output_range(
          a, b, bias, ix, g, row, 0, ix.inner_count, t, range);
      return;
    }
    for_each_term_range(
        r.a,
        r.b,
        g,
        t,
        [&](auto a_at, auto b_at, MP_INT64 m0, MP_INT64 j0, MP_INT64 n) {
          if (staged && m0 < a_staged && j0 + n <= b_staged)
            range(StagedRow{staged_a}, StagedRow{staged_b}, m0, j0, n);
          else if (is_unit_row(a_at) && is_unit_row(b_at))
            range(UnitRow{a_at.data}, UnitRow{b_at.data}, m0, j0, n);
          else
            range(a_at, b_at, m0, j0, n);
        });
    if (g.has_bias)
      bias_range(r.a, r.bias, t, range);
  }
};

// Step 3 of certify.h, running stage, for the outputs that conv_rows or
// reduce_rows marked (OpenOutputRanges), leaving marked the few it does not
// decide (for_each_open_output). With one term per row, a row with several
// marked outputs stages its a and b prefixes (a_staged, b_staged entries) in
// dynamic shared memory.
__global__ void __launch_bounds__(kRecomputeMaxThreads) recompute_open(
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
  const OpenOutputRanges ranges{
      a,
      b,
      bias,
      ix,
      g,
      one_term_per_row != 0,
      staged_a,
      a_staged,
      staged_b,
      b_staged};
  // The rows of the row being summed, set with its stage (kept in shared
  // memory: in registers through the sums they spilled).
  __shared__ OutputRowOperands rows;
  for_each_open_output(
      open,
      g.out_len,
      slices,
      [&](MP_INT64 row) {
        const OutputRowOperands r = ranges.rows(out, row);
        if (threadIdx.x == 0)
          rows = r;
        stage_row(
            staged_a,
            DeviceRow{r.a.data, r.a.stride, g.a_len, g.a_reversed != 0},
            a_staged);
        stage_row(
            staged_b,
            DeviceRow{r.b.data, r.b.stride, g.b_len, false},
            b_staged);
        wait_quad_copies();
      },
      [&](MP_INT64 row,
          MP_INT64 t,
          bool staged,
          int lane,
          int lanes,
          double& sum,
          double& mass) {
        running_sum_part(
            [&](auto range) { ranges(rows, row, t, staged, range); },
            lane,
            lanes,
            sum,
            mass);
      },
      [&](MP_INT64, MP_INT64 t, float v) { rows.out[t] = v; });
}

// The outputs recompute_open left marked (the running stage did not decide
// them: about 3 % of its outputs for random rows; exact zeros and ties), a
// warp each, with compensation and then exactly
// (warp_compensated_or_exact_sum), from device memory. A kernel of its own,
// so that the exact sum's registers stay out of recompute_open.
__global__ void __launch_bounds__(kRecomputeThreads) recompute_undecided(
    const float* a,
    const float* b,
    const float* bias,
    float* out,
    const RowIndex ix,
    const ConvShape g,
    int one_term_per_row,
    const OpenList open) {
  const OpenOutputRanges ranges{
      a, b, bias, ix, g, one_term_per_row != 0, nullptr, 0, nullptr, 0};
  for_each_marked(open, [&](MP_INT64 e) {
    const MP_INT64 row = e / g.out_len, t = e % g.out_len;
    const OutputRowOperands rows = ranges.rows(out, row);
    const float v = warp_compensated_or_exact_sum(
        [&](auto range) { ranges(rows, row, t, false, range); });
    if (threadIdx.x % 32 == 0)
      rows.out[t] = v;
  });
}

// Adds a warp's running sum and its mass (every lane holds them) to an
// output's total (sum, mass) in shared memory: the addition, rounded to
// nearest as atomicAdd rounds it, adds |its result| to the mass (a running
// sum over another tree of additions).
__device__ __forceinline__ void
add_to_total(double* total, double sum, double mass) {
  if (threadIdx.x % 32 == 0) {
    const double before = atomicAdd(&total[0], sum);
    atomicAdd(&total[1], mass + fabs(before + sum));
  }
}

// running_sum_part by warp `member` of a group of group_warps for the
// products of for_each_range, added to the output's total by each warp.
template <class ForEachRange>
__device__ __forceinline__ void add_running_part(
    double* total,
    ForEachRange for_each_range,
    int member,
    int group_warps) {
  double sum, mass;
  running_sum_part(
      for_each_range,
      member * 32 + threadIdx.x % 32,
      group_warps * 32,
      sum,
      mass);
  add_to_total(total, sum, mass);
}

// running_sum_part for two outputs whose products a(m_o - k) b(j + k), k <
// count, read the same entries of b: each entry of b is loaded once for
// both, so that a product takes one shared load of a and half of one of b
// (the shared loads bound the staged sums). Two chains per output (the
// same four independent additions per lane), in running_sum_part's layout;
// every lane gets both warp sums and masses.
template <class RowA, class RowB>
__device__ __forceinline__ void running_sum_pair(
    RowA a,
    RowB b,
    const int (&m)[2],
    int j,
    int count,
    int lane,
    int lanes,
    double (&sum)[2],
    double (&mass)[2]) {
  constexpr int kChains = 2;
  double sums[2][kChains] = {}, masses[2][kChains] = {};
  const int base = lane % 32 + (lane - lane % 32) * kChains;
  const int step = lanes * kChains;
  int k = base;
  while (k + 32 * (kChains - 1) < count) {
    double blocks[2][kChains] = {};
    for (int i = 0; i < kRunningBlock && k + 32 * (kChains - 1) < count;
         ++i, k += step) {
#pragma unroll
      for (int c = 0; c < kChains; ++c) {
        const double y = static_cast<double>(b(j + k + 32 * c));
#pragma unroll
        for (int o = 0; o < 2; ++o) {
          // The product is exact: one rounding, the addition's.
          blocks[o][c] =
              fma(static_cast<double>(a(m[o] - k - 32 * c)), y, blocks[o][c]);
          masses[o][c] += fabs(blocks[o][c]);
        }
      }
    }
#pragma unroll
    for (int o = 0; o < 2; ++o)
#pragma unroll
      for (int c = 0; c < kChains; ++c) {
        sums[o][c] += blocks[o][c];
        masses[o][c] += fabs(sums[o][c]);
      }
  }
#pragma unroll
  for (int c = 0; c < kChains; ++c)
    if (k + 32 * c < count)
#pragma unroll
      for (int o = 0; o < 2; ++o) {
        sums[o][0] =
            fma(static_cast<double>(a(m[o] - k - 32 * c)),
                static_cast<double>(b(j + k + 32 * c)),
                sums[o][0]);
        masses[o][0] += fabs(sums[o][0]);
      }
#pragma unroll
  for (int o = 0; o < 2; ++o) {
    sum[o] = sums[o][0];
    mass[o] = masses[o][0];
    for (int c = 1; c < kChains; ++c) {
      sum[o] += sums[o][c];
      mass[o] += masses[o][c] + fabs(sum[o]);
    }
    warp_running_sum(sum[o], mass[o]);
  }
}

// decide_running for the n listed outputs first + marked[i] from their
// totals, by the block; a certified one passed to write(marked[i], value).
template <class Write>
__device__ __forceinline__ void decide_totals(
    const OpenList& open,
    MP_INT64 first,
    const int* marked,
    const double (*totals)[2],
    int n,
    Write write) {
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    decide_running(
        open, first + marked[i], totals[i][0], totals[i][1], [&](float v) {
          write(marked[i], v);
        });
}

// recompute_undecided for the long rows that recompute_open_windows
// recomputes (an undecided output there sums up to L products: with a warp
// each, the few of them waited on one load latency after another in a few
// warps): a block per marked output (block_compensated_or_exact_sum), the
// blocks over the bitmap in spans of kOpenWordsPerThread words per thread,
// listed as for_each_open_output lists them.
__global__ void __launch_bounds__(kRecomputeThreads) recompute_undecided_long(
    const float* a,
    const float* b,
    const float* bias,
    float* out,
    const RowIndex ix,
    const ConvShape g,
    int one_term_per_row,
    const OpenList open) {
  __shared__ int marked[kMarkedCapacity];
  const OpenOutputRanges ranges{
      a, b, bias, ix, g, one_term_per_row != 0, nullptr, 0, nullptr, 0};
  const MP_INT64 span =
      32 * kOpenWordsPerThread * static_cast<MP_INT64>(blockDim.x);
  for (MP_INT64 first = blockIdx.x * span; first < open.words * 32;
       first += gridDim.x * span)
    for_each_marked_batch(open, first, first + span, 1, 0, marked, [&](int n) {
      for (int i = 0; i < n; ++i) {
        const MP_INT64 e = first + marked[i];
        const MP_INT64 row = e / g.out_len, t = e % g.out_len;
        const OutputRowOperands rows = ranges.rows(out, row);
        const float v = block_compensated_or_exact_sum(
            [&](auto range) { ranges(rows, row, t, false, range); });
        if (threadIdx.x == 0)
          rows.out[t] = v;
      }
    });
}

// recompute_open for reduce_rows' outputs without bias (grad k: a target's
// output sums over its R inner rows) where a pair of inner rows fits in
// shared memory: a block per target (slice) stages the pairs one after
// another, a at 0 and b at b_offset (16-byte aligned), and sums each batch
// of the target's marked outputs from there, so that the rows are read from
// device memory once per batch instead of once per output (at L = 16384
// each of grad k's ~100 marked outputs of a target read all R rows). Groups
// of warps per output as in for_each_open_output; each warp adds its running
// sum of a pair (and its mass) to the output's total in shared memory, the
// |total| after each addition to the mass (a running sum over another tree:
// no result bit changes).
__global__ void __launch_bounds__(kRecomputeMaxThreads) recompute_open_reduce(
    const float* a,
    const float* b,
    const float*, // bias: none here (recompute_undecided's arguments)
    float* out,
    const RowIndex ix,
    const ConvShape g,
    int, // one_term_per_row: false here
    int b_offset,
    int slices,
    const OpenList open) {
  float* staged_a = reinterpret_cast<float*>(shared_rows);
  float* staged_b = staged_a + b_offset;
  __shared__ int marked[kMarkedCapacity];
  __shared__ double totals[kMarkedCapacity][2]; // sum, mass
  const int warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  const MP_INT64 rows = (open.words * 32 + g.out_len - 1) / g.out_len;
  for (MP_INT64 item = blockIdx.x; item < rows * slices; item += gridDim.x) {
    const MP_INT64 row = item / slices;
    const int slice = static_cast<int>(item % slices);
    const MP_INT64 first = row * g.out_len;
    for_each_marked_batch(
        open, first, first + g.out_len, slices, slice, marked, [&](int n) {
          const int group_warps = warps_per_output(n, warps);
          const int groups = warps / group_warps, group = warp / group_warps,
                    member = warp % group_warps;
          for (int i = threadIdx.x; i < n; i += blockDim.x)
            totals[i][0] = totals[i][1] = 0.0;
          for (MP_INT64 j = 0; j < ix.inner_count; ++j) {
            __syncthreads(); // the previous pair is summed
            stage_row(
                staged_a,
                DeviceRow{
                    a + row_offset(ix, kOperandA, row, j),
                    ix.time_stride[kOperandA],
                    g.a_len,
                    g.a_reversed != 0},
                static_cast<int>(g.a_len));
            stage_row(
                staged_b,
                DeviceRow{
                    b + row_offset(ix, kOperandB, row, j),
                    ix.time_stride[kOperandB],
                    g.b_len,
                    false},
                static_cast<int>(g.b_len));
            wait_quad_copies();
            __syncthreads();
            for (int i = group; i < n; i += groups) {
              add_running_part(
                  totals[i],
                  [&](auto range) {
                    // (the rows' addresses unused: read from the stage)
                    for_each_term_range(
                        OperandRow{nullptr, 0},
                        OperandRow{nullptr, 0},
                        g,
                        marked[i],
                        [&](auto, auto, MP_INT64 m0, MP_INT64 j0, MP_INT64 k) {
                          range(
                              StagedRow{staged_a},
                              StagedRow{staged_b},
                              m0,
                              j0,
                              k);
                        });
                  },
                  member,
                  group_warps);
            }
          }
          __syncthreads();
          decide_totals(open, first, marked, totals, n, [&](int t, float v) {
            out[row_offset(ix, kOperandOut, row, 0) + t] = v;
          });
        });
  }
}

// recompute_open for rows of one term (conv_rows' outputs) too long for
// shared memory, whose outputs recompute_open sums from device memory (at
// L = 2^20 some 8000 outputs of a row are open, each reading ~L/3 products
// of both rows: the reads bound it). A work item is a window of
// kWindowOutputs outputs of a row; a batch of its marked outputs takes its
// products kWindowChunk entries of b at a time, that chunk (as double: one
// float->double conversion per product instead of two, the conversions
// bounding the sums) and the span of a that the batch's ranges meet in it
// staged in shared memory, so that a staged entry serves every output of the
// batch. A range outside the staged span (a fold's second entry, a wrapped
// range) reads device memory, as does a batch of fewer than kWindowStageMin
// outputs (in one pass). Each warp adds its running sum of a chunk (and its
// mass) to the output's total in shared memory as recompute_open_reduce
// does: no result bit changes.
__global__ void __launch_bounds__(kRecomputeMaxThreads) recompute_open_windows(
    const float* a,
    const float* b,
    const float* bias,
    float* out,
    const RowIndex ix,
    const ConvShape g,
    int, // one_term_per_row: true here
    int windows,
    const OpenList open) {
  double* staged_b = reinterpret_cast<double*>(shared_rows);
  float* staged_a = reinterpret_cast<float*>(staged_b + kWindowChunk);
  __shared__ int marked[kMarkedCapacity];
  __shared__ double totals[kMarkedCapacity][2]; // sum, mass
  __shared__ OutputRowOperands rows;
  // The batch's range of b (first, end), then the chunk's of a (first, last).
  __shared__ int extent[4];
  constexpr int kNone = 0x7fffffff;
  const OpenOutputRanges ranges{
      a, b, bias, ix, g, true, nullptr, 0, nullptr, 0};
  const int warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  const MP_INT64 row_count = (open.words * 32 + g.out_len - 1) / g.out_len;
  for (MP_INT64 item = blockIdx.x; item < row_count * windows;
       item += gridDim.x) {
    // A row's last windows first: their outputs have the most products, so
    // the grid ends on short items.
    const MP_INT64 row = item / windows;
    const MP_INT64 t0 = (windows - 1 - item % windows) * kWindowOutputs;
    const MP_INT64 first = row * g.out_len + t0;
    const MP_INT64 end =
        first + min(static_cast<MP_INT64>(kWindowOutputs), g.out_len - t0);
    for_each_marked_batch(open, first, end, 1, 0, marked, [&](int n) {
      if (threadIdx.x == 0) {
        rows = ranges.rows(out, row);
        extent[0] = kNone;
        extent[1] = 0;
      }
      for (int i = threadIdx.x; i < n; i += blockDim.x)
        totals[i][0] = totals[i][1] = 0.0;
      __syncthreads();
      for (int i = threadIdx.x; i < n; i += blockDim.x)
        for_each_term_range(
            rows.a,
            rows.b,
            g,
            t0 + marked[i],
            [&](auto, auto, MP_INT64, MP_INT64 j0, MP_INT64 k) {
              atomicMin(&extent[0], static_cast<int>(j0));
              atomicMax(&extent[1], static_cast<int>(j0 + k));
            });
      __syncthreads();
      const bool stage = n >= kWindowStageMin;
      // At least one pass, which adds the bias products.
      const int j_begin = extent[0] < extent[1] ? extent[0] / 4 * 4 : 0;
      const int j_end = max(extent[1], j_begin + 1);
      const int step = stage ? static_cast<int>(kWindowChunk) : j_end - j_begin;
      // Staged, a group takes outputs in pairs (running_sum_pair).
      const int group_warps = warps_per_output(stage ? (n + 1) / 2 : n, warps);
      const int groups = warps / group_warps, group = warp / group_warps,
                member = warp % group_warps;
      for (MP_INT64 chunk_first = j_begin; chunk_first < j_end;
           chunk_first += step) {
        const MP_INT64 chunk_end =
            min(chunk_first + step, static_cast<MP_INT64>(j_end));
        // The products k of range (m0, j0, count) with b in the chunk.
        auto in_chunk = [&](MP_INT64 j0, MP_INT64 count, MP_INT64& k0) {
          k0 = max(chunk_first - j0, static_cast<MP_INT64>(0));
          return min(chunk_end - j0, count);
        };
        int a_first = 0, a_staged = 0;
        if (stage) {
          if (threadIdx.x == 0) {
            extent[2] = kNone;
            extent[3] = -1;
          }
          __syncthreads(); // (and the previous chunk is summed)
          for (int i = threadIdx.x; i < n; i += blockDim.x)
            for_each_term_range(
                rows.a,
                rows.b,
                g,
                t0 + marked[i],
                [&](auto, auto, MP_INT64 m0, MP_INT64 j0, MP_INT64 count) {
                  MP_INT64 k0;
                  const MP_INT64 k1 = in_chunk(j0, count, k0);
                  if (k0 < k1) {
                    atomicMin(&extent[2], static_cast<int>(m0 - k1 + 1));
                    atomicMax(&extent[3], static_cast<int>(m0 - k0));
                  }
                });
          __syncthreads();
          if (extent[3] >= 0) {
            a_first = extent[2] / 4 * 4; // 16-byte aligned copies
            a_staged = min(extent[3] + 1 - a_first, int{kWindowStagedA});
            stage_row(
                staged_a,
                DeviceRow{
                    g.a_reversed ? rows.a.data
                                 : rows.a.data + a_first * rows.a.stride,
                    rows.a.stride,
                    g.a_len - a_first,
                    g.a_reversed != 0},
                a_staged);
          }
          stage_loads(
              staged_b,
              DeviceRow{
                  rows.b.data + chunk_first * rows.b.stride,
                  rows.b.stride,
                  g.b_len - chunk_first,
                  false},
              static_cast<int>(chunk_end - chunk_first));
          wait_quad_copies();
          __syncthreads();
        }
        // The one range of output t's products in the chunk, in the staged
        // rows, where it has one (no other range, no bias product here);
        // else count 0.
        auto staged_range = [&](MP_INT64 t, int& m, int& j) {
          int count = 0, met = 0;
          for_each_term_range(
              rows.a,
              rows.b,
              g,
              t,
              [&](auto, auto, MP_INT64 m0, MP_INT64 j0, MP_INT64 k) {
                MP_INT64 k0;
                const MP_INT64 k1 = in_chunk(j0, k, k0);
                if (k0 >= k1)
                  return;
                ++met;
                if (m0 - k1 + 1 >= a_first && m0 - k0 < a_first + a_staged) {
                  m = static_cast<int>(m0 - k0 - a_first);
                  j = static_cast<int>(j0 + k0 - chunk_first);
                  count = static_cast<int>(k1 - k0);
                }
              });
          return met == 1 && !(g.has_bias && chunk_first == j_begin) ? count
                                                                     : 0;
        };
        auto add_output = [&](int i) {
          const MP_INT64 t = t0 + marked[i];
          add_running_part(
              totals[i],
              [&](auto range) {
                for_each_term_range(
                    rows.a,
                    rows.b,
                    g,
                    t,
                    [&](auto a_at,
                        auto b_at,
                        MP_INT64 m0,
                        MP_INT64 j0,
                        MP_INT64 count) {
                      MP_INT64 k0;
                      const MP_INT64 k1 = in_chunk(j0, count, k0);
                      if (k0 >= k1)
                        return;
                      const MP_INT64 m = m0 - k0, j = j0 + k0;
                      if (m - (k1 - k0) + 1 >= a_first &&
                          m < a_first + a_staged)
                        range(
                            StagedRow{staged_a},
                            StagedDoubleRow{staged_b},
                            m - a_first,
                            j - chunk_first,
                            k1 - k0);
                      else if (is_unit_row(a_at) && is_unit_row(b_at))
                        range(
                            UnitRow{a_at.data},
                            UnitRow{b_at.data},
                            m,
                            j,
                            k1 - k0);
                      else
                        range(a_at, b_at, m, j, k1 - k0);
                    });
                if (g.has_bias && chunk_first == j_begin)
                  bias_range(rows.a, rows.bias, t, range);
              },
              member,
              group_warps);
        };
        // Outputs i and i + groups together where their staged ranges read
        // the same entries of b (all but an output's last chunks for the
        // causal layout).
        for (int i = group; i < n; i += 2 * groups) {
          const int other = i + groups;
          int m[2] = {0, 0}, j[2] = {0, 0};
          const int count =
              stage ? staged_range(t0 + marked[i], m[0], j[0]) : 0;
          if (count > 0 && other < n &&
              staged_range(t0 + marked[other], m[1], j[1]) == count &&
              j[1] == j[0]) {
            double sum[2], mass[2];
            running_sum_pair(
                StagedRow{staged_a},
                StagedDoubleRow{staged_b},
                m,
                j[0],
                count,
                member * 32 + threadIdx.x % 32,
                group_warps * 32,
                sum,
                mass);
            add_to_total(totals[i], sum[0], mass[0]);
            add_to_total(totals[other], sum[1], mass[1]);
          } else {
            add_output(i);
            if (other < n)
              add_output(other);
          }
        }
      }
      __syncthreads();
      decide_totals(open, first, marked, totals, n, [&](int t, float v) {
        rows.out[t0 + t] = v;
      });
    });
  }
}

// recompute_open for the outputs that sum_rows marked.
__global__ void __launch_bounds__(kRecomputeMaxThreads) recompute_open_sum(
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
      [&](MP_INT64 row,
          MP_INT64 t,
          bool,
          int lane,
          int lanes,
          double& sum,
          double& mass) {
        running_sum_part(
            [&](auto range) {
              for_each_sum_range(data, ix, s, g, row, t, range);
            },
            lane,
            lanes,
            sum,
            mass);
      },
      [&](MP_INT64 row, MP_INT64 t, float v) {
        out[row_offset(ix, kOperandOut, row, 0) + t] = v;
      });
}

// recompute_undecided for what recompute_open_sum left marked.
__global__ void __launch_bounds__(kRecomputeThreads) recompute_undecided_sum(
    const SumData data,
    float* out,
    const RowIndex ix,
    const ConvShape g,
    const SumOperands s,
    const OpenList open) {
  for_each_marked(open, [&](MP_INT64 e) {
    const MP_INT64 row = e / g.out_len, t = e % g.out_len;
    const float v = warp_compensated_or_exact_sum(
        [&](auto range) { for_each_sum_range(data, ix, s, g, row, t, range); });
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
