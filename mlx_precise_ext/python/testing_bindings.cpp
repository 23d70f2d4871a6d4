// mlx_precise._ext.testing: the double-word arithmetic of kernels/dd.h mapped
// elementwise over 1-D numpy arrays, so that tests can check every algorithm
// against exact references on millions of inputs. Test hooks, not MLX ops.
// Compiled with the same strict floating-point flags as the kernels.
#include <array>
#include <cstddef>
#include <stdexcept>
#include <string>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include "backend/cpu/conv_job.h"
#include "kernels/dd.h"
#include "kernels/pair_math.h"
#include "pair_primitives.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace mlx_precise {
namespace {

template <class T>
using InArray =
    nb::ndarray<const T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutArray = nb::ndarray<nb::numpy, float, nb::ndim<1>>;

OutArray new_float_array(size_t size, float** data) {
  float* buffer = new float[size];
  nb::capsule owner(
      buffer, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  *data = buffer;
  return OutArray(buffer, {size}, owner);
}

// Calls kernel(in, out) for every index i: in[j] is element i of input j, and
// the kernel writes element i of output j to out[j].
template <class T, size_t NumIn, size_t NumOut, class Kernel>
std::array<OutArray, NumOut> map_elementwise(
    const std::array<InArray<T>, NumIn>& inputs,
    Kernel kernel) {
  const size_t size = inputs[0].shape(0);
  for (const auto& input : inputs) {
    if (input.shape(0) != size) {
      throw std::invalid_argument("all inputs must have the same length");
    }
  }
  std::array<OutArray, NumOut> outputs;
  std::array<float*, NumOut> out_data;
  for (size_t j = 0; j < NumOut; ++j) {
    outputs[j] = new_float_array(size, &out_data[j]);
  }
  std::array<T, NumIn> in;
  std::array<float, NumOut> out;
  for (size_t i = 0; i < size; ++i) {
    for (size_t j = 0; j < NumIn; ++j)
      in[j] = inputs[j].data()[i];
    kernel(in, out);
    for (size_t j = 0; j < NumOut; ++j)
      out_data[j][i] = out[j];
  }
  return outputs;
}

template <size_t NumOut>
nb::tuple as_tuple(const std::array<OutArray, NumOut>& arrays) {
  nb::list items;
  for (const auto& array : arrays)
    items.append(nb::cast(array));
  return nb::tuple(items);
}

using F = InArray<float>;

void write_pair(ff x, float* out) {
  out[0] = x.hi;
  out[1] = x.lo;
}

} // namespace
} // namespace mlx_precise

