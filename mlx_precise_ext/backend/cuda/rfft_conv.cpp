// eval_gpu for RFFTConv and BiasGradient on MLX's CUDA backend: the kernels
// of rfft_conv_kernels.cuh (compiled by jit.cpp) added as nodes of the
// stream's graph through MLX's cu::CommandEncoder, like MLX's own kernels.
#include <algorithm>
#include <initializer_list>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>

#include <mlx/allocator.h>
#include <mlx/backend/cuda/device.h>
#include <mlx/backend/cuda/utils.h>

#include "backend/common/conv_geometry.h"
#include "backend/common/shapes.h"
#include "backend/cuda/encoder.h"
#include "backend/cuda/jit.h"
#include "backend/gpu/conv_layout.h"
#include "backend/gpu/pair_conv_layout.h"
#include "kernels/rfft_conv_rows.h"
#include "pair_primitives.h"
#include "pair_vjp_primitives.h"
#include "primitives.h"

namespace mlx_precise {

namespace {

using cuda::scratch;
using gpu::FFTTables;

// The FFT tables of one transform size on the device, in precision T.
template <class T>
struct DeviceFFT {
  FFTShape shape;
  const cpx<T>* twiddles;
  const cpx<T>* split;
  const IndexPair* pairs;
};

template <class T>
const DeviceFFT<T>& device_fft(int device, int64_t fft_size) {
  static std::mutex mutex;
  static std::map<std::pair<int, int64_t>, DeviceFFT<T>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto key = std::make_pair(device, fft_size);
  auto it = cache.find(key);
  if (it != cache.end())
    return it->second;
  const FFTTables<T> t = gpu::make_fft_tables<T>(fft_size);
  auto upload = [](const auto& table) {
    return reinterpret_cast<decltype(table.data())>(
        cuda::upload_constant(table.data(), table.size() * sizeof(table[0])));
  };
  DeviceFFT<T> d{t.shape, upload(t.twiddles), upload(t.split), upload(t.pairs)};
  return cache.emplace(key, d).first->second;
}

template <class T>
constexpr Precision precision_of();
template <>
constexpr Precision precision_of<float>() {
  return Precision::Float32;
}
template <>
constexpr Precision precision_of<double>() {
  return Precision::Extended;
}

template <class P>
P* data_of(mx::array& buffer) {
  return static_cast<P*>(mx::gpu_ptr<void>(buffer));
}

// The encoder orders graph nodes by the buffers registered just before each
// node: every kernel registers what it reads and what it writes.
void register_buffers(
    mx::cu::CommandEncoder& encoder,
    const std::vector<const mx::array*>& reads,
    const std::vector<mx::array*>& writes) {
  for (const mx::array* x : reads)
    if (x)
      encoder.set_input_array(*x);
  for (mx::array* x : writes)
    if (x)
      encoder.set_output_array(*x);
}

// The outputs that did not certify (kernels' OpenList) for a launch of
// `outputs` outputs: one bit each (an eighth of a byte per output, and no
// list that can fill up), cleared by a node of its own.
struct OpenOutputs {
  mx::array bits;
  OpenList list;
};

// A grid-stride launch over `items` items: enough blocks of 256 threads to
// fill the device a few times over, no more.
dim3 grid_stride_blocks(int device, int64_t items) {
  const int64_t wanted = (items + 255) / 256;
  const int64_t most = 4 * int64_t{cuda::device_info(device).multiprocessors};
  return dim3(
      static_cast<unsigned>(
          std::max<int64_t>(1, std::min<int64_t>(wanted, most))));
}

OpenOutputs
open_outputs(mx::cu::CommandEncoder& encoder, int device, int64_t outputs) {
  const int64_t words = std::max<int64_t>((outputs + 31) / 32, 1);
  OpenOutputs o{scratch(encoder, words * sizeof(unsigned)), {}};
  o.list = OpenList{data_of<unsigned>(o.bits), words};
  register_buffers(encoder, {}, {&o.bits});
  encoder.add_kernel_node_ex(
      cuda::get_kernel(device, Precision::Extended, "clear_open_bits", false),
      grid_stride_blocks(device, words),
      dim3(256),
      {},
      0u,
      o.list.bits,
      o.list.words);
  return o;
}

// Threads per block of `kernel` (recompute_open[_sum]) with `shared_bytes`
// of staged rows: the most threads resident per SM (the registers hold 512),
// in the most blocks among equals. Each block walks its rows one at a time
// and each row's phases (bitmap, staging, sums, certification) wait on one
// another, so short rows want many blocks in flight (4 of 128 threads at L =
// 4096) and a row that fills the shared memory wants every warp in its block
// (512 threads at L = 16384, where 256 left half the registers unused).
int recompute_threads(int device, CUfunction kernel, size_t shared_bytes) {
  int best = kRecomputeMaxThreads;
  int64_t best_resident = 0;
  for (int threads = kRecomputeMaxThreads; threads >= 128; threads /= 2) {
    const int64_t resident =
        int64_t{cuda::resident_blocks(device, kernel, threads, shared_bytes)} *
        threads;
    if (resident >= best_resident) {
      best_resident = resident;
      best = threads;
    }
  }
  return best;
}

// Step 3 of kernels/certify.h: the outputs `open` marks, recomputed by
// `kernel` (recompute_open, recompute_open_sum: the running stage, groups of
// warps per marked output, blocks over slices of the output rows), then what
// that leaves marked by `undecided` (recompute_undecided[_sum]: compensated,
// then exact, a warp per output, the grid over the bitmap). Both read
// `reads` and write `out`, rows of out_len outputs; `kernel` takes
// `shared_bytes` of dynamic shared memory and `windows` work items per row
// where it sets them (recompute_open_windows: a block each), else 0 (slices
// of the rows, chosen here). Their arguments: `common`, then for `kernel`
// `extra`, the items per row and the list, for `undecided` the list.
template <class... Common, class... Extra>
void recompute_marked(
    mx::cu::CommandEncoder& encoder,
    int device,
    const char* kernel,
    const char* undecided,
    const std::vector<const mx::array*>& reads,
    mx::array& out,
    int64_t out_len,
    OpenOutputs& open,
    size_t shared_bytes,
    int windows,
    std::tuple<Common...> common,
    std::tuple<Extra...> extra) {
  register_buffers(encoder, reads, {&out, &open.bits});
  const int64_t rows = std::max<int64_t>(
      static_cast<int64_t>(out.size()) / std::max<int64_t>(out_len, 1), 1);
  CUfunction running =
      cuda::get_kernel(device, Precision::Extended, kernel, false);
  const int threads = recompute_threads(device, running, shared_bytes);
  const int64_t most = 8 * int64_t{cuda::device_info(device).multiprocessors} *
      kRecomputeThreads / threads;
  // Few long rows (B = 1): their marked outputs spread over several blocks.
  int slices = // (not const: the encoder takes the arguments' addresses)
      static_cast<int>(std::clamp<int64_t>((most + rows - 1) / rows, 1, 64));
  int64_t blocks = std::min<int64_t>(rows * slices, most);
  if (windows > 0) {
    slices = windows;
    blocks = std::min<int64_t>(rows * windows, INT32_MAX);
  }
  auto args_of_kernel = std::tuple_cat(common, extra);
  std::apply(
      [&](auto&... args) {
        encoder.add_kernel_node_ex(
            running,
            dim3(static_cast<unsigned>(blocks)),
            dim3(threads),
            {},
            static_cast<uint32_t>(shared_bytes),
            args...,
            slices,
            open.list);
      },
      args_of_kernel);
  register_buffers(encoder, reads, {&out, &open.bits});
  std::apply(
      [&](auto&... args) {
        encoder.add_kernel_node_ex(
            cuda::get_kernel(device, Precision::Extended, undecided, false),
            grid_stride_blocks(device, open.list.words / kOpenWordsPerThread),
            dim3(kRecomputeThreads),
            {},
            0u,
            args...,
            open.list);
      },
      common);
}

// The prefixes of a row's a and b that recompute_open stages in shared
// memory: whole rows where they fit, else as much of each as fits, if that
// is at least half of the rows (a range of products is read from there only
// when it lies within both prefixes; the staging takes the shared memory
// that would otherwise hold more blocks for the global reads).
struct StagedLengths {
  int a;
  int b;
};

StagedLengths staged_lengths(int device, int64_t a_len, int64_t b_len) {
  const int64_t room =
      cuda::max_dynamic_shared(
          cuda::get_kernel(
              device, Precision::Extended, "recompute_open", false)) /
      static_cast<int64_t>(sizeof(float));
  const int64_t b = std::min(b_len, std::max(room / 2, room - a_len));
  const int64_t a = std::min(a_len, room - b);
  if (2 * (a + b) < a_len + b_len)
    return {0, 0};
  return {static_cast<int>(a), static_cast<int>(b)};
}

// One launch shape: the row storage (shared or workspace), block size and
// the blocks that fit at once.
struct RowLaunch {
  CUfunction kernel;
  bool shared;
  int threads;
  size_t row_bytes; // per block
  int resident;
};

// Threads per row: one group of the widest FFT pass each, whole warps.
int64_t row_threads(int64_t n_half) {
  return std::clamp<int64_t>(n_half / kPassPoints, 32, 1024);
}

// The launch of a row kernel compiled for shared and for workspace rows:
// `rows` rows transformed together (conv_rows), each with `buffers` row
// buffers.
template <class T>
RowLaunch row_launch(
    int device,
    CUfunction in_shared,
    CUfunction in_workspace,
    int64_t n_half,
    int buffers,
    int rows = 1) {
  RowLaunch l{};
  l.row_bytes = static_cast<size_t>(rows) * buffers * 2 * n_half * sizeof(T);
  l.shared =
      l.row_bytes <= static_cast<size_t>(cuda::max_dynamic_shared(in_shared));
  l.kernel = l.shared ? in_shared : in_workspace;
  const int cap = std::min(1024, cuda::max_block_threads(l.kernel)) / 32 * 32;
  l.threads = rows *
      static_cast<int>(std::min<int64_t>(row_threads(n_half), cap / rows));
  l.resident = cuda::resident_blocks(
      device, l.kernel, l.threads, l.shared ? l.row_bytes : 0);
  return l;
}

template <class T>
RowLaunch row_launch(
    int device,
    const char* name,
    int64_t n_half,
    int buffers,
    int rows = 1) {
  return row_launch<T>(
      device,
      cuda::get_kernel(device, precision_of<T>(), name, true),
      cuda::get_kernel(device, precision_of<T>(), name, false),
      n_half,
      buffers,
      rows);
}

// Splits of each kernel row's batch in the shared-kernel form (work items
// (kernel row, split) of the output-row launch l, `rows` rows of a split at
// a time): enough for ~4 waves.
int64_t group_splits(const RowLaunch& l, const RowIndex& ix, int rows = 1) {
  return std::clamp<int64_t>(
      (4 * l.resident + ix.outer_count - 1) / ix.outer_count,
      1,
      std::max<int64_t>(1, ix.inner_count / rows));
}

// The blocks of one row-kernel launch: all that are wanted when rows live in
// shared memory, else at most the resident ones, each with a slot of a
// global workspace: the stream's (cuda::stream_buffer), which every row
// kernel registers as written.
struct RowGrid {
  int64_t blocks;
  std::optional<mx::array> workspace;

