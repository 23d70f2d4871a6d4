#include "pair_primitives.h"

namespace mlx_precise {

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
    default:
      return "tanh";
  }
}

int pair_op_arity(PairOp op) {
  return op == PairOp::Add || op == PairOp::Multiply ? 2 : 1;
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

} // namespace mlx_precise
