#include "fft_plan.h"

#include <map>
#include <mutex>
#include <stdexcept>

namespace mlx_precise {

namespace {

std::shared_ptr<RealFFTPlan> make_real_plan(int64_t n_real) {
  if (n_real < 2 || (n_real & (n_real - 1)) != 0) {
    throw std::invalid_argument("real_fft_plan: N must be a power of two >= 2");
  }
  auto plan = std::make_shared<RealFFTPlan>();
  const int64_t h = n_real / 2;
  plan->n_real = n_real;
  plan->n_half = h;

  int64_t m = h, offset = 0;
  while (m >= 4) {
    plan->stages.push_back({m, m / 4, 4, offset});
    offset += m / 4;
    m /= 4;
  }
  if (m == 2)
    plan->stages.push_back({2, 1, 2, offset});

  TwiddleSource half_twiddle(h);
  for (auto& table : plan->stage_twiddles)
    table.resize(offset);
  for (const auto& st : plan->stages) {
    if (st.radix != 4)
      continue;
    const int64_t step = h / st.block;
    for (int64_t j = 0; j < st.quarter; ++j)
      for (int k = 0; k < 3; ++k)
        plan->stage_twiddles[k][st.tw_offset + j] =
            half_twiddle(step * j * (k + 1));
  }

  // Position p holds frequency f: the first stage's butterfly index is the
  // lowest digit of f, and so on (mixed-radix digit reversal).
  std::vector<int64_t> position_of(h);
  plan->frequency.resize(h);
  for (int64_t p = 0; p < h; ++p) {
    int64_t f = 0, weight = 1, rest = p, size = h;
    for (const auto& st : plan->stages) {
      const int64_t sub = size / st.radix;
      f += (rest / sub) * weight;
      rest %= sub;
      weight *= st.radix;
      size = sub;
    }
    position_of[f] = p;
    plan->frequency[p] = f;
  }
  plan->partner.resize(h);
  plan->split_twiddles.resize(h);
  TwiddleSource real_twiddle(n_real);
  for (int64_t p = 0; p < h; ++p) {
    plan->partner[p] = position_of[(h - plan->frequency[p]) % h];
    plan->split_twiddles[p] = real_twiddle(plan->frequency[p]);
  }
  return plan;
}

} // namespace

std::shared_ptr<const RealFFTPlan> real_fft_plan(int64_t n_real) {
  static std::mutex mutex;
  static std::map<int64_t, std::shared_ptr<const RealFFTPlan>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(n_real);
  if (it != cache.end())
    return it->second;
  auto plan = make_real_plan(n_real);
  cache[n_real] = plan;
  return plan;
}

} // namespace mlx_precise
