// CPU FFT convolution, templated over the working precision T (float, double,
// ff). Compiled once per instruction-set build (MP_CPU_ISA); see conv_job.h.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "backend/cpu/conv_job.h"
#include "backend/cpu/parallel.h"
#include "kernels/fft_plan.h"
#include "kernels/rfft_conv_core.h"

namespace mlx_precise::cpu::MP_CPU_ISA {
namespace {

// ---------------------------------------------------------------- arrays ----

// Working arrays in structure-of-arrays form: float and double are plain
// arrays; a double-word array keeps its hi and lo parts in two planes, because
// an array of {hi, lo} pairs keeps gcc from vectorising any loop over it. The
// hot loops carry `#pragma GCC ivdep`: their iterations never overlap.
template <class T>
struct Span {
  T* v;
  MP_INLINE T load(int64_t i) const {
    return v[i];
  }
  MP_INLINE void store(int64_t i, T x) const {
    v[i] = x;
  }
  MP_INLINE Span at(int64_t offset) const {
    return Span{v + offset};
  }
};

template <>
struct Span<ff> {
  float* hi;
  float* lo;
  MP_INLINE ff load(int64_t i) const {
    return ff{hi[i], lo[i]};
  }
  MP_INLINE void store(int64_t i, ff x) const {
    hi[i] = x.hi;
    lo[i] = x.lo;
  }
  MP_INLINE Span at(int64_t offset) const {
    return Span{hi + offset, lo + offset};
  }
};

template <class T>
struct Scalar {
  using type = T;
  static constexpr int planes = 1;
};
template <>
struct Scalar<ff> {
  using type = float;
  static constexpr int planes = 2;
};

template <class T>
class Buffer {
 public:
  void resize(int64_t n) {
    n_ = n;
    data_.resize(static_cast<size_t>(n) * Scalar<T>::planes);
  }
  void zero() {
    std::fill(data_.begin(), data_.end(), typename Scalar<T>::type{});
  }
  int64_t size() const {
    return n_;
  }
  Span<T> span() const;

