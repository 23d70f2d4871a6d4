// CPU FFT convolution, templated over the working precision T (float, double,
// ff). Compiled once per instruction-set build (MP_CPU_ISA); see conv_job.h.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "backend/cpu/conv_job.h"
#include "kernels/fft_butterflies.h"
#include "kernels/twiddles.h"

namespace mlx_precise::cpu::MP_CPU_ISA {
namespace {

// ---------------------------------------------------------------- plans ----

template <class T>
struct Plan {
  struct Stage {
    int64_t block;  // M
    int64_t quarter;  // M / radix
    int radix;
    int64_t tw_offset;
  };
  int64_t n;
  std::vector<Stage> stages;  // decimation-in-frequency order (M decreasing)
  std::vector<T> tw_re[3], tw_im[3];
  std::vector<int64_t> frequency;  // frequency held at each position
  std::vector<int64_t> partner;    // position holding frequency -f
};

template <class T>
T twiddle_component(double hi, double lo);

template <>
float twiddle_component<float>(double hi, double lo) {
  return static_cast<float>(hi);
}
template <>
double twiddle_component<double>(double hi, double lo) {
  return hi;
}
template <>
ff twiddle_component<ff>(double hi, double lo) {
  float h = static_cast<float>(hi);
  float l = static_cast<float>((hi - static_cast<double>(h)) + lo);
  return ff{h, l};
}

template <class T>
std::shared_ptr<Plan<T>> make_plan(int64_t n) {
  auto plan = std::make_shared<Plan<T>>();
  plan->n = n;
  int64_t m = n;
  int64_t offset = 0;
  while (m >= 4) {
    plan->stages.push_back({m, m / 4, 4, offset});
    offset += m / 4;
    m /= 4;
  }
  if (m == 2) plan->stages.push_back({2, 1, 2, offset});

  TwiddleSource twiddle(n > 1 ? n : 1);
  for (int k = 0; k < 3; ++k) {
    plan->tw_re[k].resize(offset);
    plan->tw_im[k].resize(offset);
  }
  for (const auto& st : plan->stages) {
    if (st.radix != 4) continue;
    int64_t step = n / st.block;
    for (int64_t j = 0; j < st.quarter; ++j) {
      for (int k = 0; k < 3; ++k) {
        // Forward twiddle w^m = cos(2 pi m / N) - i sin(2 pi m / N).
        TwiddleValue v = twiddle(step * j * (k + 1));
        plan->tw_re[k][st.tw_offset + j] = twiddle_component<T>(v.cos_hi, v.cos_lo);
        plan->tw_im[k][st.tw_offset + j] = twiddle_component<T>(-v.sin_hi, -v.sin_lo);
      }
    }
  }

  // Frequency held at each output position (mixed-radix digit reversal).
  std::vector<int64_t> position_of(n);
  plan->frequency.resize(n);
  for (int64_t p = 0; p < n; ++p) {
    int64_t f = 0, weight = 1, rest = p, size = n;
    for (const auto& st : plan->stages) {
      int64_t sub = size / st.radix;
      f += (rest / sub) * weight;
      rest %= sub;
      weight *= st.radix;
      size = sub;
    }
    position_of[f] = p;
    plan->frequency[p] = f;
  }
  plan->partner.resize(n);
  for (int64_t f = 0; f < n; ++f) {
    plan->partner[position_of[f]] = position_of[(n - f) % n];
  }
  return plan;
}

// ------------------------------------------------------------ transforms ----

template <class T>
void fft_forward(const Plan<T>& plan, T* __restrict re, T* __restrict im) {
  for (const auto& st : plan.stages) {
    const int64_t m = st.block, q = st.quarter;
    if (st.radix == 2) {
      for (int64_t b = 0; b < plan.n; b += 2) {
        cpx<T> x0{re[b], im[b]}, x1{re[b + 1], im[b + 1]};
        butterfly2(x0, x1);
        re[b] = x0.re, im[b] = x0.im, re[b + 1] = x1.re, im[b + 1] = x1.im;
      }
    } else if (q == 1) {
      for (int64_t b = 0; b < plan.n; b += 4) {
        cpx<T> x0{re[b], im[b]}, x1{re[b + 1], im[b + 1]};
        cpx<T> x2{re[b + 2], im[b + 2]}, x3{re[b + 3], im[b + 3]};
        dif4_unit(x0, x1, x2, x3);
        re[b] = x0.re, im[b] = x0.im, re[b + 1] = x1.re, im[b + 1] = x1.im;
        re[b + 2] = x2.re, im[b + 2] = x2.im, re[b + 3] = x3.re, im[b + 3] = x3.im;
      }
    } else {
      const T* __restrict w1r = plan.tw_re[0].data() + st.tw_offset;
      const T* __restrict w1i = plan.tw_im[0].data() + st.tw_offset;
      const T* __restrict w2r = plan.tw_re[1].data() + st.tw_offset;
      const T* __restrict w2i = plan.tw_im[1].data() + st.tw_offset;
      const T* __restrict w3r = plan.tw_re[2].data() + st.tw_offset;
      const T* __restrict w3i = plan.tw_im[2].data() + st.tw_offset;
      for (int64_t b = 0; b < plan.n; b += m) {
        T* __restrict r0 = re + b;
        T* __restrict i0 = im + b;
        for (int64_t j = 0; j < q; ++j) {
          cpx<T> x0{r0[j], i0[j]}, x1{r0[j + q], i0[j + q]};
          cpx<T> x2{r0[j + 2 * q], i0[j + 2 * q]}, x3{r0[j + 3 * q], i0[j + 3 * q]};
          dif4(x0, x1, x2, x3, cpx<T>{w1r[j], w1i[j]}, cpx<T>{w2r[j], w2i[j]},
               cpx<T>{w3r[j], w3i[j]});
          r0[j] = x0.re, i0[j] = x0.im, r0[j + q] = x1.re, i0[j + q] = x1.im;
          r0[j + 2 * q] = x2.re, i0[j + 2 * q] = x2.im;
          r0[j + 3 * q] = x3.re, i0[j + 3 * q] = x3.im;
        }
      }
    }
  }
}

// Unnormalised inverse: returns N times the inverse DFT.
template <class T>
void fft_inverse(const Plan<T>& plan, T* __restrict re, T* __restrict im) {
  for (auto it = plan.stages.rbegin(); it != plan.stages.rend(); ++it) {
    const auto& st = *it;
    const int64_t m = st.block, q = st.quarter;
    if (st.radix == 2) {
      for (int64_t b = 0; b < plan.n; b += 2) {
        cpx<T> x0{re[b], im[b]}, x1{re[b + 1], im[b + 1]};
        butterfly2(x0, x1);
        re[b] = x0.re, im[b] = x0.im, re[b + 1] = x1.re, im[b + 1] = x1.im;
      }
    } else if (q == 1) {
      for (int64_t b = 0; b < plan.n; b += 4) {
        cpx<T> x0{re[b], im[b]}, x1{re[b + 1], im[b + 1]};
        cpx<T> x2{re[b + 2], im[b + 2]}, x3{re[b + 3], im[b + 3]};
        dit4_inverse_unit(x0, x1, x2, x3);
        re[b] = x0.re, im[b] = x0.im, re[b + 1] = x1.re, im[b + 1] = x1.im;
        re[b + 2] = x2.re, im[b + 2] = x2.im, re[b + 3] = x3.re, im[b + 3] = x3.im;
      }
    } else {
      const T* __restrict w1r = plan.tw_re[0].data() + st.tw_offset;
      const T* __restrict w1i = plan.tw_im[0].data() + st.tw_offset;
      const T* __restrict w2r = plan.tw_re[1].data() + st.tw_offset;
      const T* __restrict w2i = plan.tw_im[1].data() + st.tw_offset;
      const T* __restrict w3r = plan.tw_re[2].data() + st.tw_offset;
      const T* __restrict w3i = plan.tw_im[2].data() + st.tw_offset;
      for (int64_t b = 0; b < plan.n; b += m) {
        T* __restrict r0 = re + b;
        T* __restrict i0 = im + b;
        for (int64_t j = 0; j < q; ++j) {
          cpx<T> x0{r0[j], i0[j]}, x1{r0[j + q], i0[j + q]};
          cpx<T> x2{r0[j + 2 * q], i0[j + 2 * q]}, x3{r0[j + 3 * q], i0[j + 3 * q]};
          dit4_inverse(x0, x1, x2, x3, cpx<T>{w1r[j], w1i[j]},
                       cpx<T>{w2r[j], w2i[j]}, cpx<T>{w3r[j], w3i[j]});
          r0[j] = x0.re, i0[j] = x0.im, r0[j + q] = x1.re, i0[j + q] = x1.im;
          r0[j + 2 * q] = x2.re, i0[j + 2 * q] = x2.im;
          r0[j + 3 * q] = x3.re, i0[j + 3 * q] = x3.im;
        }
      }
    }
  }
}

// ------------------------------------------------------- real transforms ----

// A real row of length N rides a complex FFT of length H = N/2 as
// z[m] = x[2m] + i x[2m+1]; the split step turns Z into 2X[f], f in [0, H),
// in the FFT's digit-reversed order, with the two real values 2X[0] and 2X[H]
// packed into position 0. Every row is transformed on its own, so its bits
// never depend on other rows. The inverse undoes each step and returns
// N times the inverse real DFT.
template <class T>
struct RealPlan {
  std::shared_ptr<Plan<T>> half;
  std::vector<T> w_re, w_im;  // w^f(p), w = exp(-2 pi i / N)
};

template <class T>
std::shared_ptr<RealPlan<T>> get_real_plan(int64_t n) {
  static std::mutex mutex;
  static std::map<int64_t, std::shared_ptr<RealPlan<T>>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(n);
  if (it != cache.end()) return it->second;
  auto rp = std::make_shared<RealPlan<T>>();
  const int64_t h = n / 2;
  rp->half = make_plan<T>(h);
  rp->w_re.resize(h);
  rp->w_im.resize(h);
  TwiddleSource twiddle(n);
  for (int64_t p = 0; p < h; ++p) {
    int64_t f = rp->half->frequency[p];
    TwiddleValue v = twiddle(f);
    rp->w_re[p] = twiddle_component<T>(v.cos_hi, v.cos_lo);
    rp->w_im[p] = twiddle_component<T>(-v.sin_hi, -v.sin_lo);
  }
  cache[n] = rp;
  return rp;
}

// Loads a[0..len) (or back to front) as z[m] = a[2m] + i a[2m+1], zero-padded.
template <class T>
void load_real(T* __restrict re, T* __restrict im, RealRow row, int64_t len, bool reversed,
               int64_t h) {
  const T tag{};
  std::fill(re, re + h, T{});
  std::fill(im, im + h, T{});
  for (int64_t i = 0; i < len; ++i) {
    int64_t src = reversed ? len - 1 - i : i;
    T v = r_from_float(tag, row.data[src * row.stride]);
    if (i & 1) im[i >> 1] = v;
    else re[i >> 1] = v;
  }
}

template <class T>
void real_forward(const RealPlan<T>& rp, T* re, T* im) {
  const Plan<T>& plan = *rp.half;
  fft_forward(plan, re, im);
  const int64_t h = plan.n;
  {
    T a = re[0], b = im[0];
    re[0] = r_scale(r_add(a, b), 2.0f);
    im[0] = r_scale(r_sub(a, b), 2.0f);
  }
  for (int64_t p = 1; p < h; ++p) {
    int64_t q = plan.partner[p];
    if (q < p) continue;
    cpx<T> zp{re[p], im[p]}, zq{re[q], im[q]};
    cpx<T> zq_conj{zq.re, r_neg(zq.im)}, zp_conj{zp.re, r_neg(zp.im)};
    // 2X[f] = (Z[f] + conj Z[H-f]) + w^f * (-i)(Z[f] - conj Z[H-f])
    cpx<T> xp = c_add(c_add(zp, zq_conj),
                      c_mul(cpx<T>{rp.w_re[p], rp.w_im[p]}, c_mul_neg_i(c_sub(zp, zq_conj))));
    cpx<T> xq = c_add(c_add(zq, zp_conj),
                      c_mul(cpx<T>{rp.w_re[q], rp.w_im[q]}, c_mul_neg_i(c_sub(zq, zp_conj))));
    re[p] = xp.re, im[p] = xp.im;
    re[q] = xq.re, im[q] = xq.im;
  }
}

template <class T>
void real_inverse(const RealPlan<T>& rp, T* re, T* im) {
  const Plan<T>& plan = *rp.half;
  const int64_t h = plan.n;
  {
    T c = re[0], d = im[0];
    re[0] = r_add(c, d);
    im[0] = r_sub(c, d);
  }
  for (int64_t p = 1; p < h; ++p) {
    int64_t q = plan.partner[p];
    if (q < p) continue;
    cpx<T> yp{re[p], im[p]}, yq{re[q], im[q]};
    cpx<T> yq_conj{yq.re, r_neg(yq.im)}, yp_conj{yp.re, r_neg(yp.im)};
    // Z[f] = (Y[f] + conj Y[H-f]) + i conj(w^f) (Y[f] - conj Y[H-f])
    cpx<T> zp = c_add(c_add(yp, yq_conj),
                      c_mul_pos_i(c_mul_conj(c_sub(yp, yq_conj), cpx<T>{rp.w_re[p], rp.w_im[p]})));
    cpx<T> zq = c_add(c_add(yq, yp_conj),
                      c_mul_pos_i(c_mul_conj(c_sub(yq, yp_conj), cpx<T>{rp.w_re[q], rp.w_im[q]})));
    re[p] = zp.re, im[p] = zp.im;
    re[q] = zq.re, im[q] = zq.im;
  }
  fft_inverse(plan, re, im);
}

// Spectral product in the packed format (position 0: two real values).
template <class T>
void multiply_packed(T* __restrict re, T* __restrict im, const T* __restrict kre,
                     const T* __restrict kim, int64_t h) {
  T dc = r_mul(re[0], kre[0]), nyquist = r_mul(im[0], kim[0]);
  for (int64_t p = 0; p < h; ++p) {
    cpx<T> z = c_mul(cpx<T>{re[p], im[p]}, cpx<T>{kre[p], kim[p]});
    re[p] = z.re;
    im[p] = z.im;
  }
  re[0] = dc;
  im[0] = nyquist;
}

// acc += a * b in the packed format.
template <class T>
void accumulate_packed(T* __restrict acc_re, T* __restrict acc_im, const T* __restrict are,
                       const T* __restrict aim, const T* __restrict bre,
                       const T* __restrict bim, int64_t h) {
  T dc = r_add(acc_re[0], r_mul(are[0], bre[0]));
  T nyquist = r_add(acc_im[0], r_mul(aim[0], bim[0]));
  for (int64_t p = 0; p < h; ++p) {
    cpx<T> z = c_mul(cpx<T>{are[p], aim[p]}, cpx<T>{bre[p], bim[p]});
    acc_re[p] = r_add(acc_re[p], z.re);
    acc_im[p] = r_add(acc_im[p], z.im);
  }
  acc_re[0] = dc;
  acc_im[0] = nyquist;
}

// Entry t of the output from the time-domain result z (x[2m] + i x[2m+1]).
template <class T>
inline T sample(const T* re, const T* im, int64_t i) {
  return (i & 1) ? im[i >> 1] : re[i >> 1];
}

template <class T>
inline T gather(const ConvGeometry& g, const T* re, const T* im, int64_t t) {
  int64_t i = t;
  if (g.out_reversed) {
    i = g.out_origin - t;
    if (i < 0) i += g.period;
  }
  T v = i < g.fft_size ? sample(re, im, i) : T{};
  if (g.fold && i + g.period < g.fft_size) v = r_add(v, sample(re, im, i + g.period));
  return v;
}

template <class Fn>
void parallel_for(int64_t count, int num_threads, Fn fn) {
  int workers = static_cast<int>(std::min<int64_t>(std::max(num_threads, 1), count));
  if (workers <= 1) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  auto work = [&]() {
    for (int64_t i = next++; i < count; i = next++) fn(i);
  };
  std::vector<std::thread> threads;
  for (int w = 1; w < workers; ++w) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
}

// 1/(4N): the forward split doubles each spectrum and the inverse split
// doubles again; the unnormalised inverse multiplies by N/2 (exact scaling).
inline float spectrum_scale(int64_t n) {
  return std::ldexp(1.0f, -2 - static_cast<int>(std::ilogb(static_cast<float>(n))));
}

template <class T>
struct Spectrum {
  std::vector<T> re, im;
};

template <class T>
void shared_kernel(const ConvGeometry& g, const SharedKernelTask& task, int num_threads) {
  const int64_t n = g.fft_size, h = n / 2;
  auto rp_ptr = get_real_plan<T>(n);
  const RealPlan<T>& rp = *rp_ptr;
  const float scale = spectrum_scale(n);

  std::vector<Spectrum<T>> spectra(task.b_rows.size());
  parallel_for(static_cast<int64_t>(spectra.size()), num_threads, [&](int64_t i) {
    Spectrum<T>& s = spectra[i];
    s.re.resize(h);
    s.im.resize(h);
    load_real(s.re.data(), s.im.data(), task.b_rows[i], g.b_len, false, h);
    real_forward(rp, s.re.data(), s.im.data());
    for (int64_t p = 0; p < h; ++p) {
      s.re[p] = r_scale(s.re[p], scale);
      s.im[p] = r_scale(s.im[p], scale);
    }
  });

  const T tag{};
  parallel_for(static_cast<int64_t>(task.rows.size()), num_threads, [&](int64_t r) {
    thread_local std::vector<T> re, im;
    re.resize(h);
    im.resize(h);
    const auto& row = task.rows[r];
    load_real(re.data(), im.data(), row.a, g.a_len, g.a_reversed, h);
    real_forward(rp, re.data(), im.data());
    const Spectrum<T>& k = spectra[row.b_index];
    multiply_packed(re.data(), im.data(), k.re.data(), k.im.data(), h);
    real_inverse(rp, re.data(), im.data());
    for (int64_t t = 0; t < g.out_len; ++t) {
      T v = gather(g, re.data(), im.data(), t);
      if (row.has_bias) {
        v = r_add(v, r_prod(tag, row.a.data[t * row.a.stride], row.bias.data[t * row.bias.stride]));
      }
      row.out[t] = r_round(v);
    }
  });
}

// Each target: sum over its terms of A * B in the frequency domain, one
// inverse transform, the bias terms added, one rounding.
template <class T>
void reduce(const ConvGeometry& g, const ReduceTask& task, int num_threads) {
  const int64_t n = g.fft_size, h = n / 2;
  auto rp_ptr = get_real_plan<T>(n);
  const RealPlan<T>& rp = *rp_ptr;
  const float scale = spectrum_scale(n);
  const T tag{};

  parallel_for(static_cast<int64_t>(task.targets.size()), num_threads, [&](int64_t ti) {
    thread_local std::vector<T> are, aim, bre, bim, acc_re, acc_im;
    for (auto* v : {&are, &aim, &bre, &bim, &acc_re, &acc_im}) v->resize(h);
    std::fill(acc_re.begin(), acc_re.end(), T{});
    std::fill(acc_im.begin(), acc_im.end(), T{});
    const auto& target = task.targets[ti];
    for (const auto& term : target.terms) {
      load_real(are.data(), aim.data(), term.a, g.a_len, g.a_reversed, h);
      real_forward(rp, are.data(), aim.data());
      load_real(bre.data(), bim.data(), term.b, g.b_len, false, h);
      real_forward(rp, bre.data(), bim.data());
      accumulate_packed(acc_re.data(), acc_im.data(), are.data(), aim.data(), bre.data(),
                        bim.data(), h);
    }
    for (int64_t p = 0; p < h; ++p) {
      acc_re[p] = r_scale(acc_re[p], scale);
      acc_im[p] = r_scale(acc_im[p], scale);
    }
    real_inverse(rp, acc_re.data(), acc_im.data());
    for (int64_t t = 0; t < g.out_len; ++t) {
      T v = gather(g, acc_re.data(), acc_im.data(), t);
      for (const auto& bt : target.bias_terms)
        v = r_add(v, r_prod(tag, bt.a.data[t * bt.a.stride], bt.bias.data[t * bt.bias.stride]));
      target.out[t] = r_round(v);
    }
  });
}

// Each target element: sum of exact products a[i] * b[i] in the working
// precision, in the order given, one rounding.
template <class T>
void product_sum(const ProductSumTask& task, int64_t len, int num_threads) {
  const T tag{};
  parallel_for(static_cast<int64_t>(task.targets.size()), num_threads, [&](int64_t ti) {
    const auto& target = task.targets[ti];
    auto term = [&](size_t j, int64_t t) {
      return r_prod(tag, target.a[j].data[t * target.a[j].stride],
                    target.b[j].data[t * target.b[j].stride]);
    };
    if (target.sum_over_time) {
      T acc{};
      for (size_t j = 0; j < target.a.size(); ++j)
        for (int64_t t = 0; t < len; ++t) acc = r_add(acc, term(j, t));
      target.out[0] = r_round(acc);
      return;
    }
    for (int64_t t = 0; t < len; ++t) {
      T acc{};
      for (size_t j = 0; j < target.a.size(); ++j) acc = r_add(acc, term(j, t));
      target.out[t] = r_round(acc);
    }
  });
}

} // namespace

void run_product_sum(Precision p, const ProductSumTask& task, int64_t len, int num_threads) {
  switch (p) {
    case Precision::Float32:
      return product_sum<float>(task, len, num_threads);
    case Precision::Extended:
      return product_sum<double>(task, len, num_threads);
    case Precision::DoubleDouble:
      return product_sum<ff>(task, len, num_threads);
  }
}

void run_shared_kernel(Precision p, const ConvGeometry& g, const SharedKernelTask& task,
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

void run_reduce(Precision p, const ConvGeometry& g, const ReduceTask& task, int num_threads) {
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
