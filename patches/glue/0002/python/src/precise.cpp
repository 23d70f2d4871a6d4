// Copyright © 2025 Apple Inc.

// precision= for mx.addmm and mx.fast.layer_norm: overloads that take the
// precision keyword, tried after the existing functions, whose signatures stay
// as they are.

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>

#include "mlx/precise/strict_ops.h"
#include "python/src/utils.h"

namespace mx = mlx::core;
namespace nb = nanobind;
using namespace nb::literals;

void init_precise(nb::module_& m) {
  m.def(
      "addmm",
      [](const mx::array& c,
         const mx::array& a,
         const mx::array& b,
         float alpha,
         float beta,
         const std::string& precision,
         mx::StreamOrDevice s) {
        return mx::addmm(c, a, b, alpha, beta, precision, s);
      },
      nb::arg(),
      nb::arg(),
      nb::arg(),
      "alpha"_a = 1.0f,
      "beta"_a = 1.0f,
      nb::kw_only(),
      "precision"_a,
      "stream"_a = nb::none(),
      nb::sig(
          "def addmm(c: array, a: array, b: array, /, alpha: float = 1.0, beta: float = 1.0, *, precision: str, stream: StreamOrDevice = None) -> array"),
      R"pbdoc(
        ``beta * c + alpha * (a @ b)`` in a given precision.

        ``precision="float32"`` is :func:`addmm` itself. ``"extended"`` and
        ``"dd"`` return the float32 nearest to the exact value of
        ``beta * c + alpha * (a @ b)`` (``alpha`` and ``beta`` as float32):
        both multiply in float64 and certify each rounding, recomputing the
        rare uncertain entries exactly (on Metal, without float64, both sum
        double-word products in the order ``k = 0, 1, ...``).
      )pbdoc");

  auto fast = nb::borrow<nb::module_>(m.attr("fast"));
  fast.def(
      "layer_norm",
      [](const mx::array& x,
         const std::optional<mx::array>& weight,
         const std::optional<mx::array>& bias,
         double eps,
         const std::string& precision,
         mx::StreamOrDevice s) {
        return mx::layer_norm(x, weight, bias, eps, precision, s);
      },
      "x"_a,
      "weight"_a.none(),
      "bias"_a.none(),
      "eps"_a,
      nb::kw_only(),
      "precision"_a,
      "stream"_a = nb::none(),
      nb::sig(
          "def layer_norm(x: array, weight: Optional[array], bias: Optional[array], eps: float, *, precision: str, stream: Union[None, Stream, Device] = None) -> array"),
      R"pbdoc(
        Layer normalization over the last axis in a given precision.

        ``precision="float32"`` is :func:`layer_norm` itself. ``"extended"``
        and ``"dd"`` (float64; double-word float pairs on Metal) compute the biased
        variance, ``eps`` inside the square root and the affine map, and
        round once, to the float32 nearest the exact result.
      )pbdoc");
}
