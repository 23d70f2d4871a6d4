// Reverse-mode derivatives of the pair ops, in pair form.
//
// A pair primitive's outputs (hi, lo) receive cotangents (c_hi, c_lo); they
// are read as one cotangent c_hi + c_lo of the carried value, and the
// cotangent of each pair operand is returned as a pair, hi to the operand's
// hi input and lo to its lo input. Every vjp is built from pair primitives
// (the pair ops and those of pair_vjp_primitives.h), so it computes in
// double and rounds to a pair, never to float32. A float32 array that
// entered as the pair (x, 0) receives the hi of its cotangent: the float32
// nearest to the gradient, the one rounding. A float32 operand (a bias, a
// layer norm's weight) receives that same rounding of its pair gradient.
#include <stdexcept>

#include <mlx/allocator.h>
#include <mlx/ops.h>

#include "pair_ops.h"
#include "pair_vjp_primitives.h"

namespace mlx_precise {

namespace {

Pair cotangent(const std::vector<mx::array>& cotangents, size_t first = 0) {
  return {cotangents[first], cotangents[first + 1]};
}

// The pair cotangent of a pair operand summed back to its shape (the
// operand was broadcast inside the op).
Pair summed_to(const Pair& g, const mx::array& operand, mx::Stream s) {
  return pair_sum_to(g, operand.shape(), s);
}

// Collects a vjp's results for argnums: pair operand `i` occupies inputs 2i
// (hi) and 2i + 1 (lo); float32 operands follow the pairs, one input each.
class Gradients {
 public:
  explicit Gradients(const std::vector<int>& argnums) : argnums_(argnums) {}

  // Whether any input of pair operand i, or float32 input `index`, is wanted.
  bool wants_pair(int i) const {
    return wants(2 * i) || wants(2 * i + 1);
  }
  bool wants(int index) const {
    for (int a : argnums_)
      if (a == index)
        return true;
    return false;
  }
  void set_pair(int i, const Pair& g) {
    values_.emplace_back(2 * i, g.first);
    values_.emplace_back(2 * i + 1, g.second);
  }
  void set(int index, const mx::array& g) {
    values_.emplace_back(index, g);
  }
  std::vector<mx::array> in_order() const {
    std::vector<mx::array> out;
    for (int a : argnums_) {
      bool found = false;
      for (const auto& [index, g] : values_)
        if (index == a) {
          out.push_back(g);
          found = true;
          break;
        }
      if (!found)
        throw std::invalid_argument(
            "pair ops: no derivative with respect to input " +
            std::to_string(a) + " (integer ids or targets)");
    }
    return out;
  }

 private:
  const std::vector<int>& argnums_;
  std::vector<std::pair<int, mx::array>> values_;
};

[[noreturn]] void no_second_order(const char* op) {
  throw std::invalid_argument(
      std::string("pair ") + op +
      ": derivatives of the gradient (second order) are not implemented");
}

} // namespace

std::vector<mx::array> PairVjpPrimitive::jvp(
    const std::vector<mx::array>&,
    const std::vector<mx::array>&,
    const std::vector<int>&) {
  throw std::invalid_argument(
      std::string(name()) +
      ": forward-mode derivatives (jvp) through pairs are not implemented; "
      "reverse mode (mx.grad, mx.vjp) is");
}

namespace {
// A view of in with stride 0 along the broadcast dims, as MLX's Broadcast:
// no kernel, the same on every backend.
void broadcast_view(const mx::array& in, mx::array& out) {
  if (out.size() == 0) {
    out.set_data(mx::allocator::malloc(0));
    return;
  }
  mx::Strides strides(out.ndim(), 0);
  const int offset = static_cast<int>(out.ndim() - in.ndim());
  for (int d = 0; d < static_cast<int>(in.ndim()); ++d)
    strides[offset + d] = in.shape(d) == 1 ? 0 : in.strides()[d];
  auto flags = in.flags();
  if (out.size() > in.size())
    flags.row_contiguous = flags.col_contiguous = false;
  out.copy_shared_buffer(in, strides, flags, in.data_size());
}
} // namespace

void PairBroadcast::eval_cpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  broadcast_view(inputs[0], outputs[0]);
  broadcast_view(inputs[1], outputs[1]);
}