void init_testing(nb::module_& parent) {
  using namespace mlx_precise;
  nb::module_ m = parent.def_submodule(
      "testing",
      "Elementwise hooks into kernels/dd.h over 1-D float32 numpy arrays (tests only).");

  // float32 only: an implicit cast of float64 test data would hide what is
  // tested.
  m.def(
      "two_sum",
      [](F a, F b) {
        return as_tuple(
            map_elementwise<float, 2, 2>({a, b}, [](const auto& in, auto& out) {
              write_pair(two_sum(in[0], in[1]), out.data());
            }));
      },
      "a"_a.noconvert(),
      "b"_a.noconvert(),
      "TwoSum: (hi, lo) with hi + lo == a + b exactly.");

  m.def(
      "fast_two_sum",
      [](F a, F b) {
        return as_tuple(
            map_elementwise<float, 2, 2>({a, b}, [](const auto& in, auto& out) {
              write_pair(fast_two_sum(in[0], in[1]), out.data());
            }));
      },
      "a"_a.noconvert(),
      "b"_a.noconvert(),
      "FastTwoSum (needs |a| >= |b|).");

  m.def(
      "two_prod",
      [](F a, F b) {
        return as_tuple(
            map_elementwise<float, 2, 2>({a, b}, [](const auto& in, auto& out) {
              write_pair(two_prod(in[0], in[1]), out.data());
            }));
      },
      "a"_a.noconvert(),
      "b"_a.noconvert(),
      "TwoProd: (hi, lo) with hi + lo == a * b exactly.");

  m.def(
      "dd_add",
      [](F xh, F xl, F yh, F yl) {
        return as_tuple(
            map_elementwise<float, 4, 2>(
                {xh, xl, yh, yl}, [](const auto& in, auto& out) {
                  write_pair(
                      dd_add(ff{in[0], in[1]}, ff{in[2], in[3]}), out.data());
                }));
      },
      "xh"_a.noconvert(),
      "xl"_a.noconvert(),
      "yh"_a.noconvert(),
      "yl"_a.noconvert(),
      "AccurateDWPlusDW: x + y.");

  m.def(
      "dd_sub",
      [](F xh, F xl, F yh, F yl) {
        return as_tuple(
            map_elementwise<float, 4, 2>(
                {xh, xl, yh, yl}, [](const auto& in, auto& out) {
                  write_pair(
                      dd_sub(ff{in[0], in[1]}, ff{in[2], in[3]}), out.data());
                }));
      },
      "xh"_a.noconvert(),
      "xl"_a.noconvert(),
      "yh"_a.noconvert(),
      "yl"_a.noconvert(),
      "x - y (AccurateDWPlusDW of x and -y).");

  m.def(
      "dd_function",
      [](const std::string& name, F xh, F xl) {
        // The derivatives: the binary *Grad ops with the cotangent 1.
        const PairOp op = name == "exp" ? PairOp::Exp
            : name == "sin"             ? PairOp::Sin
            : name == "tanh"            ? PairOp::Tanh
            : name == "gelu"            ? PairOp::Gelu
            : name == "sin_grad"        ? PairOp::SinGrad
            : name == "tanh_grad"       ? PairOp::TanhGrad
            : name == "gelu_grad"
            ? PairOp::GeluGrad
            : throw std::invalid_argument(
                  "dd_function: pass \"exp\", \"sin\", \"tanh\", \"gelu\" or "
                  "the derivative \"sin_grad\", \"tanh_grad\", \"gelu_grad\"");
        return as_tuple(
            map_elementwise<float, 2, 2>(
                {xh, xl}, [op](const auto& in, auto& out) {
                  const ff x{in[0], in[1]};
                  write_pair(
                      pair_op_arity(op) == 1
                          ? pair_unary_dd(op, x)
                          : pair_binary_dd(op, x, ff{1.0f, 0.0f}),
                      out.data());
                }));
      },
      "name"_a,
      "xh"_a.noconvert(),
      "xl"_a.noconvert(),
      "exp / sin / tanh / gelu of the pair x, or the derivative of sin / tanh / "
      "gelu, in double-word arithmetic (kernels/pair_math.h).");

  m.def(
      "dd_mul",
      [](F xh, F xl, F yh, F yl) {
        return as_tuple(
            map_elementwise<float, 4, 2>(
                {xh, xl, yh, yl}, [](const auto& in, auto& out) {
                  write_pair(
                      dd_mul(ff{in[0], in[1]}, ff{in[2], in[3]}), out.data());
                }));
      },
      "xh"_a.noconvert(),
      "xl"_a.noconvert(),
      "yh"_a.noconvert(),
      "yl"_a.noconvert(),
      "DWTimesDW3: x * y.");

  m.def(
      "dd_mul_f",
      [](F xh, F xl, F y) {
        return as_tuple(
            map_elementwise<float, 3, 2>(
                {xh, xl, y}, [](const auto& in, auto& out) {
                  write_pair(dd_mul_f(ff{in[0], in[1]}, in[2]), out.data());
                }));
      },
      "xh"_a.noconvert(),
      "xl"_a.noconvert(),
      "y"_a.noconvert(),
      "DWTimesFP3: x * y, y a float.");

  m.def(
      "dd_round",
      [](F hi, F lo) {
        return map_elementwise<float, 2, 1>(
            {hi, lo}, [](const auto& in, auto& out) {
              out[0] = dd_round(ff{in[0], in[1]});
            })[0];
      },
      "hi"_a.noconvert(),
      "lo"_a.noconvert(),
      "The float32 nearest to hi + lo.");

  m.def(
      "dd_from_double",
      [](InArray<double> d) {
        return as_tuple(
            map_elementwise<double, 1, 2>({d}, [](const auto& in, auto& out) {
              write_pair(dd_from_double(in[0]), out.data());
            }));
      },
      "d"_a.noconvert(),
      "A float64 array as normalised float32 pairs (hi, lo).");

  m.def(
      "cdd_mul",
      [](F a_re_h,
         F a_re_l,
         F a_im_h,
         F a_im_l,
         F b_re_h,
         F b_re_l,
         F b_im_h,
         F b_im_l) {
        return as_tuple(
            map_elementwise<float, 8, 4>(
                {a_re_h,
                 a_re_l,
                 a_im_h,
                 a_im_l,
                 b_re_h,
                 b_re_l,
                 b_im_h,
                 b_im_l},
                [](const auto& in, auto& out) {
                  cff a{ff{in[0], in[1]}, ff{in[2], in[3]}};
                  cff b{ff{in[4], in[5]}, ff{in[6], in[7]}};
                  cff c = cdd_mul(a, b);
                  write_pair(c.re, out.data());
                  write_pair(c.im, out.data() + 2);
                }));
      },
      "a_re_h"_a.noconvert(),
      "a_re_l"_a.noconvert(),
      "a_im_h"_a.noconvert(),
      "a_im_l"_a.noconvert(),
      "b_re_h"_a.noconvert(),
      "b_re_l"_a.noconvert(),
      "b_im_h"_a.noconvert(),
      "b_im_l"_a.noconvert(),
      "Complex double-word product: (re_h, re_l, im_h, im_l).");

  m.def(
      "set_rfft_conv_certification",
      [](bool enabled) { cpu::set_rfft_conv_certification(enabled); },
      "enabled"_a,
      "Benchmarks only: with False, the CPU's extended/dd rfft_conv rounds the "
      "float64 engine's values without certifying them (not correctly rounded), "
      "so that the cost of certification can be timed side by side. "
      "Returns nothing; pass True to restore the default.");
}
