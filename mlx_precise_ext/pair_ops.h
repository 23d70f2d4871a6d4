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
#include <vector>

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

// a @ b + c for pairs a (..., M, K) and b (..., K, N) and a float32 c.
Pair pair_addmm(
    const std::optional<mx::array>& c,
    const Pair& a,
    const Pair& b,
    mx::StreamOrDevice s = {});

// x @ weight.T + bias (torch F.linear) for a pair x and a pair weight.
Pair pair_linear(
    const Pair& x,
    const Pair& weight,
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

// x broadcast to `shape` (numpy rules); its gradient is summed back in
// double. The pair ops broadcast their operands with it.
Pair pair_broadcast_to(
    const Pair& x,
    const mx::Shape& shape,
    mx::StreamOrDevice s = {});

// x summed, in double, to `shape`, which must broadcast to x's shape (the
// reverse of pair_broadcast_to): the reduction of a pair gradient.
Pair pair_sum_to(
    const Pair& x,
    const mx::Shape& shape,
    mx::StreamOrDevice s = {});

// n uses of one pair: x broadcast along a new leading axis of n and sliced,
// so that the n cotangents are summed in double (MLX's autograd sums the
// cotangents of an array used twice in float32, part by part).
std::vector<Pair> pair_fork(const Pair& x, int n, mx::StreamOrDevice s = {});

// Rows table[ids] of a pair table (V, D) for integer ids of any shape: the
// embedding lookup, whose gradient sums the rows of each id in double.
Pair pair_take_rows(
    const Pair& table,
    const mx::array& ids,
    mx::StreamOrDevice s = {});

// Mean cross-entropy of pair logits (N, V) at integer targets (N,) over the
// rows weighted by float32 weights (N,) (a 0/1 mask): a scalar pair.
Pair pair_cross_entropy(
    const Pair& logits,
    const mx::array& targets,
    const mx::array& weights,
    mx::StreamOrDevice s = {});

} // namespace mlx_precise