void PairBroadcast::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  eval_cpu(inputs, outputs);
}

std::vector<mx::array> PairBroadcast::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>&) {
  Gradients grads(argnums);
  grads.set_pair(0, summed_to(cotangent(cotangents), primals[0], stream()));
  return grads.in_order();
}

std::vector<mx::array> PairSum::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>&) {
  Gradients grads(argnums);
  grads.set_pair(
      0,
      pair_broadcast_to(cotangent(cotangents), primals[0].shape(), stream()));
  return grads.in_order();
}

std::vector<mx::array> PairRows::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>&) {
  const Pair g = cotangent(cotangents);
  const mx::array& ids = primals[2];
  Gradients grads(argnums);
  if (variant_ == Variant::Gather) {
    auto outs = mx::array::make_arrays(
        {primals[0].shape(), primals[0].shape()},
        {mx::float32, mx::float32},
        std::make_shared<PairRows>(
            stream(), Variant::ScatterAdd, primals[0].shape()),
        {g.first, g.second, ids});
    grads.set_pair(0, {outs[0], outs[1]});
  } else {
    grads.set_pair(0, pair_take_rows(g, ids, stream()));
  }
  return grads.in_order();
}

std::vector<mx::array> PairElementwise::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>& outputs) {
  const Pair g = cotangent(cotangents);
  const Pair x = cotangent(primals);
  const mx::Stream s = stream();
  Gradients grads(argnums);
  switch (op_) {
    case PairOp::Add:
      grads.set_pair(0, g);
      grads.set_pair(1, g);
      break;
    case PairOp::Multiply: {
      const Pair y = cotangent(primals, 2);
      if (grads.wants_pair(0))
        grads.set_pair(0, pair_binary(PairOp::Multiply, g, y, s));
      if (grads.wants_pair(1))
        grads.set_pair(1, pair_binary(PairOp::Multiply, g, x, s));
      break;
    }
    case PairOp::Gelu:
      grads.set_pair(0, pair_binary(PairOp::GeluGrad, x, g, s));
      break;
    case PairOp::Sin:
      grads.set_pair(0, pair_binary(PairOp::SinGrad, x, g, s));
      break;
    case PairOp::Exp:
      grads.set_pair(
          0, pair_binary(PairOp::Multiply, g, cotangent(outputs), s));
      break;
    case PairOp::Tanh:
      grads.set_pair(0, pair_binary(PairOp::TanhGrad, x, g, s));
      break;
    default:
      no_second_order(pair_op_name(op_));
  }
  return grads.in_order();
}

// out = a @ b + c: grad a = g @ b^T, grad b = a^T @ g (pairs, summed over
// the batch dims that were broadcast), grad c = g summed to c's shape.
std::vector<mx::array> PairAddmm::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>&) {
  const Pair g = cotangent(cotangents);
  const Pair a = cotangent(primals);
  const Pair b = cotangent(primals, 2);
  const mx::Stream s = stream();
  auto swap_last = [&](const Pair& x) -> Pair {
    return {
        mx::swapaxes(x.first, -1, -2, s), mx::swapaxes(x.second, -1, -2, s)};
  };
  Gradients grads(argnums);
  if (grads.wants_pair(0))
    grads.set_pair(
        0,
        summed_to(pair_addmm(std::nullopt, g, swap_last(b), s), primals[0], s));
  if (grads.wants_pair(1))
    grads.set_pair(
        1,
        summed_to(pair_addmm(std::nullopt, swap_last(a), g, s), primals[2], s));
  if (has_c_ && grads.wants(4))
    grads.set(4, summed_to(g, primals[4], s).first);
  return grads.in_order();
}

