// Bindings of the strict addmm / linear / layer_norm (mlx_precise._ext).
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>

#include "strict_ops.h"

namespace nb = nanobind;
using namespace nb::literals;

void init_strict(nb::module_& m) {
  m.def(
      "addmm",
      &mlx_precise::addmm,
      "c"_a,
      "a"_a,
      "b"_a,
      nb::kw_only(),
      "alpha"_a = 1.0f,
      "beta"_a = 1.0f,
      "precision"_a = "float32",
      "stream"_a = nb::none(),
      "beta * c + alpha * (a @ b); see mlx_precise.addmm for the documentation.");
  m.def(
      "linear",
      &mlx_precise::linear,
      "x"_a,
      "weight"_a,
      "bias"_a = nb::none(),
      nb::kw_only(),
      "precision"_a = "float32",
      "stream"_a = nb::none(),
      "x @ weight.T + bias; see mlx_precise.linear for the documentation.");
  m.def(
      "layer_norm",
      &mlx_precise::layer_norm,
      "x"_a,
      "weight"_a = nb::none(),
      "bias"_a = nb::none(),
      "eps"_a = 1e-5,
      nb::kw_only(),
      "precision"_a = "float32",
      "stream"_a = nb::none(),
      "layer normalisation over the last axis; see mlx_precise.layer_norm.");
}
