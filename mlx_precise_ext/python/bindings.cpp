// nanobind module mlx_precise._ext. Built in MLX's nanobind domain so that
// mlx.core.array, Stream and Device are the very types mlx.core registered.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>

#include "device_memory.h"
#include "ops.h"

namespace nb = nanobind;
using namespace nb::literals;

void init_testing(nb::module_& m); // testing_bindings.cpp
void init_strict(nb::module_& m); // strict_bindings.cpp
void init_pair(nb::module_& m); // pair_bindings.cpp

NB_MODULE(_ext, m) {
  m.doc() = "mlx-precise C++ primitives";
  m.attr("mlx_build_version") = MLX_PRECISE_MLX_VERSION;

  m.def(
      "rfft_conv",
      &mlx_precise::fft::rfft_conv,
      "u"_a,
      "k"_a,
      nb::kw_only(),
      "n"_a = nb::none(),
      "bias"_a = nb::none(),
      "precision"_a = "float32",
      "stream"_a = nb::none(),
      "FFT convolution; see mlx_precise.rfft_conv for the documentation.");

  m.def(
      "device_peak_memory",
      &mlx_precise::device_peak_memory,
      "Peak bytes of GPU memory that mlx-precise allocated itself since the last "
      "reset: the CUDA backend's outputs and workspaces, which mx.get_peak_memory "
      "does not count (0 where all GPU memory comes from MLX's allocator: Metal, "
      "CPU builds). Add it to mx.get_peak_memory() for an upper bound of the peak.");
  m.def(
      "reset_device_peak_memory",
      &mlx_precise::reset_device_peak_memory,
      "Restarts device_peak_memory from the bytes held now.");

  init_testing(m);
  init_strict(m);
  init_pair(m);
}