std::vector<mx::array> PairLayerNorm::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>&) {
  const Pair g = cotangent(cotangents);
  const mx::Stream s = stream();
  std::vector<mx::array> inputs{primals[0], primals[1]};
  if (has_weight_)
    inputs.push_back(primals[2]);
  inputs.push_back(g.first);
  inputs.push_back(g.second);
  const mx::Shape& shape = primals[0].shape();
  auto outs = mx::array::make_arrays(
      {shape, shape, shape, shape},
      {mx::float32, mx::float32, mx::float32, mx::float32},
      std::make_shared<PairLayerNormVJP>(s, eps_, has_weight_),
      std::move(inputs));
  Gradients grads(argnums);
  grads.set_pair(0, {outs[0], outs[1]});
  if (has_weight_ && grads.wants(2))
    grads.set(2, summed_to({outs[2], outs[3]}, primals[2], s).first);
  const int bias_index = has_weight_ ? 3 : 2;
  if (has_bias_ && grads.wants(bias_index))
    grads.set(bias_index, summed_to(g, primals[bias_index], s).first);
  return grads.in_order();
}

std::vector<mx::array> PairLayerNormVJP::vjp(
    const std::vector<mx::array>&,
    const std::vector<mx::array>&,
    const std::vector<int>&,
    const std::vector<mx::array>&) {
  no_second_order("layer_norm");
}

// y = conv(u, k) + u * bias: grad u = corr(g, k) + g * bias and grad k =
// corr(g, u), each a PairRFFTCorrelate node per row of g, summed over the
// dims the operand was broadcast along; grad bias = sum of g * u.
std::vector<mx::array> PairRFFTConv::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>&) {
  const Pair g = cotangent(cotangents);
  const Pair u = cotangent(primals);
  const Pair k = cotangent(primals, 2);
  const mx::Stream s = stream();
  auto correlate = [&](ConvVariant variant, const Pair& other, int64_t len) {
    std::vector<mx::array> inputs{g.first, g.second, other.first, other.second};
    const bool with_bias = variant == ConvVariant::CorrelateInput && has_bias_;
    if (with_bias)
      inputs.push_back(primals[4]);
    mx::Shape shape = g.first.shape();
    shape.back() = static_cast<int>(len);
    auto outs = mx::array::make_arrays(
        {shape, shape},
        {mx::float32, mx::float32},
        std::make_shared<PairRFFTCorrelate>(
            s, variant, period_, with_bias, shape),
        std::move(inputs));
    return Pair{outs[0], outs[1]};
  };
  Gradients grads(argnums);
  if (grads.wants_pair(0))
    grads.set_pair(
        0,
        summed_to(
            correlate(ConvVariant::CorrelateInput, k, u.first.shape(-1)),
            primals[0],
            s));
  if (grads.wants_pair(1))
    grads.set_pair(
        1,
        summed_to(
            correlate(ConvVariant::CorrelateKernel, u, k.first.shape(-1)),
            primals[2],
            s));
  if (has_bias_ && grads.wants(4))
    grads.set(
        4,
        summed_to(pair_binary(PairOp::Multiply, g, u, s), primals[4], s).first);
  return grads.in_order();
}

std::vector<mx::array> PairRFFTCorrelate::vjp(
    const std::vector<mx::array>&,
    const std::vector<mx::array>&,
    const std::vector<int>&,
    const std::vector<mx::array>&) {
  no_second_order("rfft_conv");
}

std::vector<mx::array> PairCrossEntropy::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>&) {
  if (gradient_)
    no_second_order("cross_entropy");
  std::vector<mx::array> inputs(primals);
  inputs.push_back(cotangents[0]);
  inputs.push_back(cotangents[1]);
  auto outs = mx::array::make_arrays(
      {primals[0].shape(), primals[0].shape()},
      {mx::float32, mx::float32},
      std::make_shared<PairCrossEntropy>(stream(), true),
      std::move(inputs));
  Gradients grads(argnums);
  grads.set_pair(0, {outs[0], outs[1]});
  return grads.in_order();
}

} // namespace mlx_precise
