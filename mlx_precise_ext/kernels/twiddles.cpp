#include "twiddles.h"

#include <cmath>
#include <stdexcept>

namespace mlx_precise {
namespace {

// Double-double (pairs of float64) arithmetic, only for generating twiddles.
// The same IEEE operations in the same order on every platform; contraction
// is off for this file and fma is written where it is meant.
struct d2 {
  double hi, lo;
};

inline d2 quick_two_sum(double a, double b) {
  double s = a + b;
  return {s, b - (s - a)};
}

inline d2 two_sum(double a, double b) {
  double s = a + b;
  double bb = s - a;
  return {s, (a - (s - bb)) + (b - bb)};
}

inline d2 add(d2 x, d2 y) {
  d2 s = two_sum(x.hi, y.hi);
  d2 t = two_sum(x.lo, y.lo);
  d2 v = quick_two_sum(s.hi, s.lo + t.hi);
  return quick_two_sum(v.hi, t.lo + v.lo);
}

inline d2 neg(d2 x) {
  return {-x.hi, -x.lo};
}

inline d2 mul(d2 x, d2 y) {
  double p = x.hi * y.hi;
  double e = std::fma(x.hi, y.hi, -p);
  double t = std::fma(x.hi, y.lo, x.lo * y.hi);
  return quick_two_sum(p, e + t);
}

inline d2 mul_d(d2 x, double y) {
  double p = x.hi * y;
  double e = std::fma(x.hi, y, -p);
  return quick_two_sum(p, std::fma(x.lo, y, e));
}

// x / y for a small positive integer y (exact in double).
inline d2 div_d(d2 x, double y) {
  double q1 = x.hi / y;
  d2 r = add(x, neg(mul_d({q1, 0.0}, y)));
  double q2 = r.hi / y;
  r = add(r, neg(mul_d({q2, 0.0}, y)));
  double q3 = r.hi / y;
  d2 q = quick_two_sum(q1, q2);
  return add(q, {q3, 0.0});
}

// pi/2 to about 107 bits.
constexpr d2 kHalfPi = {1.5707963267948966e+00, 6.123233995736766e-17};

// cos and sin of x in [0, pi/4] by their Taylor series (terms below 1e-34).
void taylor_cos_sin(d2 x, d2& c, d2& s) {
  d2 x2 = mul(x, x);
  d2 term = x; // x^(2k+1)/(2k+1)!
  s = x;
  for (int k = 1; k <= 15; ++k) {
    term =
        div_d(mul(term, neg(x2)), static_cast<double>((2 * k) * (2 * k + 1)));
    s = add(s, term);
  }
  term = {1.0, 0.0}; // x^(2k)/(2k)!
  c = term;
  for (int k = 1; k <= 15; ++k) {
    term =
        div_d(mul(term, neg(x2)), static_cast<double>((2 * k - 1) * (2 * k)));
    c = add(c, term);
  }
}

// cos and sin of (pi/2) * num / den, for 0 <= num <= den (den a power of two).
void quarter_turn_cos_sin(int64_t num, int64_t den, d2& c, d2& s) {
  bool swap = 2 * num > den;
  int64_t r = swap ? den - num : num; // angle now in [0, pi/4]
  d2 x = mul_d(kHalfPi, static_cast<double>(r));
  x = {
      x.hi / static_cast<double>(den),
      x.lo / static_cast<double>(den)}; // exact: den = 2^k
  taylor_cos_sin(x, c, s);
  if (swap) {
    d2 t = c;
    c = s;
    s = t;
  }
}

} // namespace

TwiddleSource::TwiddleSource(int64_t n) : n_(n) {
  if (n < 1 || (n & (n - 1)) != 0) {
    throw std::invalid_argument("TwiddleSource: N must be a power of two");
  }
  // First-quadrant index range: m in [0, N/4]; we tabulate quarter = max(N/4,
  // 1).
  int64_t quarter = n >= 4 ? n / 4 : 1;
  int64_t bits = 0;
  while ((int64_t(1) << bits) < quarter)
    ++bits;
  low_bits_ = bits / 2;
  fine_size_ = int64_t(1) << low_bits_;
  coarse_size_ = (quarter >> low_bits_) + 1;
  fine_ = new Entry[fine_size_];
  coarse_ = new Entry[coarse_size_];
  for (int64_t i = 0; i < fine_size_; ++i) {
    d2 c, s;
    quarter_turn_cos_sin(i, quarter, c, s);
    fine_[i] = {c.hi, c.lo, s.hi, s.lo};
  }
  for (int64_t i = 0; i < coarse_size_; ++i) {
    d2 c, s;
    quarter_turn_cos_sin(i << low_bits_, quarter, c, s);
    coarse_[i] = {c.hi, c.lo, s.hi, s.lo};
  }
}

TwiddleSource::~TwiddleSource() {
  delete[] fine_;
  delete[] coarse_;
}

// cos/sin of (pi/2) * m / quarter for m in [0, quarter]: angle addition of a
// coarse and a fine table entry, both from the Taylor series.
TwiddleSource::Entry TwiddleSource::first_quadrant(int64_t m) const {
  const Entry& a = coarse_[m >> low_bits_];
  const Entry& b = fine_[m & (fine_size_ - 1)];
  d2 ca{a.c_hi, a.c_lo}, sa{a.s_hi, a.s_lo}, cb{b.c_hi, b.c_lo},
      sb{b.s_hi, b.s_lo};
  d2 c = add(mul(ca, cb), neg(mul(sa, sb)));
  d2 s = add(mul(sa, cb), mul(ca, sb));
  return {c.hi, c.lo, s.hi, s.lo};
}

TwiddleValue TwiddleSource::operator()(int64_t m) const {
  m %= n_;
  if (m < 0)
    m += n_;
  if (n_ < 4) {
    // N = 1 or 2: angles 0 and pi.
    bool half = (n_ == 2 && m == 1);
    return {half ? -1.0 : 1.0, 0.0, 0.0, 0.0};
  }
  int64_t quarter = n_ / 4;
  int64_t quadrant = m / quarter;
  Entry e = first_quadrant(m - quadrant * quarter);
  switch (quadrant) {
    case 0:
      return {e.c_hi, e.c_lo, e.s_hi, e.s_lo};
    case 1: // cos(t + pi/2) = -sin t, sin(t + pi/2) = cos t
      return {-e.s_hi, -e.s_lo, e.c_hi, e.c_lo};
    case 2:
      return {-e.c_hi, -e.c_lo, -e.s_hi, -e.s_lo};
    default:
      return {e.s_hi, e.s_lo, -e.c_hi, -e.c_lo};
  }
}

} // namespace mlx_precise