  template <class T>
  T* slots() {
    return workspace ? data_of<T>(*workspace) : nullptr;
  }
};

RowGrid row_grid(
    mx::cu::CommandEncoder& encoder,
    int device,
    int stream_index,
    const RowLaunch& l,
    int64_t wanted) {
  RowGrid grid{l.shared ? wanted : std::min<int64_t>(wanted, l.resident), {}};
  if (!l.shared)
    grid.workspace = cuda::stream_buffer(
        encoder,
        device,
        stream_index,
        cuda::StreamBuffer::RowWorkspace,
        grid.blocks * l.row_bytes);
  return grid;
}

// Adds row kernel l on its grid. Its arguments: the row pointers `rows`,
// the row index and shape, the FFT tables, `trailing`, then the workspace.
// The caller has registered what the kernel reads and writes but the
// workspace.
template <class T, class... Rows, class... Trailing>
void add_row_kernel(
    mx::cu::CommandEncoder& encoder,
    const RowLaunch& l,
    RowGrid& grid,
    std::tuple<Rows...> rows,
    RowIndex ix, // copies: the encoder takes the arguments' addresses
    ConvShape shape,
    const DeviceFFT<T>& fft,
    Trailing... trailing) {
  FFTShape fs = fft.shape;
  const cpx<T>* twiddles = fft.twiddles;
  const cpx<T>* split = fft.split;
  const IndexPair* pairs = fft.pairs;
  T* workspace = grid.slots<T>();
  register_buffers(encoder, {}, {grid.workspace ? &*grid.workspace : nullptr});
  std::apply(
      [&](auto&... row) {
        encoder.add_kernel_node_ex(
            l.kernel,
            dim3(static_cast<unsigned>(grid.blocks)),
            dim3(l.threads),
            {},
            static_cast<uint32_t>(l.shared ? l.row_bytes : 0),
            row...,
            ix,
            shape,
            fs,
            twiddles,
            split,
            pairs,
            trailing...,
            workspace);
      },
      rows);
}

// The arrays of a row launch and the FFT tables: what every row kernel reads.
template <class T>
struct RowOperands {
  const mx::array& a;
  const mx::array& b;
  const mx::array* bias;
  mx::array& out;
  const DeviceFFT<T>& fft;

