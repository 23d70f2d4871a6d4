// Primitive classes of the pair ops (pair_ops.h): values carried between ops
// as float32 pairs (hi, lo) with hi = RN(hi + lo), about 48 significant bits,
// so that a chain of them rounds to float32 once, at the end. Every primitive
// takes the hi and lo arrays of each pair operand as two inputs, computes in
// double (CPU, CUDA) or double-word (Metal) and has two outputs, hi and lo.
// Reverse-mode derivatives are pairs too (pair_vjp.cpp): the cotangents of
// the outputs (hi, lo) are read as one cotangent hi + lo, and each vjp
// returns the cotangent of a pair operand as a pair (hi, lo), computed in
// double; a float32 operand gets its cotangent rounded once. jvp raises.
#pragma once

#include <mlx/primitives.h>

#include "kernels/pair_math.h"

namespace mlx_precise {

namespace mx = mlx::core;

const char* pair_op_name(PairOp op);
int pair_op_arity(PairOp op);

// Inputs hi_1, lo_1 [, hi_2, lo_2], all of the output's shape (broadcast views
// allowed); outputs hi, lo.
class PairElementwise : public mx::Primitive {
 public:
  PairElementwise(mx::Stream stream, PairOp op)
      : mx::Primitive(stream), op_(op) {}

  void eval_cpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override;
  void eval_gpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override;

  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>& outputs) override;
  std::vector<mx::array> jvp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& tangents,
      const std::vector<int>& argnums) override;

  const char* name() const override {
    return pair_op_name(op_);
  }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape(), inputs[0].shape()};
  }

  PairOp op() const {
    return op_;
  }

 private:
  PairOp op_;
};

// out = a @ b [+ c] for pairs a (..., M, K) and b (..., K, N), float32 c
// broadcastable to the output. Inputs a_hi, a_lo, b_hi, b_lo [, c]; outputs
// hi, lo. (b is a pair so that its gradient is one: a weight shared by two
// ops, M2-BERT's tied word embeddings, sums both parts before rounding.)
class PairAddmm : public mx::Primitive {
 public:
  PairAddmm(mx::Stream stream, bool has_c, mx::Shape out_shape)
      : mx::Primitive(stream),
        has_c_(has_c),
        out_shape_(std::move(out_shape)) {}

  void eval_cpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override;
  void eval_gpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override;

  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>& outputs) override;
  std::vector<mx::array> jvp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& tangents,
      const std::vector<int>& argnums) override;

  const char* name() const override {
    return "PairAddmm";
  }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override {
    return {out_shape_, out_shape_};
  }

  bool has_c() const {
    return has_c_;
  }

 private:
  bool has_c_;
  mx::Shape out_shape_;
};

// torch.nn.functional.layer_norm over the last axis of a pair x (..., D),
// optional float32 weight (D,), bias (D,). Inputs x_hi, x_lo [, weight]
// [, bias]; outputs hi, lo.
class PairLayerNorm : public mx::Primitive {
 public:
  PairLayerNorm(mx::Stream stream, double eps, bool has_weight, bool has_bias)
      : mx::Primitive(stream),
        eps_(eps),
        has_weight_(has_weight),
        has_bias_(has_bias) {}

  void eval_cpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override;
  void eval_gpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override;

  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>& outputs) override;
  std::vector<mx::array> jvp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& tangents,
      const std::vector<int>& argnums) override;

  const char* name() const override {
    return "PairLayerNorm";
  }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape(), inputs[0].shape()};
  }

  double eps() const {
    return eps_;
  }
  bool has_weight() const {
    return has_weight_;
  }
  bool has_bias() const {
    return has_bias_;
  }

 private:
  double eps_;
  bool has_weight_;
  bool has_bias_;
};

// rfft_conv (the Convolve form, ops.h) of a pair u and a pair kernel k, plus
// u * bias for a float32 bias. Inputs u_hi, u_lo, k_hi, k_lo [, bias];
// outputs hi, lo. conv is bilinear, so the pair parts enter one transform
// each, as their sums in the working precision.
class PairRFFTConv : public mx::Primitive {
 public:
  PairRFFTConv(
      mx::Stream stream,
      int64_t period,
      bool has_bias,
      mx::Shape out_shape)
      : mx::Primitive(stream),
        period_(period),
        has_bias_(has_bias),
        out_shape_(std::move(out_shape)) {}

  void eval_cpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override;
  void eval_gpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override;

  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>& outputs) override;
  std::vector<mx::array> jvp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& tangents,
      const std::vector<int>& argnums) override;

  const char* name() const override {
    return "PairRFFTConv";
  }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override {
    return {out_shape_, out_shape_};
  }

  int64_t period() const {
    return period_;
  }
  bool has_bias() const {
    return has_bias_;
  }

 private:
  int64_t period_;
  bool has_bias_;
  mx::Shape out_shape_;
};

} // namespace mlx_precise
