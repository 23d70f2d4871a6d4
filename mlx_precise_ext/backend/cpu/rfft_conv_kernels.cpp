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
#include "kernels/fft_plan.h"
#include "kernels/rfft_conv_core.h"

namespace mlx_precise::cpu::MP_CPU_ISA {
namespace {

// ---------------------------------------------------------------- plans ----

// The shared plan's tables converted once to the working precision T, in
// split (re/im) arrays so the butterfly loops vectorise.
template <class T>
struct Plan {
  std::shared_ptr<const RealFFTPlan> shared;
  int64_t n;  // complex length H
  std::vector<FFTStage> stages;
  std::vector<T> tw_re[3], tw_im[3];
  std::vector<T> split_re, split_im;
  const int64_t* partner;
};

template <class T>
std::shared_ptr<const Plan<T>> get_plan(int64_t n_real) {
  static std::mutex mutex;
  static std::map<int64_t, std::shared_ptr<const Plan<T>>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(n_real);
  if (it != cache.end()) return it->second;
  auto plan = std::make_shared<Plan<T>>();
  plan->shared = real_fft_plan(n_real);
  const RealFFTPlan& rp = *plan->shared;
  plan->n = rp.n_half;
  plan->stages = rp.stages;
  for (int k = 0; k < 3; ++k) {
    const auto& src = rp.stage_twiddles[k];
    plan->tw_re[k].resize(src.size());
    plan->tw_im[k].resize(src.size());
    for (size_t j = 0; j < src.size(); ++j) forward_twiddle(src[j], plan->tw_re[k][j], plan->tw_im[k][j]);
  }
  plan->split_re.resize(rp.n_half);
  plan->split_im.resize(rp.n_half);
  for (int64_t p = 0; p < rp.n_half; ++p)
    forward_twiddle(rp.split_twiddles[p], plan->split_re[p], plan->split_im[p]);
  plan->partner = rp.partner.data();
  cache[n_real] = plan;
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

// Real rows ride a complex FFT of half length (rfft_conv_core.h). Every row is
// transformed on its own, so its bits never depend on other rows.

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
void real_forward(const Plan<T>& plan, T* re, T* im) {
  fft_forward(plan, re, im);
  const cpx<T> dc = rfft_split_dc(cpx<T>{re[0], im[0]});
  re[0] = dc.re, im[0] = dc.im;
  for (int64_t p = 1; p < plan.n; ++p) {
    const int64_t q = plan.partner[p];
    if (q < p) continue;
    const cpx<T> zp{re[p], im[p]}, zq{re[q], im[q]};
    const cpx<T> xp = rfft_split(zp, zq, cpx<T>{plan.split_re[p], plan.split_im[p]});
    const cpx<T> xq = rfft_split(zq, zp, cpx<T>{plan.split_re[q], plan.split_im[q]});
    re[p] = xp.re, im[p] = xp.im;
    re[q] = xq.re, im[q] = xq.im;
  }
}

template <class T>
void real_inverse(const Plan<T>& plan, T* re, T* im) {
  const cpx<T> dc = rfft_unsplit_dc(cpx<T>{re[0], im[0]});
  re[0] = dc.re, im[0] = dc.im;
  for (int64_t p = 1; p < plan.n; ++p) {
    const int64_t q = plan.partner[p];
    if (q < p) continue;
    const cpx<T> yp{re[p], im[p]}, yq{re[q], im[q]};
    const cpx<T> zp = rfft_unsplit(yp, yq, cpx<T>{plan.split_re[p], plan.split_im[p]});
    const cpx<T> zq = rfft_unsplit(yq, yp, cpx<T>{plan.split_re[q], plan.split_im[q]});
    re[p] = zp.re, im[p] = zp.im;
    re[q] = zq.re, im[q] = zq.im;
  }
  fft_inverse(plan, re, im);
}

// Spectral product in the packed format.
template <class T>
void multiply_packed(T* __restrict re, T* __restrict im, const T* __restrict kre,
                     const T* __restrict kim, int64_t h) {
  for (int64_t p = 0; p < h; ++p) {
    const cpx<T> z = packed_mul(cpx<T>{re[p], im[p]}, cpx<T>{kre[p], kim[p]}, p == 0);
    re[p] = z.re;
    im[p] = z.im;
  }
}

// acc += a * b in the packed format.
template <class T>
void accumulate_packed(T* __restrict acc_re, T* __restrict acc_im, const T* __restrict are,
                       const T* __restrict aim, const T* __restrict bre,
                       const T* __restrict bim, int64_t h) {
  for (int64_t p = 0; p < h; ++p) {
    const cpx<T> z = packed_mul(cpx<T>{are[p], aim[p]}, cpx<T>{bre[p], bim[p]}, p == 0);
    acc_re[p] = r_add(acc_re[p], z.re);
    acc_im[p] = r_add(acc_im[p], z.im);
  }
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

template <class T>
struct Spectrum {
  std::vector<T> re, im;
};

template <class T>
void shared_kernel(const ConvGeometry& g, const SharedKernelTask& task, int num_threads) {
  const int64_t n = g.fft_size, h = n / 2;
  auto plan_ptr = get_plan<T>(n);
  const Plan<T>& rp = *plan_ptr;
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
      row.out[t] = row.has_bias
                       ? finish_output(gather(g, re.data(), im.data(), t), true,
                                       row.a.data[t * row.a.stride],
                                       row.bias.data[t * row.bias.stride])
                       : finish_output(gather(g, re.data(), im.data(), t), false, 0.0f, 0.0f);
    }
  });
}

// Each target: sum over its terms of A * B in the frequency domain, one
// inverse transform, the bias terms added, one rounding.
template <class T>
void reduce(const ConvGeometry& g, const ReduceTask& task, int num_threads) {
  const int64_t n = g.fft_size, h = n / 2;
  auto plan_ptr = get_plan<T>(n);
  const Plan<T>& rp = *plan_ptr;
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