  const float* bias_data() const {
    return bias ? mx::gpu_ptr<float>(*bias) : nullptr;
  }
};

// Certified precisions: the list of outputs to recompute, else none.
template <class T>
std::optional<OpenOutputs>
maybe_open_outputs(mx::cu::CommandEncoder& encoder, int device, int64_t n) {
  if (!Certified<T>::value)
    return std::nullopt;
  return open_outputs(encoder, device, n);
}

// An output-row kernel (conv_rows, reduce_rows, sum_rows) on its grid,
// reading `reads` and writing `out` and `writes`. Its arguments: `rows`, the
// row index and shape, the FFT tables, `extra`, the list of the outputs that
// did not certify (certified precisions) and the workspace; then
// recompute(open) adds the node that recomputes those outputs.
template <class T, class Rows, class Recompute, class... Extra>
void launch_output_rows(
    mx::cu::CommandEncoder& encoder,
    int device,
    const RowLaunch& l,
    RowGrid& grid,
    const std::vector<const mx::array*>& reads,
    mx::array& out,
    const std::vector<mx::array*>& writes,
    Rows rows,
    const RowIndex& ix,
    const ConvShape& shape,
    const DeviceFFT<T>& fft,
    Recompute recompute,
    Extra... extra) {
  std::optional<OpenOutputs> open =
      maybe_open_outputs<T>(encoder, device, out.size());
  register_buffers(encoder, reads, {&out, open ? &open->bits : nullptr});
  register_buffers(encoder, {}, writes);
  add_row_kernel<T>(
      encoder,
      l,
      grid,
      rows,
      ix,
      shape,
      fft,
      extra...,
      open ? open->list : OpenList{});
  if (open)
    recompute(*open);
}

// recompute_open for the outputs of a conv_rows (one_term_per_row: each
// output row is one term) or reduce_rows launch that `open` marks.
template <class T>
void recompute_conv_outputs(
    mx::cu::CommandEncoder& encoder,
    int device,
    const RowOperands<T>& op,
    RowIndex ix, // copies: the encoder takes the arguments' addresses
    ConvShape shape,
    OpenOutputs& open,
    bool one_term_per_row) {
  auto recompute =
      [&](const char* kernel, size_t shared_bytes, int windows, auto extra) {
        recompute_marked(
            encoder,
            device,
            kernel,
            // The long rows' undecided outputs: a block each.
            windows > 0 ? "recompute_undecided_long" : "recompute_undecided",
            {&op.a, &op.b, op.bias},
            op.out,
            shape.out_len,
            open,
            shared_bytes,
            windows,
            std::make_tuple(
                mx::gpu_ptr<float>(op.a),
                mx::gpu_ptr<float>(op.b),
                op.bias_data(),
                mx::gpu_ptr<float>(op.out),
                ix,
                shape,
                static_cast<int>(one_term_per_row)),
            extra);
      };
  if (!one_term_per_row && !shape.has_bias) {
    // recompute_open_reduce: a pair of inner rows staged, b 16-byte aligned.
    const int64_t b_offset = (shape.a_len + 3) / 4 * 4;
    const int64_t staged_bytes =
        (b_offset + shape.b_len) * static_cast<int64_t>(sizeof(float));
    if (staged_bytes <=
        cuda::max_dynamic_shared(
            cuda::get_kernel(
                device, Precision::Extended, "recompute_open_reduce", false)))
      return recompute(
          "recompute_open_reduce",
          static_cast<size_t>(staged_bytes),
          0,
          std::make_tuple(static_cast<int>(b_offset)));
  }
  StagedLengths staged = one_term_per_row
      ? staged_lengths(device, shape.a_len, shape.b_len)
      : StagedLengths{0, 0};
  if (one_term_per_row && staged.a + staged.b == 0)
    // Rows too long to stage: windows of outputs, chunks of the rows staged.
    return recompute(
        "recompute_open_windows",
        kWindowChunk * sizeof(double) + kWindowStagedA * sizeof(float),
        static_cast<int>((shape.out_len + kWindowOutputs - 1) / kWindowOutputs),
        std::make_tuple());
  recompute(
      "recompute_open",
      (staged.a + staged.b) * sizeof(float),
      0,
      std::make_tuple(staged.a, staged.b));
}

// conv_rows and reduce_rows: one pair of rows (a, b) per term, one bias.
template <class T, class... Extra>
void launch_pair_rows(
    mx::cu::CommandEncoder& encoder,
    int device,
    const RowLaunch& l,
    RowGrid& grid,
    const RowOperands<T>& op,
    RowIndex ix, // copies: the encoder takes the arguments' addresses
    ConvShape shape,
    const std::vector<const mx::array*>& extra_reads,
    const std::vector<mx::array*>& extra_writes,
    bool one_term_per_row,
    Extra... extra) {
  std::vector<const mx::array*> reads{&op.a, &op.b, op.bias};
  reads.insert(reads.end(), extra_reads.begin(), extra_reads.end());
  launch_output_rows<T>(
      encoder,
      device,
      l,
      grid,
      reads,
      op.out,
      extra_writes,
      std::make_tuple(
          mx::gpu_ptr<float>(op.a),
          mx::gpu_ptr<float>(op.b),
          op.bias_data(),
          mx::gpu_ptr<float>(op.out)),
      ix,
      shape,
      op.fft,
      [&](OpenOutputs& open) {
        recompute_conv_outputs<T>(
            encoder, device, op, ix, shape, open, one_term_per_row);
      },
      extra...);
}

// The kernel rows' spectra (`entries` values each) and, after them, their
// norms and spectrum bounds (norms_per_row doubles each), in the stream's
// buffer (cuda::stream_buffer: per-call buffers were held until their graphs
// had run, for every convolution of a model's forward). The spectra kernel and
// the row kernel both register it as written, so the next convolution's
// spectra wait for this one's rows.
template <class T>
struct KernelSpectra {
  mx::array& buffer;
  cpx<T>* spectra;
  double* norms;
};

template <class T>
KernelSpectra<T> kernel_spectra_buffer(
    mx::cu::CommandEncoder& encoder,
    int device,
    int stream_index,
    int64_t rows,
    int64_t entries,
    int norms_per_row = 2) {
  const size_t spectra_bytes = rows * entries * sizeof(cpx<T>);
  mx::array& buffer = cuda::stream_buffer(
      encoder,
      device,
      stream_index,
      cuda::StreamBuffer::Spectra,
      spectra_bytes + norms_per_row * rows * sizeof(double));
  cpx<T>* spectra = data_of<cpx<T>>(buffer);
  double* norms = reinterpret_cast<double*>(
      reinterpret_cast<char*>(spectra) + spectra_bytes);
  return {buffer, spectra, norms};
}

// Kernel spectra (and when certifying the norms, then the spectrum bounds:
// kernel_spectra), once per kernel row b (operand B of ix, one per outer
// index), in kernel_spectra_buffer.
template <class T>
KernelSpectra<T> launch_kernel_spectra(
    mx::cu::CommandEncoder& encoder,
    int device,
    int stream_index,
    const mx::array& b,
    RowIndex ix, // copies: the encoder takes the arguments' addresses
    ConvShape shape,
    const DeviceFFT<T>& fft) {
  const FFTShape& fs = fft.shape;
  RowLaunch spec = row_launch<T>(device, "kernel_spectra", fs.n_half, 1);
  KernelSpectra<T> ks = kernel_spectra_buffer<T>(
      encoder, device, stream_index, ix.outer_count, 2 * fs.num_pairs);
  RowGrid spec_grid =
      row_grid(encoder, device, stream_index, spec, ix.outer_count);
  register_buffers(encoder, {&b}, {&ks.buffer});
  add_row_kernel<T>(
      encoder,
      spec,
      spec_grid,
      std::make_tuple(mx::gpu_ptr<float>(b)),
      ix,
      shape,
      fft,
      ks.spectra,
      ks.norms);
  return ks;
}

// The split rows' twist table (gpu::make_twist_table), or the deep split
// rows' (gpu::make_deep_twist_table), on the device.
const cpx<double>* device_twist(int device, int64_t fft_size, bool deep) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int64_t, bool>, const cpx<double>*> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto key = std::make_tuple(device, fft_size, deep);
  auto it = cache.find(key);
  if (it != cache.end())
    return it->second;
  const std::vector<cpx<double>> t = deep
      ? gpu::make_deep_twist_table<double>(fft_size)
      : gpu::make_twist_table<double>(fft_size);
  const auto* d = reinterpret_cast<const cpx<double>*>(
      cuda::upload_constant(t.data(), t.size() * sizeof(t[0])));
  return cache.emplace(key, d).first->second;
}

// The launch of the split rows' row kernel for the geometry, where split
// rows apply (gpu::split_rows_apply): split_conv_rows where its halves (N/4
// complex doubles) fit in shared memory (N = 32768 on an H100/H200), else
// deep_split_conv_rows where its pieces (N/8) do (N = 65536; N = 131072
// would need 256 KiB).
struct SplitLaunch {
  RowLaunch rows;
  bool deep;
};

std::optional<SplitLaunch> split_rows_launch(
    int device,
    const ConvGeometry& geo) {
  if (!gpu::split_rows_apply(geo))
    return std::nullopt;
  RowLaunch l =
      row_launch<double>(device, "split_conv_rows", geo.fft_size / 4, 1);
  if (l.shared)
    return SplitLaunch{l, false};
  if (!gpu::deep_split_rows_apply(geo))
    return std::nullopt;
  l = row_launch<double>(device, "deep_split_conv_rows", geo.fft_size / 8, 1);
  if (!l.shared)
    return std::nullopt;
  return SplitLaunch{l, true};
}

// split_kernel_spectra: the split spectra of the kernel rows b (operand B of
// ix, one per outer index) and their folds' norms (3 per row), with the
// tables of size N/2, in kernel_spectra_buffer; with `deep`
// deep_split_kernel_spectra (the tables of size N/4, kDeepNorms per row).
KernelSpectra<double> launch_split_kernel_spectra(
    mx::cu::CommandEncoder& encoder,
    int device,
    int stream_index,
    const mx::array& b,
    RowIndex ix, // copies: the encoder takes the arguments' addresses
    ConvShape shape,
    const DeviceFFT<double>& fft,
    const cpx<double>* twist,
    bool deep = false) {
  RowLaunch spec = row_launch<double>(
      device,
      deep ? "deep_split_kernel_spectra" : "split_kernel_spectra",
      fft.shape.n_half,
      1);
  KernelSpectra<double> ks = kernel_spectra_buffer<double>(
      encoder,
      device,
      stream_index,
      ix.outer_count,
      deep ? deep_split_spectrum_stride(fft.shape)
           : split_spectrum_stride(fft.shape),
      deep ? kDeepNorms : 3);
  RowGrid spec_grid =
      row_grid(encoder, device, stream_index, spec, ix.outer_count);
  register_buffers(encoder, {&b}, {&ks.buffer});
  add_row_kernel<double>(
      encoder,
      spec,
      spec_grid,
      std::make_tuple(mx::gpu_ptr<float>(b)),
      ix,
      shape,
      fft,
      twist,
      ks.spectra,
      ks.norms);
  return ks;
}

// The shared-kernel form by split rows (rfft_conv_kernels.cuh,
// split_kernel_spectra and split_conv_rows, with the tables of size N/2 and
// a stash slot of N/2 doubles per block), or by deep split rows
// (deep_split_kernel_spectra and deep_split_conv_rows, with the tables of
// size N/4 and a slot of 3N/4 doubles), with their twist, the blocks at most
// the resident ones, the slots in the stream's row workspace.
void launch_split_rows(
    mx::cu::CommandEncoder& encoder,
    int device,
    int stream_index,
    const ConvGeometry& geo,
    RowIndex ix, // copies: the encoder takes the arguments' addresses
    const SplitLaunch& split,
    const RowOperands<double>& op) {
  const bool deep = split.deep;
  const RowLaunch& rows = split.rows;
  const DeviceFFT<double>& fft =
      device_fft<double>(device, geo.fft_size / (deep ? 4 : 2));
  const cpx<double>* twist = device_twist(device, geo.fft_size, deep);
  const FFTShape& fs = fft.shape;
  // At least 8 blocks to a kernel row where the batch allows: with one
  // block per SM and one kernel row each, the spectra in use (256 KiB a row
  // at N = 32768) and the stash slots together would fill L2.
  const int64_t splits =
      std::max(group_splits(rows, ix), std::min<int64_t>(8, ix.inner_count));
  ConvShape shape = gpu::conv_shape(geo, op.bias != nullptr, splits);
  KernelSpectra<double> ks = launch_split_kernel_spectra(
      encoder, device, stream_index, op.b, ix, shape, fft, twist, deep);
  mx::array& spectra_buffer = ks.buffer;
  cpx<double>* spectra = ks.spectra;
  double* norms = ks.norms;

  RowGrid grid{
      std::min<int64_t>(ix.outer_count * splits, rows.resident), std::nullopt};
  grid.workspace = cuda::stream_buffer(
      encoder,
      device,
      stream_index,
      cuda::StreamBuffer::RowWorkspace,
      grid.blocks * (deep ? 6 : 2) * int64_t{fs.n_half} * sizeof(double));
  launch_pair_rows<double>(
      encoder,
      device,
      rows,
      grid,
      RowOperands<double>{op.a, op.b, op.bias, op.out, fft},
      ix,
      shape,
      {},
      {&spectra_buffer},
      true,
      twist,
      spectra,
      norms);
}

template <class T>
void launch_shared_kernel(
    mx::cu::CommandEncoder& encoder,
    int device,
    int stream_index,
    const ConvGeometry& geo,
    const mx::Shape& full,
    const RowOperands<T>& op) {
  RowIndex ix =
      gpu::make_row_index(full, op.b.shape(), {&op.a, &op.b, op.bias, &op.out});
  const FFTShape& fs = op.fft.shape;
  // Short rows go several to a block (~256 threads), which then reads each
  // spectrum and split-table entry once for all of them.
  const int together = static_cast<int>(std::clamp<int64_t>(
      std::min<int64_t>(256 / row_threads(fs.n_half), ix.inner_count), 1, 8));
  RowLaunch rows = row_launch<T>(device, "conv_rows", fs.n_half, 1, together);
  const int rows_per_block = rows.shared ? together : 1;
  if (rows_per_block != together)
    rows = row_launch<T>(device, "conv_rows", fs.n_half, 1);
  if constexpr (Certified<T>::value) {
    if (!rows.shared)
      if (const std::optional<SplitLaunch> split =
              split_rows_launch(device, geo))
        return launch_split_rows(
            encoder, device, stream_index, geo, ix, *split, op);
  }
  const int64_t splits = group_splits(rows, ix, rows_per_block);
  ConvShape shape =
      gpu::conv_shape(geo, op.bias != nullptr, splits, rows_per_block);
  KernelSpectra<T> k = launch_kernel_spectra<T>(
      encoder, device, stream_index, op.b, ix, shape, op.fft);

  RowGrid grid =
      row_grid(encoder, device, stream_index, rows, ix.outer_count * splits);
  launch_pair_rows<T>(
      encoder,
      device,
      rows,
      grid,
      op,
      ix,
      shape,
      {},
      {&k.buffer},
      true,
      k.spectra,
      k.norms);
}

template <class T>
void launch_reduce(
    mx::cu::CommandEncoder& encoder,
    int device,
    int stream_index,
    const ConvGeometry& geo,
    const mx::Shape& full,
    const RowOperands<T>& op) {
  RowIndex ix = gpu::make_row_index(
      full, op.out.shape(), {&op.a, &op.b, op.bias, &op.out});
  const FFTShape& fs = op.fft.shape;
  RowLaunch l = row_launch<T>(device, "reduce_rows", fs.n_half, 2);
  // acc has a slot per block: the grid never exceeds the resident blocks.
  RowGrid grid = row_grid(
      encoder,
      device,
      stream_index,
      l,
      std::min<int64_t>(ix.outer_count, l.resident));
  mx::array acc_buffer = scratch(
      encoder, grid.blocks * 2 * int64_t{fs.num_pairs} * sizeof(cpx<T>));
  launch_pair_rows<T>(
      encoder,
      device,
      l,
      grid,
      op,
      ix,
      gpu::conv_shape(geo, op.bias != nullptr, 1),
      {},
      {&acc_buffer},
      false,
      data_of<cpx<T>>(acc_buffer));
}

// ConvolveSum (the jvp): each output row sums its terms as reduce_rows sums
// a target's, from operands listed in SumOperands.
template <class T>
void launch_sum(
    mx::cu::CommandEncoder& encoder,
    int device,
    int stream_index,
    int64_t period,
    const std::vector<mx::array>& in,
    int conv_terms,
    mx::array& out) {
  const gpu::SumLaunch sum = gpu::sum_launch(period, in, conv_terms, out);
  const DeviceFFT<T>& fft = device_fft<T>(device, sum.geo.fft_size);
  RowLaunch l = row_launch<T>(device, "sum_rows", fft.shape.n_half, 2);
  // acc has a slot per block: the grid never exceeds the resident blocks.
  RowGrid grid = row_grid(
      encoder,
      device,
      stream_index,
      l,
      std::min<int64_t>(sum.ix.outer_count, l.resident));
  mx::array acc_buffer = scratch(
      encoder, grid.blocks * 2 * int64_t{fft.shape.num_pairs} * sizeof(cpx<T>));
  SumData data{};
  std::vector<const mx::array*> reads;
  for (size_t k = 0; k < in.size(); ++k) {
    data.operand[k] = mx::gpu_ptr<float>(in[k]);
    reads.push_back(&in[k]);
  }
  ConvShape shape = gpu::conv_shape(sum.geo, false, 1);
  RowIndex ix = sum.ix;
  SumOperands operands = sum.operands;
  launch_output_rows<T>(
      encoder,
      device,
      l,
      grid,
      reads,
      out,
      {&acc_buffer},
      std::make_tuple(data, mx::gpu_ptr<float>(out)),
      ix,
      shape,
      fft,
      [&](OpenOutputs& open) {
        recompute_marked(
            encoder,
            device,
            "recompute_open_sum",
            "recompute_undecided_sum",
            reads,
            out,
            shape.out_len,
            open,
            0,
            0,
            std::make_tuple(data, mx::gpu_ptr<float>(out), ix, shape, operands),
            std::make_tuple());
      },
      operands,
      data_of<cpx<T>>(acc_buffer));
}

template <class T>
void convolve(
    mx::cu::CommandEncoder& encoder,
    int device,
    int stream_index,
    ConvVariant variant,
    int64_t period,
    const std::vector<mx::array>& in,
    bool has_bias,
    int conv_terms,
    mx::array& out) {
  if (variant == ConvVariant::ConvolveSum)
    return launch_sum<T>(
        encoder, device, stream_index, period, in, conv_terms, out);
  const gpu::ConvLaunch c =
      gpu::conv_launch(variant, period, in, has_bias, out);
  const RowOperands<T> op{
      c.a, c.b, c.bias, out, device_fft<T>(device, c.geo.fft_size)};
  if (c.one_to_one)
    launch_shared_kernel<T>(encoder, device, stream_index, c.geo, c.full, op);
  else
    launch_reduce<T>(encoder, device, stream_index, c.geo, c.full, op);
}

// gradient_rows' launch: two rows a block (g's and u's), with the block
// size, a full row_threads per row or half as many, that keeps more threads
// resident per SM; on a tie the smaller blocks, which overlap each other's
// barriers. Or its stashed form (one row in shared memory, U in a slot of
// the row workspace: `stash` true) where that keeps more threads resident
// (double at N = 8192: three blocks per SM instead of one) or the two rows
// do not fit in shared memory. Else the two rows in the workspace, full size:
// the fewer blocks, the fewer workspace slots (two rows each) compete for L2.
struct GradientLaunch {
  RowLaunch rows;
  bool stash;
};

template <class T>
GradientLaunch gradient_launch(int device, int64_t n_half) {
  // The stashed form: gradient_rows in shared memory with a workspace.
  CUfunction shared =
      cuda::get_kernel(device, precision_of<T>(), "gradient_rows", true);
  const RowLaunch one_row = row_launch<T>(device, shared, shared, n_half, 1);
  RowLaunch full = row_launch<T>(device, "gradient_rows", n_half, 1, 2);
  if (!full.shared)
    return {one_row.shared ? one_row : full, one_row.shared};
  RowLaunch half = full;
  half.threads = std::max(64, full.threads / 64 * 32);
  half.resident = cuda::resident_blocks(
      device, half.kernel, half.threads, half.shared ? half.row_bytes : 0);
  const RowLaunch& two_rows = int64_t{half.resident} * half.threads >=
          int64_t{full.resident} * full.threads
      ? half
      : full;
  const bool stash = int64_t{one_row.resident} * one_row.threads >
      int64_t{two_rows.resident} * two_rows.threads;
  return {stash ? one_row : two_rows, stash};
}

// The split form of the gradients (split_gradient_rows) where neither
// gradient_rows form fits in shared memory (double at N = 32768) and split
// gradient rows apply (gpu::split_gradients_apply): its launch (N/4 complex
// doubles in shared memory), else none.
std::optional<RowLaunch> split_gradients_launch(
    int device,
    const ConvGeometry& u_geo,
    const ConvGeometry& k_geo) {
  if (!gpu::split_gradients_apply(u_geo, k_geo))
    return std::nullopt;
  RowLaunch l =
      row_launch<double>(device, "split_gradient_rows", u_geo.fft_size / 4, 1);
  if (!l.shared)
    return std::nullopt;
  return l;
}

// RFFTConvGradients (in = g, k, u [, bias]; outs = grad u, grad k): the
// spectra of k, gradient_rows (or its stashed or split form), then the
// recomputation of each gradient's outputs that did not certify (as the
// CorrelateInput and CorrelateKernel launches recompute theirs).
template <class T>
void launch_gradients(
    mx::cu::CommandEncoder& encoder,
    int device,
    int stream_index,
    int64_t period,
    const std::vector<mx::array>& in,
    bool has_bias,
    std::vector<mx::array>& outs) {
  const mx::array &g = in[0], &k = in[1], &u = in[2];
  const mx::array* bias = has_bias ? &in[3] : nullptr;
  mx::array &grad_u = outs[0], &grad_k = outs[1];
  const mx::Shape full = batch_shape(g.shape());
  const int64_t L = g.shape().back(), Lk = k.shape().back();
  const ConvGeometry u_geo =
      conv_geometry(ConvVariant::CorrelateInput, period, L, Lk, L);
  const ConvGeometry k_geo =
      conv_geometry(ConvVariant::CorrelateKernel, period, L, L, Lk);
  // Targets of grad k = kernel rows: the same outer dims in both.
  RowIndex ix = gpu::make_row_index(full, k.shape(), {&g, &k, bias, &grad_u});
  RowIndex u_ix =
      gpu::make_row_index(full, k.shape(), {&g, &u, nullptr, &grad_k});
  ConvShape u_shape = gpu::conv_shape(u_geo, has_bias, 1);
  ConvShape k_shape = gpu::conv_shape(k_geo, false, 1);
  const DeviceFFT<T>& full_fft = device_fft<T>(device, u_geo.fft_size);
  const GradientLaunch launch =
      gradient_launch<T>(device, full_fft.shape.n_half);
  std::optional<RowLaunch> split;
  if constexpr (Certified<T>::value)
    if (!launch.rows.shared)
      split = split_gradients_launch(device, u_geo, k_geo);
  // Split rows: the tables of size N/2, k's split spectra, a stash slot of N
  // values a block and split accumulators.
  const DeviceFFT<T>& fft =
      split ? device_fft<T>(device, u_geo.fft_size / 2) : full_fft;
  const cpx<T>* twist = nullptr;
  if constexpr (Certified<T>::value)
    if (split)
      twist = device_twist(device, u_geo.fft_size, false);
  KernelSpectra<T> spectra = [&] {
    if constexpr (Certified<T>::value)
      if (split)
        return launch_split_kernel_spectra(
            encoder, device, stream_index, k, ix, u_shape, fft, twist);
    return launch_kernel_spectra<T>(
        encoder, device, stream_index, k, ix, u_shape, fft);
  }();
  const RowLaunch& l = split ? *split : launch.rows;
  // acc has a slot per block: the grid never exceeds the resident blocks.
  RowGrid grid = row_grid(
      encoder,
      device,
      stream_index,
      l,
      std::min<int64_t>(ix.outer_count, l.resident));
  if (launch.stash || split) // U's (and grad u's half's) slots
    grid.workspace = cuda::stream_buffer(
        encoder,
        device,
        stream_index,
        cuda::StreamBuffer::RowWorkspace,
        grid.blocks * (split ? 2 : 1) * l.row_bytes);
  const int64_t acc_entries =
      split ? split_accumulator_stride(fft.shape) : 2 * fft.shape.num_pairs;
  mx::array acc_buffer =
      scratch(encoder, grid.blocks * acc_entries * sizeof(cpx<T>));
  std::optional<OpenOutputs> open_u =
      maybe_open_outputs<T>(encoder, device, grad_u.size());
  std::optional<OpenOutputs> open_k =
      maybe_open_outputs<T>(encoder, device, grad_k.size());
  register_buffers(encoder, {&g, &k, &u, bias}, {&grad_u, &grad_k});
  register_buffers(
      encoder,
      {},
      {&spectra.buffer,
       &acc_buffer,
       open_u ? &open_u->bits : nullptr,
       open_k ? &open_k->bits : nullptr});
  const auto rows = std::make_tuple(
      mx::gpu_ptr<float>(g),
      mx::gpu_ptr<float>(k),
      mx::gpu_ptr<float>(u),
      bias ? mx::gpu_ptr<float>(*bias) : nullptr,
      mx::gpu_ptr<float>(grad_u),
      mx::gpu_ptr<float>(grad_k));
  const auto trailing = std::make_tuple(
      u_ix,
      k_shape,
      static_cast<const cpx<T>*>(spectra.spectra),
      static_cast<const double*>(spectra.norms),
      data_of<cpx<T>>(acc_buffer),
      open_u ? open_u->list : OpenList{},
      open_k ? open_k->list : OpenList{});
  std::apply(
      [&](auto... rest) {
        if (split)
          add_row_kernel<T>(
              encoder, l, grid, rows, ix, u_shape, fft, twist, rest...);
        else
          add_row_kernel<T>(encoder, l, grid, rows, ix, u_shape, fft, rest...);
      },
      trailing);
  if (open_u)
    recompute_conv_outputs<T>(
        encoder, device, {g, k, bias, grad_u, fft}, ix, u_shape, *open_u, true);
  if (open_k)
    recompute_conv_outputs<T>(
        encoder,
        device,
        {g, u, nullptr, grad_k, fft},
        u_ix,
        k_shape,
        *open_k,
        false);
}

template <class T>
void bias_gradient(
    mx::cu::CommandEncoder& encoder,
    int device,
    const mx::array& g,
    const mx::array& u,
    mx::array& out) {
  const mx::Shape full = batch_shape(g.shape());
  RowIndex ix = gpu::make_row_index(full, out.shape(), {&g, &u, nullptr, &out});
  int64_t len = g.shape().back();
  int sum_over_time = out.shape().back() == 1;
  const int64_t threads = 256;
  const int64_t total = ix.outer_count * (sum_over_time ? 1 : len);
  CUfunction kernel =
      cuda::get_kernel(device, precision_of<T>(), "product_sum", false);
  const float* g_ptr = mx::gpu_ptr<float>(g);
  const float* u_ptr = mx::gpu_ptr<float>(u);
  float* out_ptr = mx::gpu_ptr<float>(out);
  register_buffers(encoder, {&g, &u}, {&out});
  encoder.add_kernel_node_ex(
      kernel,
      dim3(static_cast<unsigned>((total + threads - 1) / threads)),
      dim3(threads),
      {},
      0u,
      g_ptr,
      u_ptr,
      out_ptr,
      ix,
      len,
      sum_over_time);
}

// dd runs the double engine with certification, as on the CPU: extended and
// dd give the same, correctly rounded bits.
template <class Fn>
void with_working_type(Precision p, Fn fn) {
  if (p == Precision::Float32)
    return fn(float{});
  return fn(double{});
}

// The stream's encoder, with the output allocated.
mx::cu::CommandEncoder& prepare(mx::Stream s, mx::array& out, int& device) {
  return cuda::prepare(s, {&out}, device);
}

// pair_rfft_conv (Convolve) and its gradients (CorrelateInput,
// CorrelateKernel: a reversed and the outputs gathered back to front, as the
// geometry says): in = a_hi, a_lo, b_hi, b_lo [, bias], outs = hi, lo, one
// output row per row of a (u, or g for the gradients); b (k, or u for the
// kernel's gradient) is transformed once per row of its own. The
// shared-kernel form with the pair kernels of pair_kernels.cuh, in double and
// uncertified (the outputs are not rounded), as the CPU's pair_convolve.
// lo_ix numbers the rows of the lo parts as ix numbers those of the hi parts.
void launch_pair_conv(
    mx::cu::CommandEncoder& encoder,
    int device,
    int stream_index,
    ConvVariant variant,
    int64_t period,
    const std::vector<mx::array>& in,
    bool has_bias,
    std::vector<mx::array>& outs) {
  const mx::array &u_hi = in[0], &u_lo = in[1], &k_hi = in[2], &k_lo = in[3];
  const mx::array* bias = has_bias ? &in[4] : nullptr;
  const gpu::PairConvLaunch c =
      gpu::pair_conv_launch(variant, period, in, has_bias, outs);
  const ConvGeometry& geo = c.geo;
  const RowIndex &ix = c.ix, &lo_ix = c.lo_ix;
  const DeviceFFT<double>& fft = device_fft<double>(device, geo.fft_size);
  const FFTShape& fs = fft.shape;
  auto pair_launch = [&](const std::string& name) {
    const std::string kernel = "mlx_precise::gpu::" + name;
    return row_launch<double>(
        device,
        cuda::get_pair_kernel(device, kernel + "<true>"),
        cuda::get_pair_kernel(device, kernel + "<false>"),
        fs.n_half,
        1);
  };
  RowLaunch spec = pair_launch("pair_kernel_spectra");
  RowLaunch rows = pair_launch("pair_conv_rows");
  const int64_t splits = group_splits(rows, ix);
  ConvShape shape = gpu::conv_shape(geo, has_bias, splits);
  // In the stream's buffer, written by both kernels (launch_shared_kernel).
  mx::array& spectra_buffer = cuda::stream_buffer(
      encoder,
      device,
      stream_index,
      cuda::StreamBuffer::Spectra,
      ix.outer_count * 2 * int64_t{fs.num_pairs} * sizeof(cpx<double>));
  cpx<double>* spectra = data_of<cpx<double>>(spectra_buffer);

  RowGrid spec_grid =
      row_grid(encoder, device, stream_index, spec, ix.outer_count);
  register_buffers(encoder, {&k_hi, &k_lo}, {&spectra_buffer});
  add_row_kernel<double>(
      encoder,
      spec,
      spec_grid,
      std::make_tuple(mx::gpu_ptr<float>(k_hi), mx::gpu_ptr<float>(k_lo)),
      ix,
      shape,
      fft,
      lo_ix,
      spectra);

  RowGrid grid =
      row_grid(encoder, device, stream_index, rows, ix.outer_count * splits);
  register_buffers(
      encoder, {&u_hi, &u_lo, bias}, {&outs[0], &outs[1], &spectra_buffer});
  add_row_kernel<double>(
      encoder,
      rows,
      grid,
      std::make_tuple(
          mx::gpu_ptr<float>(u_hi),
          mx::gpu_ptr<float>(u_lo),
          bias ? mx::gpu_ptr<float>(*bias) : nullptr,
          mx::gpu_ptr<float>(outs[0]),
          mx::gpu_ptr<float>(outs[1])),
      ix,
      shape,
      fft,
      lo_ix,
      static_cast<const cpx<double>*>(spectra));
}

// The pair forms: both outputs allocated, then launch_pair_conv.
void eval_pair_conv(
    mx::Stream s,
    ConvVariant variant,
    int64_t period,
    bool has_bias,
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  int device = 0;
  auto& encoder = prepare(s, outputs[0], device);
  outputs[1].set_data(cuda::device_malloc(encoder, outputs[1].nbytes()));
  if (outputs[0].size() == 0)
    return;
  launch_pair_conv(
      encoder, device, s.index, variant, period, inputs, has_bias, outputs);
}

} // namespace

