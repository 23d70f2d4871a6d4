// The primitives that the pair ops' reverse-mode derivatives need besides the
// pair ops themselves (pair_vjp.cpp): every one reads and writes pairs
// (hi, lo) of float32 arrays and computes in double, so that a gradient is
// carried with about 48 bits from the loss to each parameter and rounded
// once, where it reaches a float32 array.
//
// Why layout and reductions need their own nodes: MLX's autograd sums the
// cotangents of an array used twice, and its broadcast's vjp sums over the
// broadcast axes, in float32 and part by part, which would round a pair
// cotangent. PairBroadcast (whose vjp is PairSum) replaces the broadcasts of
// the pair ops, and a pair used twice is broadcast along a new axis and
// sliced (pair.fork), so those sums run in double too. Slices, transposes,
// reshapes and concatenations of the parts stay MLX's own: their vjps only
// move values or add zeros, which is exact.
#pragma once

#include <mlx/primitives.h>

#include "primitives.h"

namespace mlx_precise {

namespace mx = mlx::core;

// Base of the primitives below: two outputs per pair, no forward-mode
// derivative (jvp raises).
class PairVjpPrimitive : public mx::Primitive {
 public:
  explicit PairVjpPrimitive(mx::Stream stream) : mx::Primitive(stream) {}

  std::vector<mx::array> jvp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& tangents,
      const std::vector<int>& argnums) override;
};

// Equivalent: the same primitive class in the same state.
template <class P>
bool same_state(const P& self, const mx::Primitive& other) {
  const auto* o = dynamic_cast<const P*>(&other);
  return o && o->state() == self.state();
}

// What each of them declares, as MLX's DEFINE_GRADS: evaluation on both
// devices, the vjp, and equivalence by state().
#define MP_DEFINE_PAIR_VJP_PRIMITIVE(PRIMITIVE)                              \
  void eval_cpu(                                                             \
      const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) \
      override;                                                              \
  void eval_gpu(                                                             \
      const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) \
      override;                                                              \
  std::vector<mx::array> vjp(                                                \
      const std::vector<mx::array>& primals,                                 \
      const std::vector<mx::array>& cotangents,                              \
      const std::vector<int>& argnums,                                       \
      const std::vector<mx::array>& outputs) override;                       \
  bool is_equivalent(const mx::Primitive& other) const override {            \
    return same_state<PRIMITIVE>(*this, other);                              \
  }

// A pair (hi, lo) in, a pair of shape out_shape out: the state and output
// shapes of PairBroadcast and PairSum, each other's vjp.
class PairReshaping : public PairVjpPrimitive {
 public:
  PairReshaping(mx::Stream stream, mx::Shape out_shape)
      : PairVjpPrimitive(stream), out_shape_(std::move(out_shape)) {}

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override {
    return {out_shape_, out_shape_};
  }
  auto state() const {
    return out_shape_;
  }

 protected:
  mx::Shape out_shape_;
};

// Inputs hi, lo; outputs the two parts broadcast to out_shape (views, no
// copy). vjp: PairSum back to the input's shape.
class PairBroadcast : public PairReshaping {
 public:
  using PairReshaping::PairReshaping;

  MP_DEFINE_PAIR_VJP_PRIMITIVE(PairBroadcast)

  const char* name() const override {
    return "PairBroadcast";
  }
};

// Inputs hi, lo of shape S; outputs their sum, as a pair, to out_shape, which
// broadcasts to S (dims aligned right; a dim of 1 or a missing leading dim is
// summed). Sums in double with Neumaier's compensation. vjp: PairBroadcast.
class PairSum : public PairReshaping {
 public:
  using PairReshaping::PairReshaping;

  MP_DEFINE_PAIR_VJP_PRIMITIVE(PairSum)

  const char* name() const override {
    return "PairSum";
  }
};

// Rows of a table (V, D) chosen by integer ids (any shape): Gather, inputs
// table_hi, table_lo, ids, outputs ids.shape + (D,); and its vjp ScatterAdd,
// inputs g_hi, g_lo (ids.shape + (D,)), ids, outputs (V, D), each row the
// sum in double of the rows of g whose id it is. An id outside [0, V) gives
// NaN rows (Gather) or is skipped (ScatterAdd).
class PairRows : public PairVjpPrimitive {
 public:
  enum class Variant { Gather, ScatterAdd };

