#include "ops.h"

#include <stdexcept>

#include <mlx/ops.h>

#include "messages.h"
#include "primitives.h"

namespace mlx_precise::fft {

namespace {

// The largest transform the CPU engine will plan (memory: a few N-long rows
// of the working precision per thread).
constexpr int64_t kMaxLength = int64_t(1) << 24;

std::string shape_str(const mx::Shape& s) {
  return to_text(s);
}

void check_float32(const mx::array& x, const char* what) {
  if (x.dtype() != mx::float32) {
    throw std::invalid_argument(message(
        "rfft_conv: ",
        what,
        " has dtype ",
        x.dtype(),
        "; rfft_conv takes float32 arrays and never casts silently: pass ",
        what,
        ".astype(mx.float32) if that rounding is what you want"));
  }
}

mx::Shape batch_of(const mx::array& x) {
  return mx::Shape(x.shape().begin(), x.shape().end() - 1);
}

} // namespace

mx::array rfft_conv_from_parts(
    const mx::array& u,
    const mx::array& k,
    int64_t period,
    const std::optional<mx::array>& bias,
    Precision precision,
    mx::Stream stream) {
  mx::Shape out_shape = mx::broadcast_shapes(batch_of(u), batch_of(k));
  out_shape.push_back(u.shape().back());
  std::vector<mx::array> inputs{u, k};
  if (bias)
    inputs.push_back(*bias);
  return mx::array(
      out_shape,
      mx::float32,
      std::make_shared<RFFTConv>(
          stream,
          ConvVariant::Convolve,
          period,
          precision,
          bias.has_value(),
          out_shape),
      std::move(inputs));
}

ConvArguments check_rfft_conv_arguments(
    const mx::array& u,
    const mx::array& k,
    std::optional<int64_t> n,
    const std::optional<mx::array>& bias,
    mx::StreamOrDevice s) {
  check_float32(u, "u");
  check_float32(k, "k");
  if (bias)
    check_float32(*bias, "bias");
  if (u.ndim() < 1 || k.ndim() < 1) {
    throw std::invalid_argument(
        "rfft_conv: u and k need a last (time) axis; got shapes " +
        shape_str(u.shape()) + " and " + shape_str(k.shape()) +
        ": pass 1-D or higher arrays");
  }
  if (u.size() == 0 || k.size() == 0) {
    throw std::invalid_argument(
        "rfft_conv: empty input (u " + shape_str(u.shape()) + ", k " +
        shape_str(k.shape()) + "): every axis needs length >= 1");
  }
  const int64_t L = u.shape().back(), Lk = k.shape().back();
  if (L > kMaxLength || Lk > kMaxLength) {
    throw std::invalid_argument(
        "rfft_conv: lengths above 2^24 are not supported (L = " +
        std::to_string(L) + ", Lk = " + std::to_string(Lk) + ")");
  }
  mx::Shape out_batch;
  try {
    out_batch = mx::broadcast_shapes(batch_of(u), batch_of(k));
  } catch (const std::invalid_argument&) {
    throw std::invalid_argument(
        "rfft_conv: the leading dims of u " + shape_str(u.shape()) + " and k " +
        shape_str(k.shape()) +
        " do not broadcast; all but the last axis must broadcast against each other");
  }
  int64_t period = 0;
  if (n) {
    if (*n < L || *n < Lk) {
      throw std::invalid_argument(
          "rfft_conv: n = " + std::to_string(*n) + " must be at least L = " +
          std::to_string(L) + " and Lk = " + std::to_string(Lk) +
          " (n is the circular convolution size of irfft(rfft(u, n) * rfft(k, n), n))");
    }
    if (*n > kMaxLength) {
      throw std::invalid_argument("rfft_conv: n above 2^24 is not supported");
    }
    period = *n;
  }
  std::optional<mx::array> b = bias;
  if (bias) {
    mx::Shape out_shape = out_batch;
    out_shape.push_back(L);
    mx::array bb = bias->ndim() == 0 ? mx::reshape(*bias, {1}, s) : *bias;
    bool ok = bb.ndim() <= static_cast<int>(out_shape.size());
    if (ok) {
      try {
        ok = mx::broadcast_shapes(bb.shape(), out_shape) == out_shape;
      } catch (const std::invalid_argument&) {
        ok = false;
      }
    }
    if (!ok) {
      throw std::invalid_argument(
          "rfft_conv: bias of shape " + shape_str(bias->shape()) +
          " does not broadcast to the output shape " + shape_str(out_shape) +
          "; M2/Hyena's per-channel D of shape (H,) is passed as D[:, None]");
    }
    b = bb;
  }
  return ConvArguments{period, b};
}

mx::array rfft_conv(
    const mx::array& u,
    const mx::array& k,
    std::optional<int64_t> n,
    const std::optional<mx::array>& bias,
    const std::string& precision,
    mx::StreamOrDevice s) {
  Precision p = parse_precision(precision, "rfft_conv");
  const ConvArguments args = check_rfft_conv_arguments(u, k, n, bias, s);
  return rfft_conv_from_parts(
      u, k, args.period, args.bias, p, mx::to_stream(s));
}

} // namespace mlx_precise::fft
