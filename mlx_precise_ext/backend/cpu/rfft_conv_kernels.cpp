// CPU FFT convolution, templated over the working precision T (float, double,
// ff). Compiled once per instruction-set build (MP_CPU_ISA); see conv_job.h.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__FMA__) && defined(__AVX__)
#include <immintrin.h>
#endif

#include "backend/cpu/conv_job.h"
#include "backend/cpu/parallel.h"
#include "backend/cpu/recompute_counts.h"
#include "kernels/certify.h"
#include "kernels/fft_plan.h"
#include "kernels/rfft_conv_core.h"

namespace mlx_precise::cpu::MP_CPU_ISA {
namespace {

// ---------------------------------------------------------------- arrays ----

// Working arrays (float or double). The hot loops carry `#pragma GCC ivdep`:
// their iterations never overlap.
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

template <class T>
class Buffer {
 public:
  void resize(int64_t n) {
    data_.resize(static_cast<size_t>(n));
  }
  void zero() {
    std::fill(data_.begin(), data_.end(), T{});
  }
  int64_t size() const {
    return static_cast<int64_t>(data_.size());
  }
  Span<T> span() const {
    return Span<T>{data_.data()};
  }

 private:
  mutable std::vector<T> data_;
};

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

// float32 mode rounds the transform's values as they are; the float64 engine
// (extended, and dd: both certified, so both give the correctly rounded bits)
// certifies them.
template <class T>
constexpr bool certified() {
  return !std::is_same<T, float>::value;
}

// certified(), unless a benchmark switched certification off to time it
// (conv_job.h): the float64 engine's values are then rounded as they are.
template <class T>
bool certifies() {
  return certified<T>() && rfft_conv_certification_enabled();
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
  auto value = [&](int64_t i) { return src[i]; };
  // Element i of the (possibly reversed) row.
  const int64_t first = reversed ? (len - 1) * row.stride : 0;
  const int64_t step = reversed ? -row.stride : row.stride;
  const int64_t pairs = len / 2;
#pragma GCC ivdep
  for (int64_t m = 0; m < pairs; ++m) {
    re.store(m, r_from_float(tag, value(first + 2 * m * step)));
    im.store(m, r_from_float(tag, value(first + (2 * m + 1) * step)));
  }
  int64_t m = pairs;
  if (len & 1) {
    re.store(m, r_from_float(tag, value(first + (len - 1) * step)));
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

// --------------------------------------------------------- certification ----
// Every extended / dd output is certified against the transform's error bound
// or recomputed exactly (kernels/certify.h).

// Sum of v[i * stride]^2, i < len, in double in lanes so that it vectorises
// (float squares are exact; the sum's rounding is covered by the bound's
// slack).
template <class E>
double sum_of_squares(const E* v, int64_t stride, int64_t len) {
  constexpr int kLanes = 8;
  double lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double d = static_cast<double>(v[(i + l) * stride]);
      lane[l] += d * d;
    }
  for (; i < len; ++i) {
    const double d = static_cast<double>(v[i * stride]);
    lane[0] += d * d;
  }
  double sum = 0.0;
  for (int l = 0; l < kLanes; ++l)
    sum += lane[l];
  return sum;
}

// ||x||^2 of a row and the sums of its entries at even and odd positions (in
// either order: spectrum_from_row takes them symmetrically), in double in
// lanes so that it vectorises; a lane's positions share its parity.
struct RowSums {
  double squares;
  double even;
  double odd;
};

RowSums row_sums(RealRow row, int64_t len) {
  constexpr int kLanes = 8;
  double square[kLanes] = {}, sum[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double d = static_cast<double>(row.data[(i + l) * row.stride]);
      square[l] += d * d;
      sum[l] += d;
    }
  for (; i < len; ++i) {
    const double d = static_cast<double>(row.data[i * row.stride]);
    square[0] += d * d;
    sum[i & 1] += d;
  }
  RowSums r{0.0, 0.0, 0.0};
  for (int l = 0; l < kLanes; ++l) {
    r.squares += square[l];
    (l & 1 ? r.odd : r.even) += sum[l];
  }
  return r;
}

// ||x||_2 of a row, in double.
double row_norm(RealRow row, int64_t len) {
  return std::sqrt(sum_of_squares(row.data, row.stride, len));
}

// ||x||_2 / sqrt(h) of a packed spectrum (h entries), in double: the
// measured spectrum of measured_term_error.
template <class T>
double spectrum_norm(const ComplexBuffer<T>& x, int64_t h) {
  const double squares =
      sum_of_squares(x.re.span().v, 1, h) + sum_of_squares(x.im.span().v, 1, h);
  return std::sqrt(squares / static_cast<double>(h));
}

// Element m of a row as the transform loaded it (a reversed row back to
// front), and element j of a kernel row.
struct LoadedRow {
  RealRow row;
  int64_t len;
  bool reversed;
  float operator()(int64_t m) const {
    return row.data[(reversed ? len - 1 - m : m) * row.stride];
  }
};
struct PlainRow {
  RealRow row;
  float operator()(int64_t j) const {
    return row.data[j * row.stride];
  }
};

// ------------------------------------------------------- recomputation ----
// The open outputs of a row are recomputed from a copy of a converted to
// double once per row, back to front (RecomputeRows), and b as it is: the
// products a(m0 - k) b(j0 + k) of a range then read both forward, four to a
// vector, with one conversion and no shuffle in the loop (converting and
// reversing floats there ran at half the speed).

// a(m) = last[-m] and b(j) = first[j]; as accessors (floats, exactly) for the
// later stages of correctly_rounded_sum.
struct ReversedDoubles {
  const double* last;
  float operator()(int64_t m) const {
    return static_cast<float>(last[-m]);
  }
};
struct ForwardFloats {
  const float* first;
  float operator()(int64_t j) const {
    return first[j];
  }
};

class RecomputeRows {
 public:
  // The rows as the transform loaded them (a back to front when reversed).
  void load(const ConvGeometry& g, RealRow a, RealRow b) {
    a_.resize(g.a_len);
    for (int64_t x = 0; x < g.a_len; ++x)
      a_[x] = a.data[(g.a_reversed ? x : g.a_len - 1 - x) * a.stride];
    b_first_ = b.data;
    if (b.stride != 1) {
      b_.resize(g.b_len);
      for (int64_t j = 0; j < g.b_len; ++j)
        b_[j] = b.data[j * b.stride];
      b_first_ = b_.data();
    }
  }
  ReversedDoubles a() const {
    return ReversedDoubles{a_.data() + a_.size() - 1};
  }
  ForwardFloats b() const {
    return ForwardFloats{b_first_};
  }

 private:
  std::vector<double> a_;
  std::vector<float> b_;
  const float* b_first_ = nullptr;
};

// Vectors of doubles as wide as the instruction set has (four with AVX, two
// with SSE2): kDotLanes lanes are kVectors of them.
#if defined(__AVX__)
constexpr int kVectorLanes = 4;
#else
constexpr int kVectorLanes = 2;
#endif
constexpr int kVectors = kDotLanes / kVectorLanes;
using DoubleVector = double __attribute__((vector_size(8 * kVectorLanes)));
using FloatVector = float __attribute__((vector_size(4 * kVectorLanes)));
using BitsVector = long long __attribute__((vector_size(8 * kVectorLanes)));

inline DoubleVector load_vector(const double* p) {
  DoubleVector v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline DoubleVector load_vector(const float* p) {
  FloatVector v;
  std::memcpy(&v, p, sizeof v);
  return __builtin_convertvector(v, DoubleVector);
}

inline void store_vector(double* p, DoubleVector v) {
  std::memcpy(p, &v, sizeof v);
}

inline DoubleVector abs_vector(DoubleVector v) {
  return reinterpret_cast<DoubleVector>(
      reinterpret_cast<BitsVector>(v) & 0x7fffffffffffffffll);
}

// sum + a b for float values a, b: the product is exact in double, so the
// fused form rounds as the addition alone does.
inline DoubleVector
add_exact_products(DoubleVector sum, DoubleVector a, DoubleVector b) {
#if defined(__FMA__) && defined(__AVX__)
  return reinterpret_cast<DoubleVector>(_mm256_fmadd_pd(
      reinterpret_cast<__m256d>(a),
      reinterpret_cast<__m256d>(b),
      reinterpret_cast<__m256d>(sum)));
#else
  return sum + a * b;
#endif
}

// kernels/certify.h's running_add_range for rows converted to double (found
// by argument-dependent lookup from correctly_rounded_sum): the same running
// error bound, each addition adding its |result| to the mass, in blocks: a
// lane sums kRecomputeBlock products from zero before adding them to its
// total, so that the partial sums the bound adds up are those of short sums
// (at L = 16384 about 5x less mass than one long sum per lane, so that the
// compensated stage is needed that much less often).
constexpr int kRecomputeBlock = 16;

inline void running_add_range(
    RunningSum& r,
    ReversedDoubles a,
    ForwardFloats b,
    long long m0,
    long long j0,
    long long count) {
  const double* pa = a.last - m0; // pa[k] = a(m0 - k)
  const float* pb = b.first + j0;
  DoubleVector total[kVectors], mass[kVectors];
  for (int v = 0; v < kVectors; ++v) {
    total[v] = load_vector(r.sum + kVectorLanes * v);
    mass[v] = load_vector(r.mass + kVectorLanes * v);
  }
  long long k = 0;
  for (; k + kDotLanes * kRecomputeBlock <= count;
       k += kDotLanes * kRecomputeBlock) {
    DoubleVector block[kVectors] = {};
    for (int i = 0; i < kRecomputeBlock; ++i)
      for (int v = 0; v < kVectors; ++v) {
        const long long at = k + kDotLanes * i + kVectorLanes * v;
        block[v] = add_exact_products(
            block[v], load_vector(pa + at), load_vector(pb + at));
        mass[v] += abs_vector(block[v]);
      }
    for (int v = 0; v < kVectors; ++v) {
      total[v] += block[v];
      mass[v] += abs_vector(total[v]);
    }
  }
  for (; k + kDotLanes <= count; k += kDotLanes)
    for (int v = 0; v < kVectors; ++v) {
      const long long at = k + kVectorLanes * v;
      total[v] = add_exact_products(
          total[v], load_vector(pa + at), load_vector(pb + at));
      mass[v] += abs_vector(total[v]);
    }
  for (int v = 0; v < kVectors; ++v) {
    store_vector(r.sum + kVectorLanes * v, total[v]);
    store_vector(r.mass + kVectorLanes * v, mass[v]);
  }
  for (int l = 0; k < count; ++k, ++l) {
    r.sum[l] = add_exact_product(r.sum[l], a(m0 - k), b(j0 + k));
    r.mass[l] += std::fabs(r.sum[l]);
  }
}

// Calls range(a, b, m0, j0, count) for the products a(m0 - k) b(j0 + k) of
// output t of the converted rows: the entries of the cyclic convolution that
// gather() reads.
template <class Range>
void for_each_output_range(
    const ConvGeometry& g,
    const RecomputeRows& rows,
    int64_t t,
    Range range) {
  const GatherIndex idx = gather_index(
      t,
      g.fft_size,
      g.period,
      g.fold,
      g.out_reversed,
      g.out_origin,
      g.a_len + g.b_len - 1);
  for (const long long i : {idx.first, idx.second})
    if (i >= 0)
      for_each_cyclic_range(
          g.a_len,
          g.b_len,
          g.fft_size,
          i,
          [&](int64_t m0, int64_t j0, int64_t count) {
            range(rows.a(), rows.b(), m0, j0, count);
          });
}

// A single product a[t] * d[t] as a range.
void bias_range(RealRow a, RealRow d, int64_t t, auto range) {
  range(PlainRow{a}, PlainRow{d}, t, t, 1);
}

// Output row of pair_rfft_conv (a a row of pairs): finish_pair_output of
// each value, written as a pair: not rounded to float32, so nothing to
// certify. a is read only with a bias: the kernel's gradient has more
// outputs than a has elements.
template <class T>
void write_pair_row(
    const ConvGeometry& g,
    const ComplexBuffer<T>& z,
    const SharedKernelTask::OutRow& row) {
  for (int64_t t = 0; t < g.out_len; ++t) {
    const ff pair = finish_pair_output(
        gather(g, z, t),
        row.has_bias,
        row.has_bias ? row.a.data[t * row.a.stride] : 0.0f,
        row.has_bias ? row.a.lo[t * row.a.lo_stride] : 0.0f,
        row.has_bias ? row.bias.data[t * row.bias.stride] : 0.0f);
    row.out[t] = pair.hi;
    row.out_lo[t] = pair.lo;
  }
}

// The transform's value of output t, from the time-domain result z.
template <class T>
T output_value(const ConvGeometry& g, const ComplexBuffer<T>& z, int64_t t) {
  return gather(g, z, t);
}

// Whether output t is entry t of the cyclic result, as in the forward
// convolution without fold: x[t] = z[t/2].re or .im.
bool reads_in_order(const ConvGeometry& g) {
  return !g.out_reversed && !g.fold && g.out_len <= g.a_len + g.b_len - 1 &&
      g.out_len <= g.fft_size;
}

// Writes the outputs of a row from the time-domain result z. In float32 mode
// the values are rounded as they are, bias(v, t) adding the bias products in
// float. Otherwise, in passes that vectorise: the values in double, the bias
// products added exactly (add_bias(value, magnitude) over the row, when
// has_bias), the certification (one pass when the values are read in order
// without a bias), and then the outputs that did not certify, recomputed
// from their products (correctly_rounded_sum over products(t, range)).
template <class T, class Bias, class AddBias, class Products>
void write_outputs(
    const ConvGeometry& g,
    const RowCertificate& cert,
    const ComplexBuffer<T>& z,
    float* out,
    bool has_bias,
    Bias bias,
    AddBias add_bias,
    Products products) {
  const int64_t len = g.out_len;
  if constexpr (!certified<T>()) {
    for (int64_t t = 0; t < len; ++t)
      out[t] = bias(output_value(g, z, t), t);
  } else {
    thread_local std::vector<double> value_buffer, magnitude_buffer;
    thread_local std::vector<unsigned char> open_buffer;
    value_buffer.resize(len);
    magnitude_buffer.resize(len);
    open_buffer.resize(len);
    // Plain pointers: a thread_local in a loop is a TLS lookup per access.
    double* __restrict value = value_buffer.data();
    double* __restrict magnitude = magnitude_buffer.data();
    unsigned char* __restrict open = open_buffer.data();
    // Output t is v, with error bound conv_err + rel * magnitude.
    auto certify = [&](int64_t t, double v, double magnitude) {
      open[t] = !certified_round(
          zero_as_positive(v), cert.conv_err + cert.rel * magnitude, &out[t]);
    };
    if (reads_in_order(g) && !has_bias) {
      // The common case in one pass: the transform's values certified as
      // they are read (an output's magnitude is its value's), or rounded
      // where there is nothing to certify.
      const Span<T> re = z.re.span(), im = z.im.span();
      if (!cert.finite) {
        for (int64_t t = 0; t < len; ++t)
          out[t] =
              static_cast<float>((t & 1) ? im.load(t / 2) : re.load(t / 2));
        return;
      }
      for (int64_t m = 0; m < len / 2; ++m) {
        const double v0 = re.load(m), v1 = im.load(m);
        certify(2 * m, v0, std::fabs(v0));
        certify(2 * m + 1, v1, std::fabs(v1));
      }
      if (len & 1) {
        const double v = re.load(len / 2);
        certify(len - 1, v, std::fabs(v));
      }
    } else {
      for (int64_t t = 0; t < len; ++t)
        value[t] = output_value(g, z, t);
      for (int64_t t = 0; t < len; ++t)
        magnitude[t] = std::fabs(value[t]);
      add_bias(value, magnitude);
      if (!cert.finite) {
        for (int64_t t = 0; t < len; ++t)
          out[t] = static_cast<float>(value[t]);
        return;
      }
      for (int64_t t = 0; t < len; ++t)
        certify(t, value[t], magnitude[t]);
    }
    // Open outputs are rare: the flags are scanned eight at a time (one
    // 8-byte load each; the last group of a row may be shorter).
    int64_t recomputed = 0;
    for (int64_t t0 = 0; t0 < len; t0 += 8) {
      const int64_t t1 = std::min<int64_t>(t0 + 8, len);
      uint64_t word = 0;
      if (t1 - t0 == 8)
        std::memcpy(&word, open + t0, 8);
      else
        std::memcpy(&word, open + t0, t1 - t0);
      if (word == 0)
        continue;
      for (int64_t t = t0; t < t1; ++t)
        if (open[t]) {
          out[t] =
              correctly_rounded_sum([&](auto range) { products(t, range); });
          ++recomputed;
        }
    }
    count_recomputed(CertifiedOp::RFFTConv, len, recomputed);
  }
}

// value[t] += a[t] * d[t] exactly in double, magnitude[t] += |a[t] * d[t]|.
void add_bias_products(
    RealRow a,
    RealRow d,
    int64_t len,
    double* value,
    double* magnitude) {
  for (int64_t t = 0; t < len; ++t) {
    const double p =
        static_cast<double>(a.data[t * a.stride]) * d.data[t * d.stride];
    value[t] += p;
    magnitude[t] += std::fabs(p);
  }
}

template <class T>
void shared_kernel(
    const ConvGeometry& g,
    const SharedKernelTask& task,
    int num_threads) {
  const int64_t n = g.fft_size, h = n / 2;
  auto plan_ptr = get_plan<T>(n);
  const Plan<T>& plan = *plan_ptr;

  const bool certify = certifies<T>();
  const TransformErrors errors = transform_errors(n, 1, kUnitRoundoff64);
  // Kernel rows: spectra, and when certifying their norms and the measured
  // norms of their (unscaled) spectra.
  std::vector<ComplexBuffer<T>> spectra(task.b_rows.size());
  std::vector<double> b_norms(task.b_rows.size()),
      b_spectrum_norms(task.b_rows.size());
  parallel_for(
      static_cast<int64_t>(spectra.size()), num_threads, [&](int64_t i) {
        ComplexBuffer<T> z;
        z.resize(h);
        spectra[i].resize(h);
        if (certify)
          b_norms[i] = row_norm(task.b_rows[i], g.b_len);
        load_real(z, task.b_rows[i], g.b_len, false);
        real_forward(plan, z, spectra[i]);
        if (certify)
          b_spectrum_norms[i] = spectrum_norm(spectra[i], h);
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
        if constexpr (carries_pairs<T>()) {
          if (row.out_lo) {
            write_pair_row(g, z, row);
            return;
          }
        }
        RowCertificate cert{};
        if (certify) {
          // The row's spectrum bounded from the row (spectrum_from_row), in
          // the pass that takes its norm, rather than a pass over the
          // computed spectrum: the same bound to within delta.
          const RowSums sums = row_sums(row.a, g.a_len);
          const double a_norm = std::sqrt(sums.squares);
          cert = certificate_from_bound(
              measured_term_error(
                  errors,
                  a_norm,
                  b_norms[row.b_index],
                  spectrum_from_row(
                      errors, h, g.a_len, a_norm, sums.even, sums.odd),
                  b_spectrum_norms[row.b_index]),
              g.fold,
              a_norm * b_norms[row.b_index],
              1,
              row.has_bias ? 1 : 0);
        }
        const RealRow b_row = task.b_rows[row.b_index];
        // Converted on the row's first open output.
        thread_local RecomputeRows operands;
        bool operands_loaded = false;
        auto a_at = [&](int64_t t) { return row.a.data[t * row.a.stride]; };
        auto d_at = [&](int64_t t) {
          return row.bias.data[t * row.bias.stride];
        };
        write_outputs<T>(
            g,
            cert,
            z,
            row.out,
            row.has_bias,
            [&](T v, int64_t t) {
              return row.has_bias
                  ? r_round(r_add(v, r_prod(v, a_at(t), d_at(t))))
                  : r_round(v);
            },
            [&](double* value, double* magnitude) {
              if (row.has_bias)
                add_bias_products(row.a, row.bias, g.out_len, value, magnitude);
            },
            [&](int64_t t, auto range) {
              if (!operands_loaded) {
                operands.load(g, row.a, b_row);
                operands_loaded = true;
              }
              for_each_output_range(g, operands, t, range);
              if (row.has_bias)
                bias_range(row.a, row.bias, t, range);
            });
      });
}

// Each target: sum over its terms of A * B in the frequency domain, one
// inverse transform, the bias terms added, one rounding.
template <class T>
void reduce(const ConvGeometry& g, const ReduceTask& task, int num_threads) {
  const int64_t n = g.fft_size, h = n / 2;
  auto plan_ptr = get_plan<T>(n);
  const Plan<T>& plan = *plan_ptr;
  const bool certify = certifies<T>();

  parallel_for(
      static_cast<int64_t>(task.targets.size()), num_threads, [&](int64_t ti) {
        thread_local ComplexBuffer<T> z, a_spec, b_spec, acc;
        for (auto* v : {&z, &a_spec, &b_spec, &acc})
          v->resize(h);
        acc.re.zero();
        acc.im.zero();
        const auto& target = task.targets[ti];
        const int64_t terms =
            std::max<int64_t>(static_cast<int64_t>(target.terms.size()), 1);
        const TransformErrors errors =
            transform_errors(n, terms, kUnitRoundoff64);
        // Sums over the terms of ||a|| ||b|| and of their measured bounds.
        double norm_products = 0.0, transform_error = 0.0;
        for (const auto& term : target.terms) {
          load_real(z, term.a, g.a_len, g.a_reversed);
          real_forward(plan, z, a_spec);
          load_real(z, term.b, g.b_len, false);
          real_forward(plan, z, b_spec);
          if (certify) {
            const double a_norm = row_norm(term.a, g.a_len);
            const double b_norm = row_norm(term.b, g.b_len);
            norm_products += a_norm * b_norm;
            transform_error += measured_term_error(
                errors,
                a_norm,
                b_norm,
                spectrum_norm(a_spec, h),
                spectrum_norm(b_spec, h));
          }
          accumulate_packed(acc, a_spec, b_spec, h);
        }
        scale_buffer(acc, h, spectrum_scale(n));
        real_inverse(plan, acc, z);
        const RowCertificate cert = certify
            ? certificate_from_bound(
                  transform_error,
                  g.fold,
                  norm_products,
                  terms,
                  static_cast<int64_t>(target.bias_terms.size()))
            : RowCertificate{};
        // Each term's rows, converted on the target's first open output.
        thread_local std::vector<RecomputeRows> term_operands;
        if (term_operands.size() < target.terms.size())
          term_operands.resize(target.terms.size());
        bool operands_loaded = false;
        write_outputs<T>(
            g,
            cert,
            z,
            target.out,
            !target.bias_terms.empty(),
            [&](T v, int64_t t) {
              for (const auto& bt : target.bias_terms)
                v = r_add(
                    v,
                    r_prod(
                        v,
                        bt.a.data[t * bt.a.stride],
                        bt.bias.data[t * bt.bias.stride]));
              return r_round(v);
            },
            [&](double* value, double* magnitude) {
              for (const auto& bt : target.bias_terms)
                add_bias_products(bt.a, bt.bias, g.out_len, value, magnitude);
            },
            [&](int64_t t, auto range) {
              if (!operands_loaded) {
                for (size_t i = 0; i < target.terms.size(); ++i)
                  term_operands[i].load(
                      g, target.terms[i].a, target.terms[i].b);
                operands_loaded = true;
              }
              for (size_t i = 0; i < target.terms.size(); ++i)
                for_each_output_range(g, term_operands[i], t, range);
              for (const auto& bt : target.bias_terms)
                bias_range(bt.a, bt.bias, t, range);
            });
      });
}

// Each target element: the sum of the products a[i] * b[i], rounded once: in
// float32 mode accumulated in float in the order given, otherwise correctly
// rounded.
template <class T>
void product_sum(const ProductSumTask& task, int64_t len, int num_threads) {
  parallel_for(
      static_cast<int64_t>(task.targets.size()), num_threads, [&](int64_t ti) {
        const auto& target = task.targets[ti];
        auto sum = [&](int64_t t_begin, int64_t t_end) {
          if constexpr (certified<T>()) {
            // Products a[t] b[t] as ranges a(m0 - k) b(j0 + k): a seen
            // back to front, so that m0 - k is t_begin + k.
            return correctly_rounded_sum([&](auto range) {
              for (size_t j = 0; j < target.a.size(); ++j)
                range(
                    LoadedRow{target.a[j], len, true},
                    PlainRow{target.b[j]},
                    len - 1 - t_begin,
                    t_begin,
                    t_end - t_begin);
            });
          } else {
            float acc = 0.0f;
            for (size_t j = 0; j < target.a.size(); ++j)
              for (int64_t t = t_begin; t < t_end; ++t)
                acc = r_add(
                    acc,
                    r_mul(
                        target.a[j].data[t * target.a[j].stride],
                        target.b[j].data[t * target.b[j].stride]));
            return acc;
          }
        };
        if (target.sum_over_time) {
          target.out[0] = sum(0, len);
          return;
        }
        for (int64_t t = 0; t < len; ++t)
          target.out[t] = sum(t, t + 1);
      });
}

// Runs f with a value of the engine's working type for precision p: float for
// float32, double for extended and dd (dd is certified from the double engine).
template <class F>
void with_working_type(Precision p, F f) {
  if (p == Precision::Float32)
    f(float{});
  else
    f(double{});
}

} // namespace

void run_product_sum(
    Precision p,
    const ProductSumTask& task,
    int64_t len,
    int num_threads) {
  with_working_type(
      p, [&](auto t) { product_sum<decltype(t)>(task, len, num_threads); });
}

void run_shared_kernel(
    Precision p,
    const ConvGeometry& g,
    const SharedKernelTask& task,
    int num_threads) {
  with_working_type(
      p, [&](auto t) { shared_kernel<decltype(t)>(g, task, num_threads); });
}

void run_reduce(
    Precision p,
    const ConvGeometry& g,
    const ReduceTask& task,
    int num_threads) {
  with_working_type(
      p, [&](auto t) { reduce<decltype(t)>(g, task, num_threads); });
}

} // namespace mlx_precise::cpu::MP_CPU_ISA
