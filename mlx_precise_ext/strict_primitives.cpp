#include "strict_primitives.h"

#include <numeric>

#include <mlx/ops.h>

#include "vmap_inputs.h"

#include "strict_ops.h"

namespace mlx_precise {

namespace {

// sum over the batch dims that `target_batch` broadcasts of x[b] @ y[b],
// times alpha, as one StrictAddmm: the summed batch dims are folded into the
// contraction axis, so the whole gradient is rounded once.
// x: (B..., P, S), y: (B..., S, Q), both with the full batch shape B.
mx::array contract_over_batch(
    const mx::array& x,
    const mx::array& y,
    const mx::Shape& target_batch,
    float alpha,
    Precision p,
    mx::Stream s) {
  const int rank = static_cast<int>(x.ndim()) - 2;
  mx::Shape padded(rank - static_cast<int>(target_batch.size()), 1);
  padded.insert(padded.end(), target_batch.begin(), target_batch.end());
  std::vector<int> kept, summed;
  mx::Shape kept_shape;
  int summed_size = 1;
  for (int d = 0; d < rank; ++d) {
    if (padded[d] == 1 && x.shape(d) != 1) {
      summed.push_back(d);
      summed_size *= x.shape(d);
    } else {
      kept.push_back(d);
      kept_shape.push_back(x.shape(d));
    }
  }
  const int P = x.shape(-2), S = x.shape(-1), Q = y.shape(-1);
  std::vector<int> x_order = kept, y_order = kept;
  x_order.push_back(rank);
  x_order.insert(x_order.end(), summed.begin(), summed.end());
  x_order.push_back(rank + 1);
  y_order.insert(y_order.end(), summed.begin(), summed.end());
  y_order.push_back(rank);
  y_order.push_back(rank + 1);
  mx::Shape x_shape = kept_shape, y_shape = kept_shape;
  x_shape.insert(x_shape.end(), {P, summed_size * S});
  y_shape.insert(y_shape.end(), {summed_size * S, Q});
  mx::array xr = mx::reshape(mx::transpose(x, x_order, s), x_shape, s);
  mx::array yr = mx::reshape(mx::transpose(y, y_order, s), y_shape, s);
  mx::array r =
      strict_addmm_from_parts(xr, yr, std::nullopt, alpha, 0.0f, p, s);
  mx::Shape target = target_batch;
  target.insert(target.end(), {P, Q});
  return mx::reshape(r, target, s);
}

mx::Shape with_batch(const mx::Shape& batch, const mx::array& x) {
  mx::Shape s = batch;
  s.insert(s.end(), x.shape().end() - 2, x.shape().end());
  return s;
}

// beta * (g summed over the dims c was broadcast along), rounded once: the
// sum is a product with a column of ones.
mx::array reduce_to(
    const mx::array& g,
    const mx::Shape& target,
    float beta,
    Precision p,
    mx::Stream s) {
  const int rank = static_cast<int>(g.ndim());
  mx::Shape padded(rank - static_cast<int>(target.size()), 1);
  padded.insert(padded.end(), target.begin(), target.end());
  std::vector<int> order;
  int kept_size = 1, summed_size = 1;
  for (int d = 0; d < rank; ++d) {
    if (!(padded[d] == 1 && g.shape(d) != 1)) {
      order.push_back(d);
      kept_size *= g.shape(d);
    }
  }
  for (int d = 0; d < rank; ++d) {
    if (padded[d] == 1 && g.shape(d) != 1) {
      order.push_back(d);
      summed_size *= g.shape(d);
    }
  }
  mx::array rows =
      mx::reshape(mx::transpose(g, order, s), {kept_size, summed_size}, s);
  mx::array ones_column = mx::ones({summed_size, 1}, mx::float32, s);
  return mx::reshape(
      strict_addmm_from_parts(
          rows, ones_column, std::nullopt, beta, 0.0f, p, s),
      target,
      s);
}

} // namespace

bool StrictAddmm::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const StrictAddmm*>(&other);
  return o && o->state() == state();
}