  PairRows(mx::Stream stream, Variant variant, mx::Shape out_shape)
      : PairVjpPrimitive(stream),
        variant_(variant),
        out_shape_(std::move(out_shape)) {}

  MP_DEFINE_PAIR_VJP_PRIMITIVE(PairRows)

  const char* name() const override {
    return variant_ == Variant::Gather ? "PairGatherRows"
                                       : "PairScatterAddRows";
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override {
    return {out_shape_, out_shape_};
  }
  auto state() const {
    return std::make_pair(variant_, out_shape_);
  }

 private:
  Variant variant_;
  mx::Shape out_shape_;
};

// The gradient of PairLayerNorm: inputs x_hi, x_lo [, weight], g_hi, g_lo;
// outputs dx (pair) and g * xhat (pair, xhat the normalised x), whose sum
// over the rows is the weight's gradient. Per row, in double.
class PairLayerNormVJP : public PairVjpPrimitive {
 public:
  PairLayerNormVJP(mx::Stream stream, double eps, bool has_weight)
      : PairVjpPrimitive(stream), eps_(eps), has_weight_(has_weight) {}

  MP_DEFINE_PAIR_VJP_PRIMITIVE(PairLayerNormVJP)

  const char* name() const override {
    return "PairLayerNormVJP";
  }
  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override {
    const auto& shape = inputs[0].shape();
    return {shape, shape, shape, shape};
  }
  auto state() const {
    return std::make_pair(eps_, has_weight_);
  }

 private:
  double eps_;
  bool has_weight_;
};

// The gradients of PairRFFTConv, rows of pairs in double, one output row
// per row of g (the caller sums over broadcast dims with PairSum):
//   CorrelateInput   inputs g_hi, g_lo, k_hi, k_lo [, bias]: grad u + g bias
//   CorrelateKernel  inputs g_hi, g_lo, u_hi, u_lo: grad k, of length k_len
class PairRFFTCorrelate : public PairVjpPrimitive {
 public:
  PairRFFTCorrelate(
      mx::Stream stream,
      ConvVariant variant,
      int64_t period,
      bool has_bias,
      mx::Shape out_shape)
      : PairVjpPrimitive(stream),
        variant_(variant),
        period_(period),
        has_bias_(has_bias),
        out_shape_(std::move(out_shape)) {}

  MP_DEFINE_PAIR_VJP_PRIMITIVE(PairRFFTCorrelate)

  const char* name() const override {
    return variant_ == ConvVariant::CorrelateInput ? "PairRFFTCorrelateInput"
                                                   : "PairRFFTCorrelateKernel";
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override {
    return {out_shape_, out_shape_};
  }
  auto state() const {
    return std::make_tuple(variant_, period_, has_bias_, out_shape_);
  }

 private:
  ConvVariant variant_;
  int64_t period_;
  bool has_bias_;
  mx::Shape out_shape_;
};

// Mean cross-entropy of logits (N, V) (a pair) at integer targets (N,),
// weighted by float32 weights (N,): sum_i w_i (logsumexp_i - logit_{i,t_i}) /
// sum_i w_i, in double (torch's cross_entropy with a mask of weights 0 and
// 1). Forward: inputs l_hi, l_lo, targets, weights; outputs the scalar pair.
// Gradient: inputs the same plus the scalar cotangent c_hi, c_lo; outputs
// c w_i (softmax_i - onehot(t_i)) / sum w as a pair (N, V).
class PairCrossEntropy : public PairVjpPrimitive {
 public:
  PairCrossEntropy(mx::Stream stream, bool gradient)
      : PairVjpPrimitive(stream), gradient_(gradient) {}

  MP_DEFINE_PAIR_VJP_PRIMITIVE(PairCrossEntropy)

  const char* name() const override {
    return gradient_ ? "PairCrossEntropyGrad" : "PairCrossEntropy";
  }
  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override {
    const mx::Shape shape = gradient_ ? inputs[0].shape() : mx::Shape{};
    return {shape, shape};
  }
  auto state() const {
    return gradient_;
  }

 private:
  bool gradient_;
};

} // namespace mlx_precise
