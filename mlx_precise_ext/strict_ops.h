// Front-end operations of the strict addmm / linear / layer_norm, shaped like
// mlx/ops.h. precision="float32" is MLX's own path: mx::addmm (linear:
// mx::addmm(bias, x, weight.T), or mx::matmul without bias) and
// mx::fast::layer_norm. "extended" and "dd" return the float32 nearest to the
// exact result (the contract: docs/design.md and the README).
#pragma once

#include <optional>
#include <string>

#include <mlx/api.h>
#include <mlx/array.h>
#include <mlx/utils.h>

#include "precision.h"

namespace mlx_precise {

namespace mx = mlx::core;

// beta * c + alpha * (a @ b), mx::addmm's semantics: a (..., M, K),
// b (..., K, N), batch dims broadcast, c broadcasts to (..., M, N).
// alpha and beta are float32 (as in mx::addmm); the exact value uses them.
MLX_API mx::array addmm(
    const mx::array& c,
    const mx::array& a,
    const mx::array& b,
    float alpha = 1.0f,
    float beta = 1.0f,
    const std::string& precision = "float32",
    mx::StreamOrDevice s = {});

// torch.nn.functional.linear: x (..., K) @ weight (N, K).T [+ bias (N,)].
MLX_API mx::array linear(
    const mx::array& x,
    const mx::array& weight,
    const std::optional<mx::array>& bias = {},
    const std::string& precision = "float32",
    mx::StreamOrDevice s = {});

// torch.nn.functional.layer_norm over the last axis: biased variance, eps
// inside the square root, then weight (D,) and bias (D,). eps is a double
// (Python's float) and enters the exact value unrounded.
MLX_API mx::array layer_norm(
    const mx::array& x,
    const std::optional<mx::array>& weight = {},
    const std::optional<mx::array>& bias = {},
    double eps = 1e-5,
    const std::string& precision = "float32",
    mx::StreamOrDevice s = {});

// Builds the StrictAddmm node from validated inputs (the transforms use it):
// alpha * (a @ b) [+ beta * c], c broadcasting to the output.
// The argument checks of addmm, linear and layer_norm (dtypes, shapes, eps),
// shared with their pair forms (pair_ops.h); op names the caller in errors.
void check_addmm_arguments(
    const char* op,
    const mx::array& c,
    const mx::array& a,
    const mx::array& b);
void check_linear_arguments(
    const char* op,
    const mx::array& x,
    const mx::array& weight,
    const std::optional<mx::array>& bias);
void check_layer_norm_arguments(
    const char* op,
    const mx::array& x,
    const std::optional<mx::array>& weight,
    const std::optional<mx::array>& bias,
    double eps);

mx::array strict_addmm_from_parts(
    const mx::array& a,
    const mx::array& b,
    const std::optional<mx::array>& c,
    float alpha,
    float beta,
    Precision precision,
    mx::Stream stream);

mx::array strict_layer_norm_from_parts(
    const mx::array& x,
    const std::optional<mx::array>& weight,
    const std::optional<mx::array>& bias,
    double eps,
    Precision precision,
    mx::Stream stream);

} // namespace mlx_precise