void RFFTConv::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  int device = 0;
  auto& encoder = prepare(stream(), out, device);
  with_working_type(precision_, [&](auto tag) {
    convolve<decltype(tag)>(
        encoder,
        device,
        stream().index,
        variant_,
        period_,
        inputs,
        has_bias_,
        conv_terms_,
        out);
  });
}

void RFFTConvGradients::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  int device = 0;
  auto& encoder = cuda::prepare(stream(), {&outputs[0], &outputs[1]}, device);
  with_working_type(precision_, [&](auto tag) {
    launch_gradients<decltype(tag)>(
        encoder, device, stream().index, period_, inputs, has_bias_, outputs);
  });
}

void BiasGradient::eval_gpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  int device = 0;
  auto& encoder = prepare(stream(), out, device);
  with_working_type(precision_, [&](auto tag) {
    bias_gradient<decltype(tag)>(encoder, device, inputs[0], inputs[1], out);
  });
}

// Inputs u_hi, u_lo, k_hi, k_lo [, bias]; outputs hi, lo (launch_pair_conv).
void PairRFFTConv::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  eval_pair_conv(
      stream(), ConvVariant::Convolve, period_, has_bias_, inputs, outputs);
}

// Inputs g_hi, g_lo, then k_hi, k_lo [, bias] (CorrelateInput) or u_hi, u_lo
// (CorrelateKernel); outputs hi, lo (launch_pair_conv).
void PairRFFTCorrelate::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  eval_pair_conv(stream(), variant_, period_, has_bias_, inputs, outputs);
}

} // namespace mlx_precise
