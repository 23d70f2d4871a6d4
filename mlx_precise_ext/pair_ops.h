// Pair ops: values carried from one op to the next as two float32 arrays
// (hi, lo), hi = RN(hi + lo), about 48 significant bits, so that a whole chain
// of ops (M2-BERT's forward, precision="exact") rounds to float32 once: its
// result is the hi of the last pair. Each op computes in double (CPU, CUDA)
// or double-word arithmetic (Metal) and returns a pair, never rounding to
// float32 in between. A float32 array enters a chain as the pair (x, 0).
#pragma once

#include <optional>
#include <string>
#include <utility>

#include <mlx/array.h>
#include <mlx/utils.h>

#include "pair_primitives.h"

namespace mlx_precise {

namespace mx = mlx::core;

using Pair = std::pair<mx::array, mx::array>; // (hi, lo)

// "add", "multiply" (two pairs, broadcast against each other) and "gelu",
// "sin", "exp", "tanh" (one pair).
PairOp parse_pair_op(const std::string& name);

Pair pair_unary(PairOp op, const Pair& x, mx::StreamOrDevice s = {});
Pair pair_binary(
    PairOp op,
    const Pair& x,
    const Pair& y,
    mx::StreamOrDevice s = {});

// a @ b + c for a pair a (..., M, K), float32 b (..., K, N) and c.
Pair pair_addmm(
    const std::optional<mx::array>& c,
    const Pair& a,
    const mx::array& b,
    mx::StreamOrDevice s = {});

// x @ weight.T + bias (torch F.linear) for a pair x.
Pair pair_linear(
    const Pair& x,
    const mx::array& weight,
    const std::optional<mx::array>& bias = {},
    mx::StreamOrDevice s = {});

Pair pair_layer_norm(
    const Pair& x,
    const std::optional<mx::array>& weight = {},
    const std::optional<mx::array>& bias = {},
    double eps = 1e-5,
    mx::StreamOrDevice s = {});

// rfft_conv (ops.h) of a pair u and a pair k, plus u * bias.
Pair pair_rfft_conv(
    const Pair& u,
    const Pair& k,
    std::optional<int64_t> n = {},
    const std::optional<mx::array>& bias = {},
    mx::StreamOrDevice s = {});

} // namespace mlx_precise
