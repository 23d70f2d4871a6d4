#include "primitives.h"

#include <mlx/ops.h>

#include "backend/common/conv_geometry.h"
#include "backend/common/shapes.h"
#include "ops.h"
#include "vmap_inputs.h"

namespace mlx_precise {

namespace {

mx::Shape batch_of(const mx::array& x) {
  return mx::Shape(x.shape().begin(), x.shape().end() - 1);
}

mx::array correlate(
    ConvVariant variant,
    const mx::array& g,
    const mx::array& other,
    const std::optional<mx::array>& bias,
    int64_t period,
    Precision p,
    const mx::Shape& target_shape,
    mx::Stream s) {
  std::vector<mx::array> inputs{g, other};
  if (bias)
    inputs.push_back(*bias);
  return mx::array(
      target_shape,
      mx::float32,
      std::make_shared<RFFTConv>(
          s, variant, period, p, bias.has_value(), target_shape),
      std::move(inputs));
}

mx::array bias_gradient(
    const mx::array& g,
    const mx::array& u,
    Precision p,
    const mx::Shape& target_shape,
    mx::Stream s) {
  return mx::array(
      target_shape,
      mx::float32,
      std::make_shared<BiasGradient>(s, p, target_shape),
      std::vector<mx::array>{g, u});
}

} // namespace

const char* RFFTConv::name() const {
  switch (variant_) {
    case ConvVariant::Convolve:
      return "RFFTConv";
    case ConvVariant::CorrelateInput:
      return "RFFTConvInputGrad";
    case ConvVariant::CorrelateKernel:
      return "RFFTConvKernelGrad";
    default:
      return "RFFTConvSum";
  }
}

bool RFFTConv::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const RFFTConv*>(&other);
  return o && o->state() == state();
}

bool BiasGradient::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const BiasGradient*>(&other);
  return o && o->state() == state();
}

// y = conv(u, k) + u * bias is bilinear in (u, k) and (u, bias): every
// gradient is a correlation computed by the same engine, same precision.
std::vector<mx::array> RFFTConv::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>&) {
  if (variant_ != ConvVariant::Convolve) {
    throw std::invalid_argument(
        "rfft_conv: reverse-mode derivatives of its derivatives (second order) are not "
        "implemented");
  }
  const mx::array& u = primals[0];
  const mx::array& k = primals[1];
  std::optional<mx::array> bias;
  if (has_bias_)
    bias = primals[2];
  const mx::array& g = cotangents[0];
  const bool both =
      std::find(argnums.begin(), argnums.end(), 0) != argnums.end() &&
      std::find(argnums.begin(), argnums.end(), 1) != argnums.end();
  std::optional<std::vector<mx::array>> fused;
  if (both &&
      RFFTConvGradients::shares_cotangent_transform(
          period_, g.shape(), u.shape(), k.shape())) {
    std::vector<mx::array> inputs{g, k, u};
    if (bias)
      inputs.push_back(*bias);
    fused = mx::array::make_arrays(
        {u.shape(), k.shape()},
        {mx::float32, mx::float32},
        std::make_shared<RFFTConvGradients>(
            stream(), period_, precision_, has_bias_, u.shape(), k.shape()),
        std::move(inputs));
  }
  std::vector<mx::array> grads;
  for (int arg : argnums) {
    if (fused && arg < 2) {
      grads.push_back((*fused)[arg]);
    } else if (arg == 0) {
      grads.push_back(correlate(
          ConvVariant::CorrelateInput,
          g,
          k,
          bias,
          period_,
          precision_,
          u.shape(),
          stream()));
    } else if (arg == 1) {
      grads.push_back(correlate(
          ConvVariant::CorrelateKernel,
          g,
          u,
          std::nullopt,
          period_,
          precision_,
          k.shape(),
          stream()));
    } else {
      grads.push_back(
          bias_gradient(g, u, precision_, primals[2].shape(), stream()));
    }
  }
  return grads;
}

bool RFFTConvGradients::shares_cotangent_transform(
    int64_t period,
    const mx::Shape& g_shape,
    const mx::Shape& u_shape,
    const mx::Shape& k_shape) {
  if (shape_product(batch_shape(u_shape)) !=
      shape_product(batch_shape(g_shape)))
    return false;
  const int64_t L = u_shape.back(), Lk = k_shape.back();
  return conv_geometry(ConvVariant::CorrelateInput, period, L, Lk, L)
             .fft_size ==
      conv_geometry(ConvVariant::CorrelateKernel, period, L, L, Lk).fft_size;
}

