#include "strict_ops.h"

#include <cmath>
#include <stdexcept>

#include <mlx/backend/cuda/cuda.h>
#include <mlx/fast.h>
#include <mlx/ops.h>

#include "messages.h"
#include "strict_primitives.h"

namespace mlx_precise {

namespace {

// BLAS dimensions are 32-bit; larger matrices would need another code path.
constexpr int64_t kMaxMatrixDim = (int64_t(1) << 31) - 1;

std::string shape_of(const mx::array& x) {
  return to_text(x.shape());
}

void check_float32(const char* op, const mx::array& x, const char* what) {
  if (x.dtype() != mx::float32) {
    throw std::invalid_argument(message(
        op,
        ": ",
        what,
        " has dtype ",
        x.dtype(),
        "; ",
        op,
        " takes float32 arrays and never casts silently: pass ",
        what,
        ".astype(mx.float32) if that rounding is what you want"));
  }
}

mx::Shape batch_of(const mx::array& x) {
  return mx::Shape(x.shape().begin(), x.shape().end() - 2);
}

// "float32" products run MLX's own matmul, except on CUDA, whose float32
// matmuls default to TF32 (MLX_ENABLE_TF32, a process-wide setting we leave
// alone): there StrictAddmm runs a plain float32 GEMM.
bool strict_float32_gemm(const mx::Stream& s) {
  return s.device == mx::Device::gpu && mx::cu::is_available();
}

} // namespace

mx::array strict_addmm_from_parts(
    const mx::array& a,
    const mx::array& b,
    const std::optional<mx::array>& c,
    float alpha,
    float beta,
    Precision precision,
    mx::Stream stream) {
  mx::Shape out_shape = mx::broadcast_shapes(batch_of(a), batch_of(b));
  out_shape.push_back(a.shape(-2));
  out_shape.push_back(b.shape(-1));
  std::vector<mx::array> inputs{a, b};
  if (c)
    inputs.push_back(*c);
  return mx::array(
      out_shape,
      mx::float32,
      std::make_shared<StrictAddmm>(
          stream, precision, alpha, beta, c.has_value(), out_shape),
      std::move(inputs));
}

mx::array strict_layer_norm_from_parts(
    const mx::array& x,
    const std::optional<mx::array>& weight,
    const std::optional<mx::array>& bias,
    double eps,
    Precision precision,
    mx::Stream stream) {
  std::vector<mx::array> inputs{x};
  if (weight)
    inputs.push_back(*weight);
  if (bias)
    inputs.push_back(*bias);
  return mx::array(
      x.shape(),
      mx::float32,
      std::make_shared<StrictLayerNorm>(
          stream, precision, eps, weight.has_value(), bias.has_value()),
      std::move(inputs));
}

namespace {

// Validates a @ b [+ c] and returns the output shape.
mx::Shape matmul_shape(
    const char* op,
    const mx::array& a,
    const mx::array& b,
    const std::optional<mx::array>& c,
    const char* a_name,
    const char* b_name) {
  if (a.ndim() < 2 || b.ndim() < 2) {
    throw std::invalid_argument(
        std::string(op) + ": " + a_name + " " + shape_of(a) + " and " + b_name +
        " " + shape_of(b) +
        " must have at least 2 dims, (..., M, K) and (..., K, N)");
  }
  if (a.shape(-1) != b.shape(-2)) {
    throw std::invalid_argument(
        std::string(op) + ": inner dimensions differ: " + a_name + " " +
        shape_of(a) + " has K = " + std::to_string(a.shape(-1)) + " but " +
        b_name + " " + shape_of(b) + " has K = " + std::to_string(b.shape(-2)));
  }
  if (a.shape(-2) > kMaxMatrixDim || a.shape(-1) > kMaxMatrixDim ||
      b.shape(-1) > kMaxMatrixDim) {
    throw std::invalid_argument(
        std::string(op) + ": matrix dimensions above 2^31 - 1");
  }
  mx::Shape out;
  try {
    out = mx::broadcast_shapes(batch_of(a), batch_of(b));
  } catch (const std::invalid_argument&) {
    throw std::invalid_argument(
        std::string(op) + ": the batch dims of " + a_name + " " + shape_of(a) +
        " and " + b_name + " " + shape_of(b) + " do not broadcast");
  }
  out.push_back(a.shape(-2));
  out.push_back(b.shape(-1));
  if (c) {
    bool ok = c->ndim() <= out.size();
    if (ok) {
      try {
        ok = mx::broadcast_shapes(c->shape(), out) == out;
      } catch (const std::invalid_argument&) {
        ok = false;
      }
    }
    if (!ok) {
      throw std::invalid_argument(message(
          op,
          ": ",
          c->ndim() == 1 && std::string(op) == "linear" ? "bias" : "c",
          " ",
          c->shape(),
          " does not broadcast to the output shape ",
          out));
    }
  }
  return out;
}

} // namespace

void check_addmm_arguments(
    const char* op,
    const mx::array& c,
    const mx::array& a,
    const mx::array& b) {
  check_float32(op, c, "c");
  check_float32(op, a, "a");
  check_float32(op, b, "b");
  matmul_shape(op, a, b, c, "a", "b");
}

void check_linear_arguments(
    const char* op,
    const mx::array& x,
    const mx::array& weight,
    const std::optional<mx::array>& bias) {
  check_float32(op, x, "x");
  check_float32(op, weight, "weight");
  if (bias)
    check_float32(op, *bias, "bias");
  if (x.ndim() < 1 || weight.ndim() != 2) {
    throw std::invalid_argument(
        std::string(op) + ": x " + shape_of(x) +
        " must be (..., in_features) and "
        "weight " +
        shape_of(weight) + " must be (out_features, in_features)");
  }
  if (x.shape(-1) != weight.shape(1)) {
    throw std::invalid_argument(
        std::string(op) + ": x " + shape_of(x) + " has " +
        std::to_string(x.shape(-1)) + " features but weight " +
        shape_of(weight) +
        " expects in_features = " + std::to_string(weight.shape(1)));
  }
  if (bias && !(bias->ndim() == 1 && bias->shape(0) == weight.shape(0))) {
    throw std::invalid_argument(
        std::string(op) + ": bias " + shape_of(*bias) + " must have shape (" +
        std::to_string(weight.shape(0)) + ",) (out_features)");
  }
}

void check_layer_norm_arguments(
    const char* op,
    const mx::array& x,
    const std::optional<mx::array>& weight,
    const std::optional<mx::array>& bias,
    double eps) {
  check_float32(op, x, "x");
  if (weight)
    check_float32(op, *weight, "weight");
  if (bias)
    check_float32(op, *bias, "bias");
  if (x.ndim() < 1 || x.shape(-1) < 1) {
    throw std::invalid_argument(
        std::string(op) + ": x " + shape_of(x) +
        " needs a non-empty last (feature) axis");
  }
  const int dim = x.shape(-1);
  for (const auto* param : {&weight, &bias}) {
    if (*param && !((*param)->ndim() == 1 && (*param)->shape(0) == dim)) {
      throw std::invalid_argument(
          std::string(op) + ": " + (param == &weight ? "weight " : "bias ") +
          shape_of(**param) + " must have shape (" + std::to_string(dim) +
          ",), the last axis of x " + shape_of(x));
    }
  }
  if (!(eps >= 0.0) || std::isinf(eps)) {
    throw std::invalid_argument(
        std::string(op) + ": eps must be finite and >= 0, got " +
        std::to_string(eps));
  }
  if (dim >= (1 << 24)) {
    throw std::invalid_argument(
        std::string(op) + ": feature axes of 2^24 or more are not supported");
  }
}

mx::array addmm(
    const mx::array& c,
    const mx::array& a,
    const mx::array& b,
    float alpha,
    float beta,
    const std::string& precision,
    mx::StreamOrDevice s) {
  Precision p = parse_precision(precision, "addmm");
  check_addmm_arguments("addmm", c, a, b);
  const mx::Stream stream = mx::to_stream(s);
  if (p == Precision::Float32 && !strict_float32_gemm(stream))
    return mx::addmm(c, a, b, alpha, beta, stream);
  // beta = 0 ignores c, NaN and Inf included, as mx.addmm and torch do.
  return strict_addmm_from_parts(
      a,
      b,
      beta == 0.0f ? std::nullopt : std::optional<mx::array>(c),
      alpha,
      beta,
      p,
      stream);
}

mx::array linear(
    const mx::array& x,
    const mx::array& weight,
    const std::optional<mx::array>& bias,
    const std::string& precision,
    mx::StreamOrDevice s) {
  Precision p = parse_precision(precision, "linear");
  check_linear_arguments("linear", x, weight, bias);
  // All leading dims of x are rows: one (rows, K) @ (K, N) product.
  const mx::Shape x_shape = x.shape();
  const int64_t in_features = x_shape.back();
  mx::array rows = mx::reshape(x, {-1, static_cast<int>(in_features)}, s);
  mx::array weight_t = mx::transpose(weight, s);
  matmul_shape("linear", rows, weight_t, bias, "x", "weight.T");
  mx::array y = [&]() {
    const mx::Stream stream = mx::to_stream(s);
    if (p == Precision::Float32 && !strict_float32_gemm(stream)) {
      return bias ? mx::addmm(*bias, rows, weight_t, 1.0f, 1.0f, stream)
                  : mx::matmul(rows, weight_t, stream);
    }
    return strict_addmm_from_parts(rows, weight_t, bias, 1.0f, 1.0f, p, stream);
  }();
  mx::Shape out_shape = x_shape;
  out_shape.back() = weight.shape(0);
  return mx::reshape(y, out_shape, s);
}

mx::array layer_norm(
    const mx::array& x,
    const std::optional<mx::array>& weight,
    const std::optional<mx::array>& bias,
    double eps,
    const std::string& precision,
    mx::StreamOrDevice s) {
  Precision p = parse_precision(precision, "layer_norm");
  check_layer_norm_arguments("layer_norm", x, weight, bias, eps);
  if (p == Precision::Float32) {
    return mx::fast::layer_norm(x, weight, bias, static_cast<float>(eps), s);
  }
  return strict_layer_norm_from_parts(
      x, weight, bias, eps, p, mx::to_stream(s));
}

} // namespace mlx_precise
