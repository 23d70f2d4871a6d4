#include "pair_ops.h"

#include <sstream>
#include <stdexcept>

#include <mlx/ops.h>

#include "ops.h"
#include "strict_ops.h"

namespace mlx_precise {

namespace {

// The lo part must be a float32 array of hi's shape; hi's own checks are the
// op's (strict_ops.h, ops.h).
void check_pair(const char* op, const Pair& x, const char* what) {
  const auto& [hi, lo] = x;
  if (hi.dtype() != mx::float32 || lo.dtype() != mx::float32 ||
      hi.shape() != lo.shape()) {
    std::ostringstream os;
    os << op << ": " << what << " must be a pair of float32 arrays of one "
       << "shape (hi, lo); got " << hi.dtype() << " " << hi.shape() << " and "
       << lo.dtype() << " " << lo.shape()
       << ": a float32 array x enters as (x, zeros_like(x))";
    throw std::invalid_argument(os.str());
  }
}

Pair make_pair(
    const mx::Shape& shape,
    std::shared_ptr<mx::Primitive> primitive,
    std::vector<mx::array> inputs) {
  auto outs = mx::array::make_arrays(
      {shape, shape},
      {mx::float32, mx::float32},
      std::move(primitive),
      std::move(inputs));
  return {outs[0], outs[1]};
}

} // namespace

PairOp parse_pair_op(const std::string& name) {
  for (PairOp op :
       {PairOp::Add,
        PairOp::Multiply,
        PairOp::Gelu,
        PairOp::Sin,
        PairOp::Exp,
        PairOp::Tanh}) {
    if (name == pair_op_name(op))
      return op;
  }
  throw std::invalid_argument(
      "pair op: unknown operation '" + name +
      "'; pass \"add\", \"multiply\", \"gelu\", \"sin\", \"exp\" or \"tanh\"");
}

Pair pair_unary(PairOp op, const Pair& x, mx::StreamOrDevice s) {
  if (pair_op_arity(op) != 1) {
    throw std::invalid_argument(
        std::string("pair ") + pair_op_name(op) + " takes two operands");
  }
  check_pair(pair_op_name(op), x, "x");
  return make_pair(
      x.first.shape(),
      std::make_shared<PairElementwise>(mx::to_stream(s), op),
      {x.first, x.second});
}

Pair pair_binary(
    PairOp op,
    const Pair& x,
    const Pair& y,
    mx::StreamOrDevice s) {
  const char* name = pair_op_name(op);
  if (pair_op_arity(op) != 2) {
    throw std::invalid_argument(
        std::string("pair ") + name + " takes one operand");
  }
  check_pair(name, x, "x");
  check_pair(name, y, "y");
  mx::Shape shape;
  try {
    shape = mx::broadcast_shapes(x.first.shape(), y.first.shape());
  } catch (const std::invalid_argument&) {
    std::ostringstream os;
    os << name << ": shapes " << x.first.shape() << " and " << y.first.shape()
       << " do not broadcast";
    throw std::invalid_argument(os.str());
  }
  std::vector<mx::array> inputs;
  for (const auto* part : {&x.first, &x.second, &y.first, &y.second})
    inputs.push_back(mx::broadcast_to(*part, shape, s));
  return make_pair(
      shape,
      std::make_shared<PairElementwise>(mx::to_stream(s), op),
      std::move(inputs));
}

Pair pair_addmm(
    const std::optional<mx::array>& c,
    const Pair& a,
    const mx::array& b,
    mx::StreamOrDevice s) {
  check_pair("pair addmm", a, "a");
  check_addmm_arguments(
      "pair addmm", c.value_or(mx::zeros({1}, mx::float32, s)), a.first, b);
  mx::Shape shape = mx::broadcast_shapes(
      mx::Shape(a.first.shape().begin(), a.first.shape().end() - 2),
      mx::Shape(b.shape().begin(), b.shape().end() - 2));
  shape.push_back(a.first.shape(-2));
  shape.push_back(b.shape(-1));
  std::vector<mx::array> inputs{a.first, a.second, b};
  if (c)
    inputs.push_back(*c);
  return make_pair(
      shape,
      std::make_shared<PairAddmm>(mx::to_stream(s), c.has_value(), shape),
      std::move(inputs));
}

Pair pair_linear(
    const Pair& x,
    const mx::array& weight,
    const std::optional<mx::array>& bias,
    mx::StreamOrDevice s) {
  check_pair("pair linear", x, "x");
  check_linear_arguments("pair linear", x.first, weight, bias);
  // All leading dims of x are rows: one (rows, K) @ (K, N) product.
  const int in_features = x.first.shape(-1);
  auto rows = [&](const mx::array& part) {
    return mx::reshape(part, {-1, in_features}, s);
  };
  auto [hi, lo] = pair_addmm(
      bias, {rows(x.first), rows(x.second)}, mx::transpose(weight, s), s);
  mx::Shape out_shape = x.first.shape();
  out_shape.back() = weight.shape(0);
  return {mx::reshape(hi, out_shape, s), mx::reshape(lo, out_shape, s)};
}

Pair pair_layer_norm(
    const Pair& x,
    const std::optional<mx::array>& weight,
    const std::optional<mx::array>& bias,
    double eps,
    mx::StreamOrDevice s) {
  check_pair("pair layer_norm", x, "x");
  check_layer_norm_arguments("pair layer_norm", x.first, weight, bias, eps);
  std::vector<mx::array> inputs{x.first, x.second};
  if (weight)
    inputs.push_back(*weight);
  if (bias)
    inputs.push_back(*bias);
  return make_pair(
      x.first.shape(),
      std::make_shared<PairLayerNorm>(
          mx::to_stream(s), eps, weight.has_value(), bias.has_value()),
      std::move(inputs));
}

Pair pair_rfft_conv(
    const Pair& u,
    const Pair& k,
    std::optional<int64_t> n,
    const std::optional<mx::array>& bias,
    mx::StreamOrDevice s) {
  check_pair("pair rfft_conv", u, "u");
  check_pair("pair rfft_conv", k, "k");
  const fft::ConvArguments args =
      fft::check_rfft_conv_arguments(u.first, k.first, n, bias, s);
  mx::Shape shape = mx::broadcast_shapes(
      mx::Shape(u.first.shape().begin(), u.first.shape().end() - 1),
      mx::Shape(k.first.shape().begin(), k.first.shape().end() - 1));
  shape.push_back(u.first.shape().back());
  std::vector<mx::array> inputs{u.first, u.second, k.first, k.second};
  if (args.bias)
    inputs.push_back(*args.bias);
  return make_pair(
      shape,
      std::make_shared<PairRFFTConv>(
          mx::to_stream(s), args.period, args.bias.has_value(), shape),
      std::move(inputs));
}

} // namespace mlx_precise