std::vector<mx::array> RFFTConvGradients::input_gradient_inputs(
    const std::vector<mx::array>& inputs,
    bool has_bias) {
  std::vector<mx::array> g_k_bias{inputs[0], inputs[1]};
  if (has_bias)
    g_k_bias.push_back(inputs[3]);
  return g_k_bias;
}

bool RFFTConvGradients::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const RFFTConvGradients*>(&other);
  return o && o->state() == state();
}

std::vector<mx::array> RFFTConvGradients::vjp(
    const std::vector<mx::array>&,
    const std::vector<mx::array>&,
    const std::vector<int>&,
    const std::vector<mx::array>&) {
  throw std::invalid_argument(
      "rfft_conv: reverse-mode derivatives of its derivatives (second order) are not "
      "implemented");
}

std::vector<mx::array> RFFTConvGradients::jvp(
    const std::vector<mx::array>&,
    const std::vector<mx::array>&,
    const std::vector<int>&) {
  throw std::invalid_argument(
      "rfft_conv: forward-mode derivatives of the gradient are not implemented");
}

// dy = conv(du, k) + conv(u, dk) + du * bias + u * dbias, rounded once: one
// Convolve node when a single convolution remains, else one ConvolveSum node.
std::vector<mx::array> RFFTConv::jvp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& tangents,
    const std::vector<int>& argnums) {
  if (variant_ != ConvVariant::Convolve) {
    throw std::invalid_argument(
        "rfft_conv: forward-mode derivatives of the gradient are not implemented");
  }
  const mx::array& u = primals[0];
  const mx::array& k = primals[1];
  std::optional<mx::array> bias;
  if (has_bias_)
    bias = primals[2];
  std::optional<mx::array> du, dk, dbias;
  for (size_t i = 0; i < argnums.size(); ++i) {
    if (argnums[i] == 0)
      du = tangents[i];
    else if (argnums[i] == 1)
      dk = tangents[i];
    else
      dbias = tangents[i];
  }
  std::vector<mx::array> convs, products;
  if (du)
    convs.insert(convs.end(), {*du, k});
  if (dk)
    convs.insert(convs.end(), {u, *dk});
  if (du && bias)
    products.insert(products.end(), {*du, *bias});
  if (dbias)
    products.insert(products.end(), {u, *dbias});
  if (convs.size() == 2 && products.size() <= 2) {
    // A single convolution with at most its own bias product: plain Convolve.
    const bool own_bias = products.empty() || products[0].id() == convs[0].id();
    if (own_bias) {
      std::optional<mx::array> b;
      if (!products.empty())
        b = products[1];
      return {mx::broadcast_to(
          fft::rfft_conv_from_parts(
              convs[0], convs[1], period_, b, precision_, stream()),
          out_shape_,
          stream())};
    }
  }
  if (convs.empty()) {
    // u * dbias alone: the exact product rounded once.
    return {mx::broadcast_to(
        mx::multiply(u, *dbias, stream()), out_shape_, stream())};
  }
  const int conv_terms = static_cast<int>(convs.size() / 2);
  const int bias_terms = static_cast<int>(products.size() / 2);
  std::vector<mx::array> inputs = convs;
  inputs.insert(inputs.end(), products.begin(), products.end());
  return {mx::array(
      out_shape_,
      mx::float32,
      std::make_shared<RFFTConv>(
          stream(),
          ConvVariant::ConvolveSum,
          period_,
          precision_,
          false,
          out_shape_,
          conv_terms,
          bias_terms),
      std::move(inputs))};
}

