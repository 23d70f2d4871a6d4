#include "pair_ops.h"

#include <stdexcept>

#include <mlx/ops.h>

#include "messages.h"
#include "ops.h"
#include "pair_vjp_primitives.h"
#include "strict_ops.h"

namespace mlx_precise {

namespace {

// The lo part must be a float32 array of hi's shape; hi's own checks are the
// op's (strict_ops.h, ops.h).
void check_pair(const char* op, const Pair& x, const char* what) {
  const auto& [hi, lo] = x;
  if (hi.dtype() != mx::float32 || lo.dtype() != mx::float32 ||
      hi.shape() != lo.shape()) {
    throw std::invalid_argument(message(
        op,
        ": ",
        what,
        " must be a pair of float32 arrays of one shape (hi, lo); got ",
        hi.dtype(),
        " ",
        hi.shape(),
        " and ",
        lo.dtype(),
        " ",
        lo.shape(),
        ": a float32 array x enters as (x, zeros_like(x))"));
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
    throw std::invalid_argument(message(
        name,
        ": shapes ",
        x.first.shape(),
        " and ",
        y.first.shape(),
        " do not broadcast"));
  }
  const Pair xb = pair_broadcast_to(x, shape, s);
  const Pair yb = pair_broadcast_to(y, shape, s);
  return make_pair(
      shape,
      std::make_shared<PairElementwise>(mx::to_stream(s), op),
      {xb.first, xb.second, yb.first, yb.second});
}

Pair pair_addmm(
    const std::optional<mx::array>& c,
    const Pair& a,
    const Pair& b,
    mx::StreamOrDevice s) {
  check_pair("pair addmm", a, "a");
  check_pair("pair addmm", b, "b");
  check_addmm_arguments(
      "pair addmm",
      c.value_or(mx::zeros({1}, mx::float32, s)),
      a.first,
      b.first);
  mx::Shape shape = mx::broadcast_shapes(
      mx::Shape(a.first.shape().begin(), a.first.shape().end() - 2),
      mx::Shape(b.first.shape().begin(), b.first.shape().end() - 2));
  shape.push_back(a.first.shape(-2));
  shape.push_back(b.first.shape(-1));
  std::vector<mx::array> inputs{a.first, a.second, b.first, b.second};
  if (c)
    inputs.push_back(*c);
  return make_pair(
      shape,
      std::make_shared<PairAddmm>(mx::to_stream(s), c.has_value(), shape),
      std::move(inputs));
}

Pair pair_linear(
    const Pair& x,
    const Pair& weight,
    const std::optional<mx::array>& bias,
    mx::StreamOrDevice s) {
  check_pair("pair linear", x, "x");
  check_pair("pair linear", weight, "weight");
  check_linear_arguments("pair linear", x.first, weight.first, bias);
  // All leading dims of x are rows: one (rows, K) @ (K, N) product.
  const int in_features = x.first.shape(-1);
  auto rows = [&](const mx::array& part) {
    return mx::reshape(part, {-1, in_features}, s);
  };
  auto [hi, lo] = pair_addmm(
      bias,
      {rows(x.first), rows(x.second)},
      {mx::transpose(weight.first, s), mx::transpose(weight.second, s)},
      s);
  mx::Shape out_shape = x.first.shape();
  out_shape.back() = weight.first.shape(0);
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

Pair pair_broadcast_to(
    const Pair& x,
    const mx::Shape& shape,
    mx::StreamOrDevice s) {
  check_pair("pair broadcast_to", x, "x");
  if (x.first.shape() == shape)
    return x;
  bool broadcasts = false;
  try {
    broadcasts = mx::broadcast_shapes(x.first.shape(), shape) == shape;
  } catch (const std::invalid_argument&) {
  }
  if (!broadcasts) {
    throw std::invalid_argument(message(
        "pair broadcast_to: shape ",
        x.first.shape(),
        " does not broadcast to ",
        shape));
  }
  return make_pair(
      shape,
      std::make_shared<PairBroadcast>(mx::to_stream(s), shape),
      {x.first, x.second});
}

Pair pair_sum_to(const Pair& x, const mx::Shape& shape, mx::StreamOrDevice s) {
  check_pair("pair sum_to", x, "x");
  if (x.first.shape() == shape)
    return x;
  const mx::Shape& from = x.first.shape();
  bool reduces = shape.size() <= from.size();
  for (size_t d = 0; reduces && d < shape.size(); ++d) {
    const int f = from[from.size() - shape.size() + d];
    reduces = shape[d] == f || shape[d] == 1;
  }
  if (!reduces) {
    throw std::invalid_argument(message(
        "pair sum_to: shape ",
        shape,
        " does not broadcast to ",
        from,
        "; pass the shape of an operand that was broadcast to it"));
  }
  return make_pair(
      shape,
      std::make_shared<PairSum>(mx::to_stream(s), shape),
      {x.first, x.second});
}

std::vector<Pair> pair_fork(const Pair& x, int n, mx::StreamOrDevice s) {
  check_pair("pair fork", x, "x");
  if (n < 1)
    throw std::invalid_argument(
        "pair fork: n must be at least 1, got " + std::to_string(n));
  mx::Shape stacked = x.first.shape();
  stacked.insert(stacked.begin(), n);
  const Pair copies = pair_broadcast_to(
      {mx::expand_dims(x.first, 0, s), mx::expand_dims(x.second, 0, s)},
      stacked,
      s);
  std::vector<Pair> uses;
  mx::Shape start(stacked.size(), 0), stop = stacked;
  for (int i = 0; i < n; ++i) {
    start[0] = i;
    stop[0] = i + 1;
    auto pick = [&](const mx::array& part) {
      return mx::squeeze(mx::slice(part, start, stop, s), 0, s);
    };
    uses.push_back({pick(copies.first), pick(copies.second)});
  }
  return uses;
}

Pair pair_take_rows(
    const Pair& table,
    const mx::array& ids,
    mx::StreamOrDevice s) {
  check_pair("pair take_rows", table, "table");
  if (table.first.ndim() != 2)
    throw std::invalid_argument(
        "pair take_rows: table must be 2-D (rows, features)");
  if (!mx::issubdtype(ids.dtype(), mx::integer))
    throw std::invalid_argument(
        "pair take_rows: ids must be integers; pass ids.astype(mx.int32)");
  mx::Shape shape = ids.shape();
  shape.push_back(table.first.shape(1));
  return make_pair(
      shape,
      std::make_shared<PairRows>(
          mx::to_stream(s), PairRows::Variant::Gather, shape),
      {table.first, table.second, mx::astype(ids, mx::int32, s)});
}

Pair pair_cross_entropy(
    const Pair& logits,
    const mx::array& targets,
    const mx::array& weights,
    mx::StreamOrDevice s) {
  check_pair("pair cross_entropy", logits, "logits");
  if (logits.first.ndim() != 2 || targets.ndim() != 1 ||
      weights.shape() != targets.shape() ||
      targets.shape(0) != logits.first.shape(0)) {
    throw std::invalid_argument(message(
        "pair cross_entropy: pass logits (N, V), targets (N,) and weights "
        "(N,); got ",
        logits.first.shape(),
        ", ",
        targets.shape(),
        " and ",
        weights.shape()));
  }
  if (!mx::issubdtype(targets.dtype(), mx::integer))
    throw std::invalid_argument(
        "pair cross_entropy: targets must be integers (class ids)");
  if (weights.dtype() != mx::float32)
    throw std::invalid_argument(
        "pair cross_entropy: weights must be float32; pass "
        "mask.astype(mx.float32)");
  return make_pair(
      {},
      std::make_shared<PairCrossEntropy>(mx::to_stream(s), false),
      {logits.first,
       logits.second,
       mx::astype(targets, mx::int32, s),
       weights});
}

} // namespace mlx_precise