 private:
  mutable std::vector<typename Scalar<T>::type> data_;
  int64_t n_ = 0;
};

template <class T>
Span<T> Buffer<T>::span() const {
  return Span<T>{data_.data()};
}
template <>
Span<ff> Buffer<ff>::span() const {
  return Span<ff>{data_.data(), data_.data() + n_};
}

template <class T>
struct ComplexBuffer {
  Buffer<T> re, im;
  void resize(int64_t n) {
    re.resize(n);
    im.resize(n);
  }
  int64_t size() const {
    return re.size();
  }
};

// ---------------------------------------------------------------- plans ----

// The shared plan's tables converted once to the working precision.
template <class T>
struct Plan {
  std::shared_ptr<const RealFFTPlan> shared;
  int64_t n; // complex length H
  std::vector<FFTStage> stages;
  ComplexBuffer<T> twiddle[3];
  ComplexBuffer<T> split;
  const int64_t* partner;
};

template <class T>
void fill_twiddles(
    const std::vector<TwiddleValue>& src,
    ComplexBuffer<T>& dst) {
  dst.resize(static_cast<int64_t>(src.size()));
  Span<T> re = dst.re.span(), im = dst.im.span();
  for (size_t j = 0; j < src.size(); ++j) {
    T r, i;
    forward_twiddle(src[j], r, i);
    re.store(j, r);
    im.store(j, i);
  }
}

template <class T>
std::shared_ptr<const Plan<T>> get_plan(int64_t n_real) {
  static std::mutex mutex;
  static std::map<int64_t, std::shared_ptr<const Plan<T>>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(n_real);
  if (it != cache.end())
    return it->second;
  auto plan = std::make_shared<Plan<T>>();
  plan->shared = real_fft_plan(n_real);
  const RealFFTPlan& rp = *plan->shared;
  plan->n = rp.n_half;
  plan->stages = rp.stages;
  for (int k = 0; k < 3; ++k)
    fill_twiddles(rp.stage_twiddles[k], plan->twiddle[k]);
  fill_twiddles(rp.split_twiddles, plan->split);
  plan->partner = rp.partner.data();
  cache[n_real] = plan;
  return plan;
}

// ------------------------------------------------------------ transforms ----

// One radix-4 stage over blocks of 4q points (the four quarters of a block
// never overlap).
template <class T, bool Inverse>
void radix4_stage(
    Span<T> re,
    Span<T> im,
    int64_t n,
    int64_t q,
    const Plan<T>& plan,
    int64_t tw_offset) {
  const Span<T> w1r = plan.twiddle[0].re.span().at(tw_offset);
  const Span<T> w1i = plan.twiddle[0].im.span().at(tw_offset);
  const Span<T> w2r = plan.twiddle[1].re.span().at(tw_offset);
  const Span<T> w2i = plan.twiddle[1].im.span().at(tw_offset);
  const Span<T> w3r = plan.twiddle[2].re.span().at(tw_offset);
  const Span<T> w3i = plan.twiddle[2].im.span().at(tw_offset);
  for (int64_t b = 0; b < n; b += 4 * q) {
    const Span<T> r0 = re.at(b), r1 = re.at(b + q), r2 = re.at(b + 2 * q),
                  r3 = re.at(b + 3 * q);
    const Span<T> i0 = im.at(b), i1 = im.at(b + q), i2 = im.at(b + 2 * q),
                  i3 = im.at(b + 3 * q);
#pragma GCC ivdep
    for (int64_t j = 0; j < q; ++j) {
      cpx<T> x0{r0.load(j), i0.load(j)}, x1{r1.load(j), i1.load(j)};
      cpx<T> x2{r2.load(j), i2.load(j)}, x3{r3.load(j), i3.load(j)};
      const cpx<T> w1{w1r.load(j), w1i.load(j)}, w2{w2r.load(j), w2i.load(j)};
      const cpx<T> w3{w3r.load(j), w3i.load(j)};
      if (Inverse)
        dit4_inverse(x0, x1, x2, x3, w1, w2, w3);
      else
        dif4(x0, x1, x2, x3, w1, w2, w3);
      r0.store(j, x0.re), i0.store(j, x0.im), r1.store(j, x1.re),
          i1.store(j, x1.im);
      r2.store(j, x2.re), i2.store(j, x2.im), r3.store(j, x3.re),
          i3.store(j, x3.im);
    }
  }
}

// The last radix-4 stage (blocks of 4 adjacent points, unit twiddles). A
// unit-step loop over blocks lets gcc vectorise the stride-4 groups.
template <class T, bool Inverse>
void radix4_unit_stage(Span<T> re, Span<T> im, int64_t n) {
  const int64_t blocks = n / 4;
#pragma GCC ivdep
  for (int64_t k = 0; k < blocks; ++k) {
    const int64_t b = 4 * k;
    cpx<T> x0{re.load(b), im.load(b)}, x1{re.load(b + 1), im.load(b + 1)};
    cpx<T> x2{re.load(b + 2), im.load(b + 2)},
        x3{re.load(b + 3), im.load(b + 3)};
    if (Inverse)
      dit4_inverse_unit(x0, x1, x2, x3);
    else
      dif4_unit(x0, x1, x2, x3);
    re.store(b, x0.re), im.store(b, x0.im), re.store(b + 1, x1.re),
        im.store(b + 1, x1.im);
    re.store(b + 2, x2.re), im.store(b + 2, x2.im), re.store(b + 3, x3.re),
        im.store(b + 3, x3.im);
  }
}

template <class T>
void radix2_stage(Span<T> re, Span<T> im, int64_t n) {
  const int64_t blocks = n / 2;
#pragma GCC ivdep
  for (int64_t k = 0; k < blocks; ++k) {
    const int64_t b = 2 * k;
    cpx<T> x0{re.load(b), im.load(b)}, x1{re.load(b + 1), im.load(b + 1)};
    butterfly2(x0, x1);
    re.store(b, x0.re), im.store(b, x0.im), re.store(b + 1, x1.re),
        im.store(b + 1, x1.im);
  }
}

// Stage st over the blocks of the first `len` points of (re, im).
template <class T, bool Inverse>
void run_stage(
    const Plan<T>& plan,
    const FFTStage& st,
    Span<T> re,
    Span<T> im,
    int64_t len) {
  if (st.radix == 2)
    radix2_stage(re, im, len);
  else if (st.quarter == 1)
    radix4_unit_stage<T, Inverse>(re, im, len);
  else
    radix4_stage<T, Inverse>(re, im, len, st.quarter, plan, st.tw_offset);
}

// Stages run depth first: after a stage on a block, all later stages finish
// on each of its sub-blocks while that sub-block is in cache; blocks at most
// this many bytes (re and im) run their remaining stages breadth first. Every
// butterfly still sees the same operands (butterflies of one stage are
// independent), so the order changes no bit.
constexpr int64_t kCacheResidentBytes = 128 * 1024;

template <class T>
bool cache_resident(int64_t len) {
  return len * 2 * static_cast<int64_t>(sizeof(T)) <= kCacheResidentBytes;
}

// Stages first..end of the forward transform on a block of `len` points.
template <class T>
void forward_block(
    const Plan<T>& plan,
    size_t first,
    Span<T> re,
    Span<T> im,
    int64_t len) {
  if (first == plan.stages.size())
    return;
  if (cache_resident<T>(len)) {
    for (size_t s = first; s < plan.stages.size(); ++s)
      run_stage<T, false>(plan, plan.stages[s], re, im, len);
    return;
  }
  const FFTStage& st = plan.stages[first];
  run_stage<T, false>(plan, st, re, im, len);
  const int64_t sub = len / st.radix;
  for (int k = 0; k < st.radix; ++k)
    forward_block(plan, first + 1, re.at(k * sub), im.at(k * sub), sub);
}

// The inverse undoes the stages in reverse: later stages on each sub-block
// first, then stage `first` on the whole block.
template <class T>
void inverse_block(
    const Plan<T>& plan,
    size_t first,
    Span<T> re,
    Span<T> im,
    int64_t len) {
  if (first == plan.stages.size())
    return;
  if (cache_resident<T>(len)) {
    for (size_t s = plan.stages.size(); s-- > first;)
      run_stage<T, true>(plan, plan.stages[s], re, im, len);
    return;
  }
  const FFTStage& st = plan.stages[first];
  const int64_t sub = len / st.radix;
  for (int k = 0; k < st.radix; ++k)
    inverse_block(plan, first + 1, re.at(k * sub), im.at(k * sub), sub);
  run_stage<T, true>(plan, st, re, im, len);
}

template <class T>
void fft_forward(const Plan<T>& plan, Span<T> re, Span<T> im) {
  forward_block(plan, 0, re, im, plan.n);
}

// Unnormalised inverse: the stages of fft_forward undone in reverse order.
template <class T>
void fft_inverse(const Plan<T>& plan, Span<T> re, Span<T> im) {
  inverse_block(plan, 0, re, im, plan.n);
}

// ------------------------------------------------------- real transforms ----

// Real rows ride a complex FFT of half length (rfft_conv_core.h). Every row is
// transformed on its own, so its bits never depend on other rows.

// Only the extended precisions carry pair-valued rows (pair_rfft_conv).
template <class T>
constexpr bool carries_pairs() {
  return !std::is_same<T, float>::value;
}

// load_real for a row of pairs: element i is hi[i] + lo[i] in T.
template <class T>
void load_pair_row(
    ComplexBuffer<T>& z,
    RealRow row,
    int64_t len,
    bool reversed) {
  const T tag{};
  const Span<T> re = z.re.span(), im = z.im.span();
  auto element = [&](int64_t i) {
    const int64_t j = reversed ? len - 1 - i : i;
    return r_from_pair(
        tag, row.data[j * row.stride], row.lo[j * row.lo_stride]);
  };
  for (int64_t m = 0; m < z.size(); ++m) {
    re.store(m, 2 * m < len ? element(2 * m) : T{});
    im.store(m, 2 * m + 1 < len ? element(2 * m + 1) : T{});
  }
}

// Loads a[0..len) (or back to front) as z[m] = a[2m] + i a[2m+1], zero-padded.
template <class T>
void load_real(ComplexBuffer<T>& z, RealRow row, int64_t len, bool reversed) {
  const T tag{};
  if constexpr (carries_pairs<T>()) {
    if (row.lo) {
      load_pair_row(z, row, len, reversed);
      return;
    }
  }
  const Span<T> re = z.re.span(), im = z.im.span();
  const float* __restrict src = row.data;
  // Element i of the (possibly reversed) row.
  const int64_t first = reversed ? (len - 1) * row.stride : 0;
  const int64_t step = reversed ? -row.stride : row.stride;
  const int64_t pairs = len / 2;
#pragma GCC ivdep
  for (int64_t m = 0; m < pairs; ++m) {
    re.store(m, r_from_float(tag, src[first + 2 * m * step]));
    im.store(m, r_from_float(tag, src[first + (2 * m + 1) * step]));
  }
  int64_t m = pairs;
  if (len & 1) {
    re.store(m, r_from_float(tag, src[first + (len - 1) * step]));
    im.store(m, T{});
    ++m;
  }
  for (; m < z.size(); ++m) {
    re.store(m, T{});
    im.store(m, T{});
  }
}

// Split and unsplit combine Z at p with Z at its partner position. The
// partner values are first copied into the output arrays (a plain gather), so
// the arithmetic loop is contiguous and vectorises.
template <class T>
void gather_partners(
    const Plan<T>& plan,
    Span<T> re,
    Span<T> im,
    Span<T> out_re,
    Span<T> out_im) {
  const int64_t* __restrict partner = plan.partner;
  for (int64_t p = 0; p < plan.n; ++p) {
    out_re.store(p, re.load(partner[p]));
    out_im.store(p, im.load(partner[p]));
  }
}

// out[p] = combine(in[p], in[partner(p)], w[p]) for p >= 1, out[0] =
// at_dc(in[0]): the real-FFT split (rfft_split) and its inverse (rfft_unsplit).
template <class T, class Combine, class AtDc>
void combine_with_partners(
    const Plan<T>& plan,
    Span<T> re,
    Span<T> im,
    Span<T> out_re,
    Span<T> out_im,
    Combine combine,
    AtDc at_dc) {
  gather_partners(plan, re, im, out_re, out_im);
  const Span<T> wr = plan.split.re.span(), wi = plan.split.im.span();
#pragma GCC ivdep
  for (int64_t p = 1; p < plan.n; ++p) {
    const cpx<T> v = combine(
        cpx<T>{re.load(p), im.load(p)},
        cpx<T>{out_re.load(p), out_im.load(p)},
        cpx<T>{wr.load(p), wi.load(p)});
    out_re.store(p, v.re);
    out_im.store(p, v.im);
  }
  const cpx<T> dc = at_dc(cpx<T>{re.load(0), im.load(0)});
  out_re.store(0, dc.re);
  out_im.store(0, dc.im);
}

// z (time domain, overwritten) -> x: the packed spectrum 2X.
template <class T>
void real_forward(
    const Plan<T>& plan,
    ComplexBuffer<T>& z,
    ComplexBuffer<T>& x) {
  fft_forward(plan, z.re.span(), z.im.span());
  combine_with_partners(
      plan,
      z.re.span(),
      z.im.span(),
      x.re.span(),
      x.im.span(),
      [](cpx<T> a, cpx<T> b, cpx<T> w) { return rfft_split(a, b, w); },
      [](cpx<T> a) { return rfft_split_dc(a); });
}

// y (packed spectrum) -> z: N times the inverse real DFT, as z[m] = x[2m] + i
// x[2m+1].
template <class T>
void real_inverse(
    const Plan<T>& plan,
    const ComplexBuffer<T>& y,
    ComplexBuffer<T>& z) {
  combine_with_partners(
      plan,
      y.re.span(),
      y.im.span(),
      z.re.span(),
      z.im.span(),
      [](cpx<T> a, cpx<T> b, cpx<T> w) { return rfft_unsplit(a, b, w); },
      [](cpx<T> a) { return rfft_unsplit_dc(a); });
  fft_inverse(plan, z.re.span(), z.im.span());
}

// x *= k in the packed format (position 0 holds two real values).
template <class T>
void multiply_packed(
    ComplexBuffer<T>& x,
    const ComplexBuffer<T>& k,
    int64_t h) {
  const Span<T> re = x.re.span(), im = x.im.span(), kre = k.re.span(),
                kim = k.im.span();
#pragma GCC ivdep
  for (int64_t p = 0; p < h; ++p) {
    const cpx<T> v = packed_mul(
        cpx<T>{re.load(p), im.load(p)},
        cpx<T>{kre.load(p), kim.load(p)},
        p == 0);
    re.store(p, v.re);
    im.store(p, v.im);
  }
}

// acc += a * b in the packed format.
template <class T>
void accumulate_packed(
    ComplexBuffer<T>& acc,
    const ComplexBuffer<T>& a,
    const ComplexBuffer<T>& b,
    int64_t h) {
  const Span<T> cre = acc.re.span(), cim = acc.im.span();
  const Span<T> are = a.re.span(), aim = a.im.span(), bre = b.re.span(),
                bim = b.im.span();
#pragma GCC ivdep
  for (int64_t p = 0; p < h; ++p) {
    const cpx<T> v = packed_mul(
        cpx<T>{are.load(p), aim.load(p)},
        cpx<T>{bre.load(p), bim.load(p)},
        p == 0);
    cre.store(p, r_add(cre.load(p), v.re));
    cim.store(p, r_add(cim.load(p), v.im));
  }
}

template <class T>
void scale_buffer(ComplexBuffer<T>& x, int64_t h, float power_of_two) {
  const Span<T> re = x.re.span(), im = x.im.span();
#pragma GCC ivdep
  for (int64_t p = 0; p < h; ++p) {
    re.store(p, r_scale(re.load(p), power_of_two));
    im.store(p, r_scale(im.load(p), power_of_two));
  }
}

// Entry i of the time-domain result z (x[2m] + i x[2m+1]).
template <class T>
inline T sample(const ComplexBuffer<T>& z, int64_t i) {
  return (i & 1) ? z.im.span().load(i >> 1) : z.re.span().load(i >> 1);
}

template <class T>
inline T gather(const ConvGeometry& g, const ComplexBuffer<T>& z, int64_t t) {
  const GatherIndex idx = gather_index(
      t,
      g.fft_size,
      g.period,
      g.fold,
      g.out_reversed,
      g.out_origin,
      g.a_len + g.b_len - 1);
  T v = idx.first >= 0 ? sample(z, idx.first) : T{};
  if (idx.second >= 0)
    v = r_add(v, sample(z, idx.second));
  return v;
}

// float32 mode never snaps (snap_roundoff_exp(float) == 0): no need to scan.
template <class T>
constexpr bool snaps() {
  return !std::is_same<T, float>::value;
}

// Largest |bits| over rows (the bits of the largest |x|; NaN/Inf compare
// above).
template <class Rows>
unsigned int max_abs_bits(const Rows& rows, int64_t len) {
  unsigned int m = 0;
  for (const RealRow& row : rows) {
    const float* __restrict x = row.data;
    for (int64_t i = 0; i < len; ++i)
      m = std::max(m, MP_FLOAT_BITS(x[i * row.stride]) & 0x7fffffffu);
  }
  return m;
}

// Smallest lowest-set-bit exponent over the nonzero elements of rows; the scan
// stops as soon as it drops below floor (the row then cannot be certified).
// kNoSnap when every element is zero.
template <class Rows>
int min_quantum(const Rows& rows, int64_t len, int floor) {
  int q = kNoSnap;
  for (const RealRow& row : rows) {
    for (int64_t i = 0; i < len; ++i) {
      const unsigned int bits = MP_FLOAT_BITS(row.data[i * row.stride]);
      if ((bits & 0x7fffffffu) == 0u)
        continue;
      q = std::min(q, lowest_bit_exponent(bits));
      if (q < floor)
        return q;
    }
  }
  return q;
}

// The lattice snap of an output row that sums `terms` convolutions of rows in
// a_rows with rows in b_rows, plus products of a rows with d_rows
// (rfft_conv_core.h: snap_required, snap_decision).
template <class T, class RowsA, class RowsB, class RowsD>
int decide_snap(
    const ConvGeometry& g,
    const RowsA& a_rows,
    int64_t a_len,
    const RowsB& b_rows,
    bool has_bias,
    const RowsD& d_rows,
    int terms) {
  if (!snaps<T>())
    return kNoSnap;
  const RowMagnitude a = row_magnitude(max_abs_bits(a_rows, a_len));
  const RowMagnitude b = row_magnitude(max_abs_bits(b_rows, g.b_len));
  const RowMagnitude d = has_bias
      ? row_magnitude(max_abs_bits(d_rows, g.out_len))
      : row_magnitude(0u);
  bool exact_zero = false;
  const int required = snap_required(
      a,
      b,
      has_bias,
      d,
      g.a_len,
      g.b_len,
      g.fft_size,
      snap_roundoff_exp(T{}),
      terms,
      &exact_zero);
  if (exact_zero)
    return 0;
  if (required == kNoSnap)
    return kNoSnap;
  const int qb = min_quantum(b_rows, g.b_len, quantum_floor(required, a));
  const int qd = has_bias
      ? min_quantum(d_rows, g.out_len, quantum_floor(required, a))
      : kNoSnap;
  const int partner = std::min(qb, qd);
  if (partner == kNoSnap)
    return kNoSnap;
  const int qa = min_quantum(a_rows, a_len, required - partner);
  return snap_decision(required, qa, qb, has_bias, qd);
}

// Output row of pair_rfft_conv: conv + a * bias (a a row of pairs or of
// floats, each part's product with the bias exact in T), written as a pair.
template <class T>
void write_pair_row(
    const ConvGeometry& g,
    const ComplexBuffer<T>& z,
    const SharedKernelTask::OutRow& row) {
  const T tag{};
  for (int64_t t = 0; t < g.out_len; ++t) {
    T v = gather(g, z, t);
    if (row.has_bias) {
      const float d = row.bias.data[t * row.bias.stride];
      v = r_add(v, r_prod(tag, row.a.data[t * row.a.stride], d));
      if (row.a.lo)
        v = r_add(v, r_prod(tag, row.a.lo[t * row.a.lo_stride], d));
    }
    const ff pair = r_to_pair(v);
    row.out[t] = pair.hi;
    row.out_lo[t] = pair.lo;
  }
}

// Output row of the shared-kernel path. The forward convolution reads the
// time-domain result in order (x[t] = z[t/2].re or .im) with no fold: that
// case runs as a plain loop over pairs, the same operations as gather().
template <class T>
void write_row(
    const ConvGeometry& g,
    const ComplexBuffer<T>& z,
    const SharedKernelTask::OutRow& row,
    int snap) {
  if constexpr (carries_pairs<T>()) {
    if (row.out_lo) {
      write_pair_row(g, z, row);
      return;
    }
  }
  const bool in_order = !g.out_reversed && !g.fold &&
      g.out_len <= g.a_len + g.b_len - 1 && g.out_len <= g.fft_size;
  auto finish = [&](T v, int64_t t) {
    return row.has_bias ? finish_output(
                              v,
                              true,
                              row.a.data[t * row.a.stride],
                              row.bias.data[t * row.bias.stride],
                              snap)
                        : finish_output(v, false, 0.0f, 0.0f, snap);
  };
  if (!in_order) {
    for (int64_t t = 0; t < g.out_len; ++t)
      row.out[t] = finish(gather(g, z, t), t);
    return;
  }
  const Span<T> re = z.re.span(), im = z.im.span();
  float* __restrict out = row.out;
  const int64_t pairs = g.out_len / 2;
  for (int64_t m = 0; m < pairs; ++m) {
    out[2 * m] = finish(re.load(m), 2 * m);
    out[2 * m + 1] = finish(im.load(m), 2 * m + 1);
  }
  if (g.out_len & 1)
    out[g.out_len - 1] = finish(re.load(pairs), g.out_len - 1);
}

template <class T>
void shared_kernel(
    const ConvGeometry& g,
    const SharedKernelTask& task,
    int num_threads) {
  const int64_t n = g.fft_size, h = n / 2;
  auto plan_ptr = get_plan<T>(n);
  const Plan<T>& plan = *plan_ptr;

  std::vector<ComplexBuffer<T>> spectra(task.b_rows.size());
  parallel_for(
      static_cast<int64_t>(spectra.size()), num_threads, [&](int64_t i) {
        ComplexBuffer<T> z;
        z.resize(h);
        spectra[i].resize(h);
        load_real(z, task.b_rows[i], g.b_len, false);
        real_forward(plan, z, spectra[i]);
        scale_buffer(spectra[i], h, spectrum_scale(n));
      });

  parallel_for(
      static_cast<int64_t>(task.rows.size()), num_threads, [&](int64_t r) {
        thread_local ComplexBuffer<T> z, x;
        z.resize(h);
        x.resize(h);
        const auto& row = task.rows[r];
        load_real(z, row.a, g.a_len, g.a_reversed);
        real_forward(plan, z, x);
        multiply_packed(x, spectra[row.b_index], h);
        real_inverse(plan, x, z);
        // Pairs are not snapped: their lo parts do not enter the row
        // summaries the certificate is built from.
        const bool pairs =
            row.out_lo || row.a.lo || task.b_rows[row.b_index].lo;
        const int snap = pairs
            ? kNoSnap
            : decide_snap<T>(
                  g,
                  std::array<RealRow, 1>{row.a},
                  g.a_len,
                  std::array<RealRow, 1>{task.b_rows[row.b_index]},
                  row.has_bias,
                  std::array<RealRow, 1>{row.bias},
                  1);
        write_row(g, z, row, snap);
      });
}

// Each target: sum over its terms of A * B in the frequency domain, one
// inverse transform, the bias terms added, one rounding.
template <class T>
void reduce(const ConvGeometry& g, const ReduceTask& task, int num_threads) {
  const int64_t n = g.fft_size, h = n / 2;
  auto plan_ptr = get_plan<T>(n);
  const Plan<T>& plan = *plan_ptr;
  const T tag{};

  parallel_for(
      static_cast<int64_t>(task.targets.size()), num_threads, [&](int64_t ti) {
        thread_local ComplexBuffer<T> z, a_spec, b_spec, acc;
        for (auto* v : {&z, &a_spec, &b_spec, &acc})
          v->resize(h);
        acc.re.zero();
        acc.im.zero();
        const auto& target = task.targets[ti];
        // The a rows of the bias products count with the convolution terms' a
        // rows (all of length a_len = out_len where products occur).
        std::vector<RealRow> a_rows, b_rows, d_rows;
        for (const auto& term : target.terms)
          a_rows.push_back(term.a), b_rows.push_back(term.b);
        for (const auto& bt : target.bias_terms)
          a_rows.push_back(bt.a), d_rows.push_back(bt.bias);
        const int terms =
            static_cast<int>(target.terms.size() + target.bias_terms.size());
        const int snap = decide_snap<T>(
            g,
            a_rows,
            g.a_len,
            b_rows,
            !d_rows.empty(),
            d_rows,
            std::max(terms, 1));
        for (const auto& term : target.terms) {
          load_real(z, term.a, g.a_len, g.a_reversed);
          real_forward(plan, z, a_spec);
          load_real(z, term.b, g.b_len, false);
          real_forward(plan, z, b_spec);
          accumulate_packed(acc, a_spec, b_spec, h);
        }
        scale_buffer(acc, h, spectrum_scale(n));
        real_inverse(plan, acc, z);
        for (int64_t t = 0; t < g.out_len; ++t) {
          T v = gather(g, z, t);
          for (const auto& bt : target.bias_terms)
            v = r_add(
                v,
                r_prod(
                    tag,
                    bt.a.data[t * bt.a.stride],
                    bt.bias.data[t * bt.bias.stride]));
          if (snap != kNoSnap)
            v = r_snap(v, snap);
          target.out[t] = r_round(v);
        }
      });
}

// Each target element: sum of exact products a[i] * b[i] in the working
// precision, in the order given, one rounding.
template <class T>
void product_sum(const ProductSumTask& task, int64_t len, int num_threads) {
  const T tag{};
  parallel_for(
      static_cast<int64_t>(task.targets.size()), num_threads, [&](int64_t ti) {
        const auto& target = task.targets[ti];
        auto term = [&](size_t j, int64_t t) {
          return r_prod(
              tag,
              target.a[j].data[t * target.a[j].stride],
              target.b[j].data[t * target.b[j].stride]);
        };
        if (target.sum_over_time) {
          T acc{};
          for (size_t j = 0; j < target.a.size(); ++j)
            for (int64_t t = 0; t < len; ++t)
              acc = r_add(acc, term(j, t));
          target.out[0] = r_round(acc);
          return;
        }
        for (int64_t t = 0; t < len; ++t) {
          T acc{};
          for (size_t j = 0; j < target.a.size(); ++j)
            acc = r_add(acc, term(j, t));
          target.out[t] = r_round(acc);
        }
      });
}

} // namespace

void run_product_sum(
    Precision p,
    const ProductSumTask& task,
    int64_t len,
    int num_threads) {
  switch (p) {
    case Precision::Float32:
      return product_sum<float>(task, len, num_threads);
    case Precision::Extended:
      return product_sum<double>(task, len, num_threads);
    case Precision::DoubleDouble:
      return product_sum<ff>(task, len, num_threads);
  }
}

void run_shared_kernel(
    Precision p,
    const ConvGeometry& g,
    const SharedKernelTask& task,
    int num_threads) {
  switch (p) {
    case Precision::Float32:
      return shared_kernel<float>(g, task, num_threads);
    case Precision::Extended:
      return shared_kernel<double>(g, task, num_threads);
    case Precision::DoubleDouble:
      return shared_kernel<ff>(g, task, num_threads);
  }
}

void run_reduce(
    Precision p,
    const ConvGeometry& g,
    const ReduceTask& task,
    int num_threads) {
  switch (p) {
    case Precision::Float32:
      return reduce<float>(g, task, num_threads);
    case Precision::Extended:
      return reduce<double>(g, task, num_threads);
    case Precision::DoubleDouble:
      return reduce<ff>(g, task, num_threads);
  }
}

} // namespace mlx_precise::cpu::MP_CPU_ISA