namespace {

// All inputs share one batch rank (rank + 1, rank >= min_rank) once the
// vmapped axis is in front (vmap_inputs.h). Returns the vmap size.
int align_vmapped(
    std::vector<mx::array>& inputs,
    const std::vector<int>& axes,
    int min_rank,
    int& rank,
    mx::Stream s) {
  rank = min_rank;
  int size = 1;
  for (size_t i = 0; i < inputs.size(); ++i) {
    rank = std::max(
        rank, static_cast<int>(inputs[i].ndim()) - (axes[i] >= 0 ? 1 : 0) - 1);
    if (axes[i] >= 0)
      size = inputs[i].shape(axes[i]);
  }
  inputs = vmapped_axis_in_front(inputs, axes, rank + 1, s);
  return size;
}

// A gradient's target under vmap: the vmapped axis in front, then unit axes
// for the batch dims the unbatched target was summed over, then its own shape.
mx::Shape batched_target(const mx::Shape& target, int size, int rank) {
  mx::Shape shape{size};
  shape.insert(shape.end(), rank - (static_cast<int>(target.size()) - 1), 1);
  shape.insert(shape.end(), target.begin(), target.end());
  return shape;
}

mx::array unbatched_target(
    const mx::array& out,
    const mx::Shape& target,
    int size,
    mx::Stream s) {
  mx::Shape shape{size};
  shape.insert(shape.end(), target.begin(), target.end());
  return mx::reshape(out, shape, s);
}

} // namespace

std::pair<std::vector<mx::array>, std::vector<int>> RFFTConv::vmap(
    const std::vector<mx::array>& inputs,
    const std::vector<int>& axes) {
  std::vector<mx::array> moved = inputs;
  int rank = 0;
  const int size = align_vmapped(
      moved, axes, static_cast<int>(out_shape_.size()) - 1, rank, stream());
  std::optional<mx::array> bias;
  if (has_bias_)
    bias = moved[2];
  if (variant_ == ConvVariant::Convolve) {
    return {
        {fft::rfft_conv_from_parts(
            moved[0], moved[1], period_, bias, precision_, stream())},
        {0}};
  }
  if (variant_ == ConvVariant::ConvolveSum) {
    mx::Shape shape{size};
    shape.insert(shape.end(), out_shape_.begin(), out_shape_.end());
    mx::Shape batched = batched_target(out_shape_, size, rank);
    mx::array out(
        batched,
        mx::float32,
        std::make_shared<RFFTConv>(
            stream(),
            variant_,
            period_,
            precision_,
            false,
            batched,
            conv_terms_,
            bias_terms_),
        std::move(moved));
    return {{mx::reshape(out, shape, stream())}, {0}};
  }
  mx::Shape target = batched_target(out_shape_, size, rank);
  mx::array out = correlate(
      variant_,
      moved[0],
      moved[1],
      bias,
      period_,
      precision_,
      target,
      stream());
  return {{unbatched_target(out, out_shape_, size, stream())}, {0}};
}

// The two correlations, each vmapped as its own RFFTConv node.
std::pair<std::vector<mx::array>, std::vector<int>> RFFTConvGradients::vmap(
    const std::vector<mx::array>& inputs,
    const std::vector<int>& axes) {
  const auto input_grad_inputs = input_gradient_inputs(inputs, has_bias_);
  std::vector<int> input_grad_axes{axes[0], axes[1]};
  if (has_bias_)
    input_grad_axes.push_back(axes[3]);
  RFFTConv input_grad(
      stream(),
      ConvVariant::CorrelateInput,
      period_,
      precision_,
      has_bias_,
      u_shape_);
  RFFTConv kernel_grad(
      stream(),
      ConvVariant::CorrelateKernel,
      period_,
      precision_,
      false,
      k_shape_);
  mx::array gu = input_grad.vmap(input_grad_inputs, input_grad_axes).first[0];
  mx::array gk =
      kernel_grad.vmap({inputs[0], inputs[2]}, {axes[0], axes[2]}).first[0];
  return {{gu, gk}, {0, 0}};
}

std::pair<std::vector<mx::array>, std::vector<int>> BiasGradient::vmap(
    const std::vector<mx::array>& inputs,
    const std::vector<int>& axes) {
  std::vector<mx::array> moved = inputs;
  int rank = 0;
  const int size = align_vmapped(
      moved, axes, static_cast<int>(out_shape_.size()) - 1, rank, stream());
  mx::Shape target = batched_target(out_shape_, size, rank);
  mx::array out =
      bias_gradient(moved[0], moved[1], precision_, target, stream());
  return {{unbatched_target(out, out_shape_, size, stream())}, {0}};
}

} // namespace mlx_precise
