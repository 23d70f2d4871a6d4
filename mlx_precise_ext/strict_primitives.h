// Primitive classes of the strict (extended / dd) addmm, linear and
// layer_norm, shaped like mlx/primitives.h. precision="float32" never builds
// these nodes: it calls MLX's own ops (see strict_ops.h).
#pragma once

#include <mlx/primitives.h>

#include "precision.h"

namespace mlx_precise {

namespace mx = mlx::core;
// MLX's DEFINE_GRADS / DEFINE_VMAP / DEFINE_INPUT_OUTPUT_SHAPE name these
// unqualified.
using mx::array;
using mx::Shape;

// out = alpha * (a @ b) [+ beta * c], rounded once to float32.
// Inputs a (..., M, K), b (..., K, N) with broadcasting batch dims, and
// optionally c of any shape that broadcasts to out (..., M, N). Gradients,
// including the sums over broadcast dims, are StrictAddmm nodes themselves.
class StrictAddmm : public mx::UnaryPrimitive {
 public:
  StrictAddmm(
      mx::Stream stream,
      Precision precision,
      float alpha,
      float beta,
      bool has_c,
      mx::Shape out_shape)
      : mx::UnaryPrimitive(stream),
        precision_(precision),
        alpha_(alpha),
        beta_(beta),
        has_c_(has_c),
        out_shape_(std::move(out_shape)) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;

  DEFINE_GRADS()
  DEFINE_VMAP()

  DEFINE_NAME(StrictAddmm)
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override {
    return {out_shape_};
  }
  auto state() const {
    return std::make_tuple(precision_, alpha_, beta_, has_c_, out_shape_);
  }

 private:
  Precision precision_;
  float alpha_;
  float beta_;
  bool has_c_;
  mx::Shape out_shape_;
};

// torch.nn.functional.layer_norm over the last axis, rounded once.
// Inputs x (..., D) and optionally weight (D,), bias (D,).
class StrictLayerNorm : public mx::UnaryPrimitive {
 public:
  StrictLayerNorm(
      mx::Stream stream,
      Precision precision,
      double eps,
      bool has_weight,
      bool has_bias)
      : mx::UnaryPrimitive(stream),
        precision_(precision),
        eps_(eps),
        has_weight_(has_weight),
        has_bias_(has_bias) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;

  DEFINE_GRADS()
  DEFINE_VMAP()

  DEFINE_NAME(StrictLayerNorm)
  bool is_equivalent(const mx::Primitive& other) const override;
  DEFINE_INPUT_OUTPUT_SHAPE()
  auto state() const {
    return std::make_tuple(precision_, eps_, has_weight_, has_bias_);
  }

 private:
  Precision precision_;
  double eps_;
  bool has_weight_;
  bool has_bias_;
};

// Gradients of StrictLayerNorm for cotangent g: inputs x (..., D), [weight],
// g; outputs, in this order and each only if asked for: grad x (x's shape),
// grad weight (D,), grad bias (D,). Each output is rounded once.
class StrictLayerNormVJP : public mx::Primitive {
 public:
  StrictLayerNormVJP(
      mx::Stream stream,
      Precision precision,
      double eps,
      bool has_weight,
      bool want_x,
      bool want_weight,
      bool want_bias)
      : mx::Primitive(stream),
        precision_(precision),
        eps_(eps),
        has_weight_(has_weight),
        want_x_(want_x),
        want_weight_(want_weight),
        want_bias_(want_bias) {}

  void eval_cpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override;
  void eval_gpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override;

  DEFINE_NAME(StrictLayerNormVJP)
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override;
  auto state() const {
    return std::make_tuple(
        precision_, eps_, has_weight_, want_x_, want_weight_, want_bias_);
  }

 private:
  Precision precision_;
  double eps_;
  bool has_weight_;
  bool want_x_;
  bool want_weight_;
  bool want_bias_;
};

} // namespace mlx_precise
