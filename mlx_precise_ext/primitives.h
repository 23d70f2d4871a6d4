// Primitive classes of mlx-precise, shaped like mlx/primitives.h.
#pragma once

#include <mlx/primitives.h>

#include "precision.h"

namespace mlx_precise {

namespace mx = mlx::core;
// MLX's DEFINE_GRADS / DEFINE_VMAP name these unqualified.
using mx::array;
using mx::Shape;

// The transforms of rfft_conv, all computed by one FFT engine:
//   Convolve        y = conv(u, k) [+ u * bias]             inputs u, k[, bias]
//   CorrelateInput  grad u = sum corr(g, k) [+ g * bias]    inputs g, k[, bias]
//   CorrelateKernel grad k = sum corr(g, u)                 inputs g, u
//   ConvolveSum     y = sum_i conv(a_i, b_i) + sum_j c_j * d_j, rounded once
//                   (the jvp); inputs a_1, b_1, ..., c_1, d_1, ...
// "sum" runs over the dimensions the target was broadcast along. period is n
// of the circular form, or 0 for the causal linear convolution.
enum class ConvVariant {
  Convolve,
  CorrelateInput,
  CorrelateKernel,
  ConvolveSum
};

class RFFTConv : public mx::UnaryPrimitive {
 public:
  RFFTConv(
      mx::Stream stream,
      ConvVariant variant,
      int64_t period,
      Precision precision,
      bool has_bias,
      mx::Shape out_shape,
      int conv_terms = 1,
      int bias_terms = 0)
      : mx::UnaryPrimitive(stream),
        variant_(variant),
        period_(period),
        precision_(precision),
        has_bias_(has_bias),
        out_shape_(std::move(out_shape)),
        conv_terms_(conv_terms),
        bias_terms_(bias_terms) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;

  DEFINE_GRADS()
  DEFINE_VMAP()

  const char* name() const override;
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override {
    return {out_shape_};
  }

  ConvVariant variant() const {
    return variant_;
  }
  int64_t period() const {
    return period_;
  }
  Precision precision() const {
    return precision_;
  }
  bool has_bias() const {
    return has_bias_;
  }
  int conv_terms() const {
    return conv_terms_;
  }
  int bias_terms() const {
    return bias_terms_;
  }
  auto state() const {
    return std::make_tuple(
        variant_,
        period_,
        precision_,
        has_bias_,
        out_shape_,
        conv_terms_,
        bias_terms_);
  }

 private:
  ConvVariant variant_;
  int64_t period_;
  Precision precision_;
  bool has_bias_;
  mx::Shape out_shape_;
  int conv_terms_; // ConvolveSum only
  int bias_terms_; // ConvolveSum only
};

// Both gradients of y = conv(u, k) [+ u * bias] from one node: grad u =
// sum corr(g, k) [+ g * bias] and grad k = sum corr(g, u), the values of the
// CorrelateInput and CorrelateKernel nodes, bit for bit. Inputs g, k, u[,
// bias]; outputs grad u, grad k. The vjp builds it where every row of g is
// one row of grad u (u not broadcast) and both gradients transform g at one
// size (shares_cotangent_transform): CUDA then transforms each row of g once
// for both (gradient_rows); the CPU and Metal run the two correlations.
class RFFTConvGradients : public mx::Primitive {
 public:
  RFFTConvGradients(
      mx::Stream stream,
      int64_t period,
      Precision precision,
      bool has_bias,
      mx::Shape u_shape,
      mx::Shape k_shape)
      : mx::Primitive(stream),
        period_(period),
        precision_(precision),
        has_bias_(has_bias),
        u_shape_(std::move(u_shape)),
        k_shape_(std::move(k_shape)) {}

  void eval_cpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override;
  void eval_gpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override;

  DEFINE_GRADS()
  DEFINE_VMAP()

  DEFINE_NAME(RFFTConvGradients)
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override {
    return {u_shape_, k_shape_};
  }
  auto state() const {
    return std::make_tuple(period_, precision_, has_bias_, u_shape_, k_shape_);
  }

  // Whether the vjp of rfft_conv(u, k) with cotangent shape g_shape builds
  // this node (see above).
  static bool shares_cotangent_transform(
      int64_t period,
      const mx::Shape& g_shape,
      const mx::Shape& u_shape,
      const mx::Shape& k_shape);

  // The CorrelateInput node's inputs g, k [, bias] out of this node's g, k,
  // u [, bias].
  static std::vector<mx::array> input_gradient_inputs(
      const std::vector<mx::array>& inputs,
      bool has_bias);

 private:
  int64_t period_;
  Precision precision_;
  bool has_bias_;
  mx::Shape u_shape_;
  mx::Shape k_shape_;
};

// Gradient of the fused bias: sum of g * u over the dimensions the bias was
// broadcast along (time included), exact products, one rounding.
class BiasGradient : public mx::UnaryPrimitive {
 public:
  BiasGradient(mx::Stream stream, Precision precision, mx::Shape out_shape)
      : mx::UnaryPrimitive(stream),
        precision_(precision),
        out_shape_(std::move(out_shape)) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;

  DEFINE_VMAP()

  DEFINE_NAME(BiasGradient)
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override {
    return {out_shape_};
  }
  auto state() const {
    return std::make_pair(precision_, out_shape_);
  }

 private:
  Precision precision_;
  mx::Shape out_shape_;
};

} // namespace mlx_precise
