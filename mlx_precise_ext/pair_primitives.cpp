#include "pair_primitives.h"

#include <stdexcept>
#include <string>

namespace mlx_precise {

namespace {
[[noreturn]] void no_forward_derivatives(const char* op) {
  throw std::invalid_argument(
      std::string("pair ") + op +
      ": forward-mode derivatives (jvp) through pairs are not implemented; "
      "reverse mode (mx.grad, mx.vjp) is");
}
} // namespace

const char* pair_op_name(PairOp op) {
  switch (op) {
    case PairOp::Add:
      return "add";
    case PairOp::Multiply:
      return "multiply";
    case PairOp::Gelu:
      return "gelu";
    case PairOp::Sin:
      return "sin";
    case PairOp::Exp:
      return "exp";
    case PairOp::Tanh:
      return "tanh";
    case PairOp::GeluGrad:
      return "gelu_grad";
    case PairOp::SinGrad:
      return "sin_grad";
    default:
      return "tanh_grad";
  }
}

int pair_op_arity(PairOp op) {
  switch (op) {
    case PairOp::Gelu:
    case PairOp::Sin:
    case PairOp::Exp:
    case PairOp::Tanh:
      return 1;
    default:
      return 2;
  }
}

bool PairElementwise::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const PairElementwise*>(&other);
  return o && o->op_ == op_;
}

bool PairAddmm::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const PairAddmm*>(&other);
  return o && o->has_c_ == has_c_ && o->out_shape_ == out_shape_;
}

bool PairLayerNorm::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const PairLayerNorm*>(&other);
  return o && o->eps_ == eps_ && o->has_weight_ == has_weight_ &&
      o->has_bias_ == has_bias_;
}

bool PairRFFTConv::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const PairRFFTConv*>(&other);
  return o && o->period_ == period_ && o->has_bias_ == has_bias_ &&
      o->out_shape_ == out_shape_;
}

std::vector<mx::array> PairElementwise::jvp(
    const std::vector<mx::array>&,
    const std::vector<mx::array>&,
    const std::vector<int>&) {
  no_forward_derivatives(pair_op_name(op_));
}

std::vector<mx::array> PairAddmm::jvp(
    const std::vector<mx::array>&,
    const std::vector<mx::array>&,
    const std::vector<int>&) {
  no_forward_derivatives("addmm");
}

std::vector<mx::array> PairLayerNorm::jvp(
    const std::vector<mx::array>&,
    const std::vector<mx::array>&,
    const std::vector<int>&) {
  no_forward_derivatives("layer_norm");
}

std::vector<mx::array> PairRFFTConv::jvp(
    const std::vector<mx::array>&,
    const std::vector<mx::array>&,
    const std::vector<int>&) {
  no_forward_derivatives("rfft_conv");
}

} // namespace mlx_precise