// d a = alpha g b^T, d b = alpha a^T g, d c = beta g, each summed over the
// dims its input was broadcast along, each one StrictAddmm (rounded once).
std::vector<mx::array> StrictAddmm::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>&) {
  const mx::array& a = primals[0];
  const mx::array& b = primals[1];
  const mx::array& g = cotangents[0];
  const mx::Shape batch(out_shape_.begin(), out_shape_.end() - 2);
  std::vector<mx::array> grads;
  for (int arg : argnums) {
    if (arg == 0) {
      mx::array bt = mx::swapaxes(
          mx::broadcast_to(b, with_batch(batch, b), stream()),
          -1,
          -2,
          stream());
      grads.push_back(contract_over_batch(
          g,
          bt,
          mx::Shape(a.shape().begin(), a.shape().end() - 2),
          alpha_,
          precision_,
          stream()));
    } else if (arg == 1) {
      mx::array at = mx::swapaxes(
          mx::broadcast_to(a, with_batch(batch, a), stream()),
          -1,
          -2,
          stream());
      grads.push_back(contract_over_batch(
          at,
          g,
          mx::Shape(b.shape().begin(), b.shape().end() - 2),
          alpha_,
          precision_,
          stream()));
    } else {
      grads.push_back(
          reduce_to(g, primals[2].shape(), beta_, precision_, stream()));
    }
  }
  return grads;
}

// d out = alpha (da b + a db) + beta dc. The two products are one product of
// [da, a] (concatenated along K) with [b; db], so the whole tangent, dc
// included, is a single StrictAddmm rounded once.
std::vector<mx::array> StrictAddmm::jvp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& tangents,
    const std::vector<int>& argnums) {
  const mx::Shape batch(out_shape_.begin(), out_shape_.end() - 2);
  auto full = [&](const mx::array& x) {
    return mx::broadcast_to(x, with_batch(batch, x), stream());
  };
  std::vector<mx::array> lhs, rhs;
  std::optional<mx::array> dc;
  for (size_t i = 0; i < argnums.size(); ++i) {
    if (argnums[i] == 0) {
      lhs.push_back(full(tangents[i]));
      rhs.push_back(full(primals[1]));
    } else if (argnums[i] == 1) {
      lhs.push_back(full(primals[0]));
      rhs.push_back(full(tangents[i]));
    } else {
      dc = tangents[i];
    }
  }
  if (lhs.empty()) {
    // beta * dc alone: the exact product of two floats rounded once.
    return {mx::broadcast_to(
        mx::multiply(mx::array(beta_), *dc, stream()), out_shape_, stream())};
  }
  mx::array x = lhs.size() == 1 ? lhs[0] : mx::concatenate(lhs, -1, stream());
  mx::array y = rhs.size() == 1 ? rhs[0] : mx::concatenate(rhs, -2, stream());
  return {
      strict_addmm_from_parts(x, y, dc, alpha_, beta_, precision_, stream())};
}

// The vmapped axis goes in front, followed by unit axes so every input has
// the output's rank + 1; the batch dims then broadcast as usual.
std::pair<std::vector<mx::array>, std::vector<int>> StrictAddmm::vmap(
    const std::vector<mx::array>& inputs,
    const std::vector<int>& axes) {
  const int out_rank = static_cast<int>(out_shape_.size());
  std::vector<mx::array> moved =
      vmapped_axis_in_front(inputs, axes, out_rank, stream());
  std::optional<mx::array> c;
  if (has_c_)
    c = moved[2];
  return {
      {strict_addmm_from_parts(
          moved[0], moved[1], c, alpha_, beta_, precision_, stream())},
      {0}};
}

bool StrictLayerNorm::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const StrictLayerNorm*>(&other);
  return o && o->state() == state();
}

