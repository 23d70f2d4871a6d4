// Bindings of the pair ops (mlx_precise._ext); pairs are (hi, lo) tuples.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include "pair_ops.h"

namespace nb = nanobind;
using namespace nb::literals;

void init_pair(nb::module_& m) {
  using namespace mlx_precise;
  m.def(
      "pair_unary",
      [](const std::string& op, const Pair& x, mx::StreamOrDevice s) {
        return pair_unary(parse_pair_op(op), x, s);
      },
      "op"_a,
      "x"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      "gelu / sin / exp / tanh of a pair; see mlx_precise.pair.");
  m.def(
      "pair_binary",
      [](const std::string& op,
         const Pair& x,
         const Pair& y,
         mx::StreamOrDevice s) {
        return pair_binary(parse_pair_op(op), x, y, s);
      },
      "op"_a,
      "x"_a,
      "y"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      "add / multiply of two pairs; see mlx_precise.pair.");
  m.def(
      "pair_addmm",
      &pair_addmm,
      "c"_a.none(),
      "a"_a,
      "b"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      "a @ b + c for pairs a and b; see mlx_precise.pair.");
  m.def(
      "pair_linear",
      &pair_linear,
      "x"_a,
      "weight"_a,
      "bias"_a = nb::none(),
      nb::kw_only(),
      "stream"_a = nb::none(),
      "x @ weight.T + bias for a pair x and weight; see mlx_precise.pair.");
  m.def(
      "pair_layer_norm",
      &pair_layer_norm,
      "x"_a,
      "weight"_a = nb::none(),
      "bias"_a = nb::none(),
      "eps"_a = 1e-5,
      nb::kw_only(),
      "stream"_a = nb::none(),
      "layer_norm of a pair; see mlx_precise.pair.");
  m.def(
      "pair_rfft_conv",
      &pair_rfft_conv,
      "u"_a,
      "k"_a,
      nb::kw_only(),
      "n"_a = nb::none(),
      "bias"_a = nb::none(),
      "stream"_a = nb::none(),
      "rfft_conv of pairs; see mlx_precise.pair.");
  m.def(
      "pair_broadcast_to",
      [](const Pair& x, const std::vector<int>& shape, mx::StreamOrDevice s) {
        return pair_broadcast_to(x, mx::Shape(shape.begin(), shape.end()), s);
      },
      "x"_a,
      "shape"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      "A pair broadcast to shape; see mlx_precise.pair.");
  m.def(
      "pair_sum_to",
      [](const Pair& x, const std::vector<int>& shape, mx::StreamOrDevice s) {
        return pair_sum_to(x, mx::Shape(shape.begin(), shape.end()), s);
      },
      "x"_a,
      "shape"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      "A pair summed to shape, in double; see mlx_precise.pair.");
  m.def(
      "pair_fork",
      &pair_fork,
      "x"_a,
      "n"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      "n uses of a pair whose gradients add in double; see mlx_precise.pair.");
  m.def(
      "pair_take_rows",
      &pair_take_rows,
      "table"_a,
      "ids"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      "Rows of a pair table by integer ids; see mlx_precise.pair.");
  m.def(
      "pair_cross_entropy",
      &pair_cross_entropy,
      "logits"_a,
      "targets"_a,
      "weights"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      "Weighted mean cross-entropy of pair logits; see mlx_precise.pair.");
}