std::vector<mx::array> StrictLayerNorm::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>&) {
  const int bias_index = has_weight_ ? 2 : 1;
  bool want_x = false, want_weight = false, want_bias = false;
  for (int arg : argnums) {
    if (arg == 0)
      want_x = true;
    else if (has_weight_ && arg == 1)
      want_weight = true;
    else if (arg == bias_index)
      want_bias = true;
  }
  std::vector<mx::array> inputs{primals[0]};
  if (has_weight_)
    inputs.push_back(primals[1]);
  inputs.push_back(cotangents[0]);
  auto node = std::make_shared<StrictLayerNormVJP>(
      stream(), precision_, eps_, has_weight_, want_x, want_weight, want_bias);
  std::vector<mx::array> outs = mx::array::make_arrays(
      node->output_shapes(inputs),
      std::vector<mx::Dtype>(want_x + want_weight + want_bias, mx::float32),
      node,
      inputs);
  std::vector<mx::array> grads;
  for (int arg : argnums) {
    int slot = 0;
    if (arg != 0)
      slot += want_x;
    if (arg == bias_index)
      slot += want_weight;
    grads.push_back(outs[slot]);
  }
  return grads;
}

// The Jacobian of the normalisation, J = inv_std (I - 1 1^T / D - n n^T / D),
// is symmetric: J dx is the vjp kernel applied to dx without weight. Then
// d y = (J dx) w + n dw + db; each term is computed in this precision and
// rounded once, the terms add in float32.
std::vector<mx::array> StrictLayerNorm::jvp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& tangents,
    const std::vector<int>& argnums) {
  const mx::array& x = primals[0];
  const int bias_index = has_weight_ ? 2 : 1;
  std::optional<mx::array> result;
  auto accumulate = [&](const mx::array& term) {
    result = result ? mx::add(*result, term, stream()) : term;
  };
  for (size_t i = 0; i < argnums.size(); ++i) {
    const mx::array& t = tangents[i];
    if (argnums[i] == 0) {
      auto node = std::make_shared<StrictLayerNormVJP>(
          stream(), precision_, eps_, false, true, false, false);
      mx::array jdx =
          mx::array::make_arrays({x.shape()}, {mx::float32}, node, {x, t})[0];
      accumulate(has_weight_ ? mx::multiply(jdx, primals[1], stream()) : jdx);
    } else if (has_weight_ && argnums[i] == 1) {
      mx::array n = strict_layer_norm_from_parts(
          x, std::nullopt, std::nullopt, eps_, precision_, stream());
      accumulate(mx::multiply(n, t, stream()));
    } else if (argnums[i] == bias_index) {
      accumulate(mx::broadcast_to(t, x.shape(), stream()));
    }
  }
  return {*result};
}

std::pair<std::vector<mx::array>, std::vector<int>> StrictLayerNorm::vmap(
    const std::vector<mx::array>& inputs,
    const std::vector<int>& axes) {
  for (size_t i = 1; i < axes.size(); ++i) {
    if (axes[i] >= 0) {
      throw std::invalid_argument(
          "layer_norm: vmap over weight or bias is not supported (only over x); "
          "call layer_norm once per weight instead");
    }
  }
  std::optional<mx::array> weight, bias;
  if (has_weight_)
    weight = inputs[1];
  if (has_bias_)
    bias = inputs[has_weight_ ? 2 : 1];
  return {
      {strict_layer_norm_from_parts(
          mx::moveaxis(inputs[0], axes[0], 0, stream()),
          weight,
          bias,
          eps_,
          precision_,
          stream())},
      {0}};
}

bool StrictLayerNormVJP::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const StrictLayerNormVJP*>(&other);
  return o && o->state() == state();
}

std::vector<mx::Shape> StrictLayerNormVJP::output_shapes(
    const std::vector<mx::array>& inputs) {
  std::vector<mx::Shape> shapes;
  const mx::Shape param{inputs[0].shape(-1)};
  if (want_x_)
    shapes.push_back(inputs[0].shape());
  if (want_weight_)
    shapes.push_back(param);
  if (want_bias_)
    shapes.push_back(param);
  return shapes;
}

} // namespace mlx_precise
